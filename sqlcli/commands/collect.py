"""`sql collect`: play ALE games with a behaviour policy and write DQN-Replay checkpoints."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport
from sqlcli_core.acting.ale_vector import BACKENDS, choose_backend
from sqlcli_core.acting.collect import collect_all
from sqlcli_core.acting.collect_runs import RunConfig, check_memory, validate
from sqlcli_core.acting.policies import parse_policy
from sqlcli_core.acting.protocol import PROTOCOLS, get_protocol
from sqlcli_core.data import replay_format as rf
from sqlcli_core.games import catalog

BackendChoice = o.choices("BackendChoice", BACKENDS)
EXAMPLE = "Example: sql collect --games pong,breakout --transitions 100000 --out collected"

@handles_errors
def collect(
    games: str = typer.Option(..., "--games", rich_help_panel=o.DATA, help="Games to play: a set (atari40, heldout5, ...) or comma-separated names, e.g. pong,breakout."),
    runs: int = typer.Option(1, "--runs", rich_help_panel=o.DATA, min=1, help="Number of runs per game, numbered 1..RUNS like the bucket. Default 1."),
    transitions: int = typer.Option(1_000_000, "--transitions", rich_help_panel=o.DATA, help="Agent steps (logged transitions) per run; rows = transitions + 3 padding rows per episode. Default 1,000,000."),
    capacity: int = typer.Option(rf.BUCKET_CAPACITY, "--capacity", rich_help_panel=o.DATA, help="Ring-buffer rows per checkpoint file. Default 1,000,000 (the bucket's; 7 GB of frames in memory per run)."),
    mode: int | None = typer.Option(None, "--mode", rich_help_panel=o.DATA, help="ALE game mode (default: the game's default); checked against ALE's list."),
    difficulty: int | None = typer.Option(None, "--difficulty", rich_help_panel=o.DATA, help="ALE difficulty (default: the game's default); checked against ALE's list."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=o.RUN, help="Seed of the emulators (sticky actions) and the policy; each game/run derives its own. Default 0."),
    policy: str = typer.Option("random", "--policy", rich_help_panel=o.POLICY, help="Behaviour policy: random, sticky-random (epsilon-greedy around repeating the last action), pattern:A,B,... (epsilon-greedy around a fixed action cycle) or checkpoint:RUN_DIR (epsilon-greedy around a trained run's argmax Q). Default random."),
    epsilon: float = typer.Option(0.1, "--epsilon", rich_help_panel=o.POLICY, help="Probability of a uniform random action for sticky-random, pattern and checkpoint (unused by random). Default 0.1."),
    out: str = typer.Option("collected", "--out", rich_help_panel=o.OUTPUT, help="Output root; runs go to OUT/{Game}/{run}/replay_logs/. Default ./collected."),
    protocol: o.ProtocolChoice = typer.Option("dopamine", "--protocol", rich_help_panel=o.DATA, help=f"Emulator protocol: {', '.join(PROTOCOLS)} (dopamine = sticky actions 0.25, as DQN-Replay). Default dopamine."),
    jobs: int = typer.Option(1, "--jobs", rich_help_panel=o.RUN, min=1, help="Game/runs collected at once, each with its own ring buffer: in one process on the vector backend (one emulator thread each), in separate processes on the python backend. Default 1."),
    backend: BackendChoice = typer.Option("auto", "--backend", rich_help_panel=o.RUN, help="Emulators: vector (ale_py's C++ vector environment), python (AtariGame), or auto (vector unless --mode/--difficulty is given). The files are the same. Default auto."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Play real ALE games and log every transition in the DQN-Replay checkpoint format (resumable)."""
    resolved = catalog.resolve_games(games)
    proto = get_protocol(o.plain(protocol))
    spec = parse_policy(policy, epsilon)
    require_path(spec.run, "policy run", hint="pass a run directory written by `sql pretrain`")
    load_policy = None
    if spec.kind == "checkpoint":
        from sqlcli_core.runs.policy import load_policy  # imports JAX: only for a checkpoint policy
    configs = [
        RunConfig(game=g.name, run=r, transitions=transitions, capacity=capacity, protocol=proto, mode=mode,
                       difficulty=difficulty, seed=seed, policy=spec)
        for g in resolved for r in range(1, runs + 1)
    ]
    for c in configs:
        validate(c, load_policy)
    backend_name = choose_backend(o.plain(backend), mode, difficulty)
    check_memory(capacity, min(jobs, len(configs)))  # before the progress display starts

    t0 = time.perf_counter()
    report = ProgressReport("collect", unit="steps")
    tasks = {(c.game, c.run): report.add(f"{c.game}/{c.run}", total=c.transitions) for c in configs}
    seen: set[tuple[str, int]] = set()

    def progress(game: str, run: int, steps: int) -> None:
        first = (game, run) not in seen  # a resumed run reports where it starts first
        seen.add((game, run))
        report.update(tasks[(game, run)], completed=steps, restart=first)

    with report:
        results = collect_all(configs, out, jobs=jobs, progress=progress, backend=backend_name,
                              load_policy=load_policy)
    wall = time.perf_counter() - t0

    table = Table(title=f"collect -> {out}")
    for col in ("game", "run", "status", "steps", "episodes", "add_count", "ckpts", "steps/s"):
        table.add_column(col, justify="left" if col in ("game", "status") else "right", no_wrap=True)
    for r in results:
        rate = r["env_steps_per_s"]
        table.add_row(r["game"], str(r["run"]), r["status"], f"{r['transitions']:,}", str(r["num_episodes"]),
                      f"{r['add_count']:,}", str(r["checkpoints"]), f"{rate:,.0f}" if rate else "-")
    console.print(table)
    played = [r for r in results if r["status"] != "skipped"]
    steps = sum(r["transitions"] for r in played)
    overall = steps / wall if played and wall > 0 else None
    if overall:
        console.print(f"{steps:,} env steps in {wall:.1f} s: {overall:,.0f} env steps/s overall "
                      f"({proto.frame_skip * overall:,.0f} emulator frames/s)")
    emit_summary({
        "out": out, "runs": results, "env_steps": steps, "wall_s": wall, "env_steps_per_s": overall,
        "per_run_env_steps_per_s": [r["env_steps_per_s"] for r in results], "backend": backend_name, "jobs": jobs,
    }, as_json)

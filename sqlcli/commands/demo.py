"""`sql demo`: the whole chain on a small built-in default, offline, in minutes on a laptop CPU.

collect (real ALE play) -> shard -> pretrain at two network sizes -> eval each -> scale-report. Every
step is the ordinary subcommand run as a user would run it (each is resumable, so a re-run of the demo
continues where it stopped); the commands are printed as they run and saved to OUT/demo.sh.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors
from sqlcli_core.atomic import atomic_output, write_json
from sqlcli_core.errors import SqlError, UsageError
from sqlcli_core.games.catalog import resolve_games
from sqlcli_core.methods.catalog import DEFAULT_METHOD, method_entry


class StepFailed(SqlError):
    """A step of the demo failed: the demo exits with that step's exit code (docs/failure-behaviour.md)."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1):
        self.exit_code = exit_code if exit_code > 0 else 1  # killed by a signal: 1
        super().__init__(message, hint=hint)


def _run(argv: list[str], script: list[str], total: int | None = None) -> dict:
    """Run `sql ARGV --json`, echoing the command and which step of `total` it is; return its JSON summary.
    The step's own progress (bars, or timed lines in a log file) goes to the same stderr."""
    line = "sql " + shlex.join(argv)
    script.append(line)
    step = f"{len(script)} of {total}" if total else str(len(script))
    console.print(f"\n[bold cyan]demo step {step}: $ {line}[/]", soft_wrap=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sqlcli.main", *argv, "--json"], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise StepFailed(f"step failed with exit code {proc.returncode}: {line}",
                         hint="its error is printed above; fix it and re-run `sql demo` to continue",
                         exit_code=proc.returncode)
    console.print(f"[dim]  done in {time.perf_counter() - started:.0f} s[/]")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


EXAMPLE = "Example: sql demo --out sql-demo"


def _validate(games: str, policy: str, epsilon: float, transitions: int, widths: str, arch: str, batch_size: int,
              steps: int, eval_seeds: str, eval_max_steps: int, seed: int, methods: str
              ) -> tuple[str, list[float], list[str]]:
    """Every option checked as the steps will check it, before the first step runs (nothing is written)."""
    from sqlcli.commands.eval import parse_seeds
    from sqlcli_core.acting import collect_runs
    from sqlcli_core.acting.policies import parse_policy
    from sqlcli_core.acting.protocol import get_protocol
    from sqlcli_core.evaluation.evaluate import EvalConfig, validate_config
    from sqlcli_core.networks.config import NetworkConfig
    from sqlcli_core.training.pretrain import resolve_settings

    game_list = ",".join(g.name for g in resolve_games(games))
    spec = parse_policy(policy, epsilon)
    loader = None
    if spec.kind == "checkpoint":  # JAX: only for a checkpoint behaviour policy
        from sqlcli_core.runs.policy import load_policy as loader
    for game in game_list.split(","):  # the policy against each game's actions, as collect checks it
        collect_runs.validate(collect_runs.RunConfig(game=game, run=1, transitions=transitions,
                                                     capacity=max(1000, transitions // 2), seed=seed, policy=spec),
                              loader)
    try:
        width_list = [float(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise UsageError(f"--widths '{widths}' is not a list of numbers", hint="e.g. --widths 0.5,1") from None
    if len(set(width_list)) < len(width_list) or len({f"{w:g}" for w in width_list}) < len(width_list):
        raise UsageError(f"--widths '{widths}' repeats a width", hint="each width is one run; e.g. --widths 0.5,1")
    if len(width_list) < 2:
        raise UsageError("--widths needs at least two sizes for the scaling fit", hint="e.g. --widths 0.5,1")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    if not method_list:
        raise UsageError("--methods names no method", hint="e.g. --methods scaled-ql,bc")
    if len({method_entry(m) for m in method_list}) < len(method_list):  # method_entry: one line naming them
        raise UsageError(f"--methods '{methods}' repeats a method", hint="e.g. --methods scaled-ql,bc")
    for method in method_list:
        for width in width_list:
            NetworkConfig(arch=arch, width=width)  # the arch and the width, as pretrain checks them
            resolve_settings(None, {**_pretrain_flags(arch, width, batch_size, steps, seed, game_list),
                                             "data": "-", "run_dir": "-", "method": method})
    protocol = get_protocol("dopamine")
    validate_config(EvalConfig(games=tuple(game_list.split(",")), seeds=parse_seeds(eval_seeds), episodes=1,
                                     protocol=protocol, epsilon=protocol.epsilon, max_steps=eval_max_steps))
    if transitions < 500:
        raise UsageError(f"--transitions must be >= 500, got {transitions}")
    return game_list, width_list, method_list


def _pretrain_flags(arch: str, width: float, batch_size: int, steps: int, seed: int, games: str) -> dict:
    """The settings of one pre-training run of the demo (the flags `_run` passes, as pretrain's settings)."""
    return {"games": games, "arch": arch, "width": width, "batch_size": batch_size, "steps": steps,
            "target_update_period": max(1, steps // 4), "checkpoint_every": max(1, steps // 2),
            "log_every": max(1, steps // 20), "seed": seed}


def _learner_check(out: Path, seed: int, script: list[str], total: int) -> dict:
    """collect -> shard -> pretrain -> diagnose on a known-answer game; the diagnosis and its one-line verdict."""
    from sqlcli_core.synthetic import check

    root = out / "learner-check"
    _run(["collect", "--games", check.GAME, "--policy", check.POLICY, "--epsilon", "0", "--transitions",
          str(check.TRANSITIONS), "--capacity", str(check.TRANSITIONS + 4000), "--seed", str(seed),
          "--out", str(root / "data")], script, total)
    _run(["shard", str(root / "data"), str(root / "store")], script, total)
    _run(["pretrain", "--data", str(root / "store"), "--run-dir", str(root / "run"), "--games", check.GAME,
          "--seed", str(seed), *check.PRETRAIN_FLAGS], script, total)
    result = _run(["diagnose", str(root / "run"), "--game", check.GAME], script, total)
    keys = ("game", "max_abs_q_error", "mean_abs_q_error", "greedy_action_agreement", "greedy_return",
            "optimal_return", "data_return")
    return {**{k: result.get(k) for k in keys}, "line": check.verdict(result), "run_dir": str(root / "run")}


@handles_errors
def demo(
    out: Path = typer.Option(Path("sql-demo"), "--out", rich_help_panel=o.OUTPUT, help="Directory for everything the demo makes. Default: ./sql-demo."),
    games: str = typer.Option("freeway,breakout", "--games", rich_help_panel=o.DATA, help="Games to collect, pre-train on and evaluate. Default: freeway,breakout."),
    policy: str = typer.Option("pattern:1", "--policy", rich_help_panel=o.DATA, help="Behaviour policy of the collected data (see `sql collect --help`). "
                               "Default: pattern:1, epsilon-greedy around action 1 (UP in Freeway, FIRE in Breakout)."),
    epsilon: float = typer.Option(0.5, "--epsilon", rich_help_panel=o.DATA, min=0.0, max=1.0, help="Random-action probability of the behaviour policy. Default: 0.5."),
    transitions: int = typer.Option(5000, "--transitions", rich_help_panel=o.DATA, min=500, help="Agent steps of data collected per game. Default: 5000."),
    steps: int = typer.Option(400, "--steps", rich_help_panel=o.OPTIMISATION, min=10, help="Gradient steps of each pre-training run. Default: 400."),
    widths: str = typer.Option("0.5,1", "--widths", rich_help_panel=o.NETWORK, help="Torso width multipliers: one run each, for the scaling fit. Default: 0.5,1."),
    arch: str = typer.Option("dqn", "--arch", rich_help_panel=o.NETWORK, help="Torso of the runs (dqn, impala, resnet18, ...). Default: dqn (fast on CPU)."),
    batch_size: int = typer.Option(32, "--batch-size", rich_help_panel=o.OPTIMISATION, min=1, help="Batch size of pre-training. Default: 32."),
    eval_seeds: str = typer.Option("0-2", "--eval-seeds", rich_help_panel=o.EVALUATION, help="Evaluation seeds (runs of the confidence intervals). Default: 0-2."),
    eval_max_steps: int = typer.Option(2500, "--eval-max-steps", rich_help_panel=o.EVALUATION, min=100,
                                       help="Cap on evaluation episodes, in agent steps (a quick look, marked as such "
                                       "in the results; the full protocol caps at 27,000; a Freeway game lasts about 2,050). Default: 2500."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=o.RUN, help="Seed of collection and pre-training. Default: 0."),
    methods: str = typer.Option("scaled-ql", "--methods", rich_help_panel=o.OPTIMISATION, help="Pre-training methods, comma-separated (e.g. "
                                "scaled-ql,bc): each trains every width and is its own group of the report. "
                                "Default: scaled-ql."),
    check: bool = typer.Option(True, "--check/--no-check", rich_help_panel=o.EVALUATION,
                               help="End with the learner check on a known-answer game (docs/known-answer.md): "
                               "C51 must come within 0.05 of the exact Q* and play the optimal return. Default: on."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run collect -> shard -> pretrain (two sizes per method) -> eval -> scale-report on a small default, offline,
    then check that the learner learns on a game whose answer is known."""
    game_list, width_list, method_list = _validate(games, policy, epsilon, transitions, widths, arch, batch_size,
                                                   steps, eval_seeds, eval_max_steps, seed, methods)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    script: list[str] = []
    started = time.perf_counter()
    total = 2 + 2 * len(method_list) * len(width_list) + 2  # collect, shard, (pretrain, eval) per run, random, report
    total += 4 if check else 0  # the learner check: collect, shard, pretrain, diagnose

    data, store = out / "data", out / "store"
    _run(["collect", "--games", game_list, "--transitions", str(transitions), "--capacity", str(max(1000, transitions // 2)),
          "--policy", policy, "--epsilon", str(epsilon), "--seed", str(seed), "--out", str(data), "--jobs", "2"], script, total)
    shard = _run(["shard", str(data), str(store)], script, total)

    runs = []
    for method, width in ((m, w) for m in method_list for w in width_list):
        # scaled-ql runs keep the names they had before methods were selectable (re-runs of the demo resume)
        run_dir = out / "runs" / (f"{arch}-w{width:g}" if method == DEFAULT_METHOD else f"{method}-{arch}-w{width:g}")
        flags = _pretrain_flags(arch, width, batch_size, steps, seed, game_list)
        _run(["pretrain", "--data", str(store), "--run-dir", str(run_dir)]
             + [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", f"{v:g}" if isinstance(v, float) else str(v))]
             + ([] if method == DEFAULT_METHOD else ["--method", method]), script, total)
        result = _run(["eval", str(run_dir), "--episodes", "1", "--seeds", eval_seeds, "--max-steps", str(eval_max_steps),
                       "--name", "demo", "--bootstrap-reps", "5000"], script, total)
        runs.append({"run_dir": str(run_dir), "width": width, "eval": result,
                     **({} if method == DEFAULT_METHOD else {"method": method})})
    random_eval = _run(["eval", "--policy", "random", "--games", game_list, "--episodes", "1", "--seeds", eval_seeds,
                        "--max-steps", str(eval_max_steps), "--out", str(out / "random-policy.json"),
                        "--bootstrap-reps", "5000"], script, total)
    report = _run(["scale-report", *[r["run_dir"] for r in runs], "--out", str(out / "report"), "--eval-name", "demo"], script, total)

    learner_check = _learner_check(out, seed, script, total) if check else None

    with atomic_output(out / "demo.sh", "w") as f:
        f.write("#!/usr/bin/env bash\n# The commands `sql demo` ran, in order.\nset -euo pipefail\n" + "\n".join(script) + "\n")
    summary = {
        "out": str(out), "games": game_list.split(","), "wall_s": round(time.perf_counter() - started, 1),
        "data": str(data), "store": str(store), "store_runs": shard.get("runs"), "runs": runs,
        "random_policy": random_eval, "report": report, "commands": script,
        "learner_check": learner_check,
    }
    write_json(out / "demo_summary.json", summary)
    console.print(f"\n[bold green]demo finished in {summary['wall_s']:.0f} s[/]. Everything is under {out}:")
    for label, path in [("data (DQN-Replay format)", data), ("Zarr store", store), ("pre-training runs", out / "runs"),
                        ("eval results", out / "runs" / "*" / "eval" / "demo.json"),
                        ("random-policy baseline", out / "random-policy.json"), ("scaling report", out / "report"),
                        ("the commands, as a script", out / "demo.sh")]:
        console.print(f"  {label:28s} {path}")
    if learner_check is not None:
        console.print(learner_check["line"], markup=False)
    emit_summary(summary, as_json)

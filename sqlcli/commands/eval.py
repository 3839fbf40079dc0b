"""`sql eval`: play real ALE games with a trained multi-game policy (or a baseline) and score it."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import typer
from rich.table import Table

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport
from sqlcli_core.acting.ale_vector import BACKENDS, choose_backend
from sqlcli_core.acting.protocol import get_protocol
from sqlcli_core.atomic import append_jsonl, atomic_output
from sqlcli_core.errors import DataError, SqlWarning, UsageError
from sqlcli_core.evaluation.evaluate import (
    EpisodeResult,
    EvalConfig,
    RandomPolicy,
    WorkItem,
    batch_width,
    check_action_sets,
    evaluate,
    head_indices,
    stream_seeds,
    validate_config,
    work_items,
)
from sqlcli_core.evaluation.results import build_eval_result, write_eval_result
from sqlcli_core.games.catalog import Game, canonical_name, resolve_games
from sqlcli_core.locks import writer_lock
from sqlcli_core.methods.acting_settings import ACTING_MODES, DTActing, acting_block, resolve_mode
from sqlcli_core.ranges import parse_ranges
from sqlcli_core.settings import field_help

POLICIES = ("checkpoint", "random")
PolicyChoice = o.choices("PolicyChoice", POLICIES)
BackendChoice = o.choices("BackendChoice", BACKENDS)
ActingChoice = o.choices("ActingChoice", ACTING_MODES)
DT_OPTIONS = ("return_samples", "return_inverse_temperature", "kappa", "action_inverse_temperature",
              "action_top_fraction")


def dt_option(name: str):
    """A `--dt-*` option of the Decision Transformer's acting (`DTActing.<name>`), None when not given."""
    return typer.Option(None, "--dt-" + name.replace("_", "-"), rich_help_panel=o.EVALUATION,
                        help="Decision Transformer runs: " + field_help(DTActing, name))


def resolve_acting(policy, asked: str | None, dt_given: dict) -> dict:
    """The acting block of a checkpoint policy: its method's default mode or `asked`, and (dt) DTActing."""
    from sqlcli_core.methods import get_method  # imports JAX: only once a checkpoint is evaluated

    method = get_method(getattr(policy, "method", None))
    mode = resolve_mode(method.name, method.acting_modes, asked)
    given = {k: v for k, v in dt_given.items() if v is not None}
    if method.make_actor is None and given:
        raise UsageError(f"--dt-{next(iter(given)).replace('_', '-')} applies to Decision Transformer runs, "
                         f"not to this {method.name} run", hint="drop the --dt-* options")
    dt = DTActing(**given) if method.make_actor is not None else None
    return acting_block(method.name, mode, asked is None, dt)
EPISODES_FORMAT = "sql-eval-episodes"


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' or '0-4' or a mix ('0-2,7') -> (0, 1, 2, 7): the grammar of sqlcli_core.ranges, 'all' refused."""
    return parse_ranges(text, "--seeds", allow_all=False, example="0,1,2 or a range 0-4")


def find_run_dir(path: Path) -> Path | None:
    """The run directory holding `path` (RUN, RUN/checkpoints or RUN/checkpoints/STEP), if any."""
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "run.json").is_file():
            return candidate
    return None


def _policy_block(kind: str, policy, source: Path | None, run_dir: Path | None, epsilon: float) -> dict:
    record = policy.run_config or {}
    network = (record.get("identity") or {}).get("network") or {}
    return {
        "kind": kind,
        "run": str(run_dir) if run_dir else None,
        "checkpoint": str(source) if source else None,
        "step": policy.step,
        "arch": network.get("arch"),
        "num_params": record.get("num_parameters"),
        "games": [g.name for g in policy.games] if kind == "checkpoint" else None,
        "epsilon": epsilon,
    }


def settings_digest(settings: dict) -> str:
    """What every line of an episodes log carries to say which settings played it."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _episode_line(r: EpisodeResult, digest: str) -> dict:
    return {"game": r.game, "seed": r.seed, "episode": r.episode, "score": r.score, "length": r.length,
            "truncated": r.truncated, "settings": digest}


def resume_episodes(path: Path, settings: dict) -> list[EpisodeResult]:
    """Episodes already played under the same settings ([] for a new log).

    Every line is one episode of the same shape (`settings`: `settings_digest`). A log of other settings is
    refused. A line cut by a crash is dropped and the log rewritten without it (atomically), so the next
    append starts on a fresh line; that episode is simply played again. A log written by sql 0.1 (a header
    line with the settings, then episodes) is read and rewritten in the current shape.
    """
    if not path.exists():
        return []
    digest = settings_digest(settings)
    results, rewrite = [], False
    for number, line in enumerate(path.read_text().splitlines()):
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            rewrite = True
            continue
        if not isinstance(d, dict) or ("format" not in d and "game" not in d):
            raise DataError(f"{path} is not an episodes log of `sql eval`", hint="delete it or pass another --out")
        if "format" in d and number == 0:  # the 0.1 header
            if d.get("format") != EPISODES_FORMAT:
                raise DataError(f"{path} is not an episodes log of `sql eval`", hint="delete it or pass another --out")
            if d.get("settings") != settings:
                raise UsageError(f"{path} holds episodes played with other settings",
                                 hint="pass another --out (or --name), or delete it to start over")
            rewrite = True
            continue
        if "format" not in d and d.get("settings", digest) != digest:
            raise UsageError(f"{path} holds episodes played with other settings",
                             hint="pass another --out (or --name), or delete it to start over")
        try:
            results.append(EpisodeResult(d["game"], d["seed"], d["episode"], float(d["score"]),
                                            int(d["length"]), bool(d["truncated"])))
            rewrite = rewrite or "settings" not in d
        except (KeyError, TypeError, ValueError):
            rewrite = True
    if rewrite:
        with atomic_output(path, "w") as f:
            f.write("".join(json.dumps(_episode_line(r, digest)) + "\n" for r in results))
    return results


def _default_name(label: str, settings: dict, config: EvalConfig) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    games = config.games[0] if len(config.games) == 1 else f"{len(config.games)}games"
    capped = f"_cap{config.max_steps}" if config.max_steps != config.protocol.max_episode_steps else ""
    return f"{label}_{config.protocol.name}_{games}{capped}_{digest}"


EXAMPLE = "Example: sql eval runs/r50 --games atari40 --seeds 0-4 --episodes 2"

@handles_errors
def eval_command(
    checkpoint_or_run: Path = typer.Argument(
        None, help="A run directory of `sql pretrain` (its newest checkpoint) or RUN/checkpoints/STEP. "
        "Not used with --policy random."),
    games: str = typer.Option(
        None, "--games", rich_help_panel=o.EVALUATION, help="Comma-separated games or sets (see `sql games`). Default: all games of the "
        "checkpoint; required with --policy random."),
    episodes: int = typer.Option(2, "--episodes", rich_help_panel=o.EVALUATION, help="Episodes per game and seed. Default: 2."),
    seeds: str = typer.Option(
        "0-4", "--seeds", rich_help_panel=o.EVALUATION, help="Evaluation seeds, e.g. 0,1,2 or 0-4; each seed is one run for the confidence "
        "intervals. Default: 0-4."),
    protocol_name: o.ProtocolChoice = typer.Option(
        "dopamine", "--protocol", rich_help_panel=o.EVALUATION, help="dopamine (sticky actions 0.25, epsilon 0.001, 27,000-step cap: the "
        "protocol that produced the data) or no-sticky (Multi-Game DT's variant). Default: dopamine."),
    mode: int = typer.Option(
        None, "--mode", rich_help_panel=o.EVALUATION, help="ALE game mode (validated against ALE). Default: the game's default."),
    difficulty: int = typer.Option(
        None, "--difficulty", rich_help_panel=o.EVALUATION, help="ALE difficulty (validated against ALE). Default: the game's default."),
    max_steps: int = typer.Option(
        None, "--max-steps", rich_help_panel=o.EVALUATION, help="Cap episodes at this many agent steps for a quick look; the result then says "
        "it deviates from the protocol. Default: the protocol's 27,000."),
    policy_kind: PolicyChoice = typer.Option(
        "checkpoint", "--policy", rich_help_panel=o.EVALUATION, help="checkpoint (the trained network) or random (uniform actions, the "
        "baseline of the human-normalized scale). Default: checkpoint."),
    num_envs: int = typer.Option(
        32, "--num-envs", rich_help_panel=o.RUN, help="Emulators stepped together; one batched policy call per step. Default: 32."),
    threads: int = typer.Option(
        1, "--threads", rich_help_panel=o.RUN, help="Threads stepping python-backend emulators (ALE's act holds the "
        "GIL, so the gain is small: see docs/eval.md). Default: 1."),
    backend: BackendChoice = typer.Option(
        "auto", "--backend", rich_help_panel=o.RUN, help="Emulators: vector (ale_py's C++ vector environment, "
        "parallel threads), python (AtariGame), or auto (vector unless --mode/--difficulty is given). Scores are "
        "the same. Default: auto."),
    overlap: bool = typer.Option(
        True, "--overlap/--no-overlap", rich_help_panel=o.RUN, help="Split the emulators into two halves that take "
        "turns: one half's policy call runs while the other half's emulators step (two calls of half the rows per "
        "step; Q-policies only). Scores are the same. Default: on (8% faster on 2 idle cores, docs/benchmarks.md)."),
    record: str = typer.Option(
        None, "--record", rich_help_panel=o.OUTPUT, help="Save an MP4 of this game's first episode (first seed) "
        "beside the result: the RGB screen next to the agent's 84x84 view, at the game's speed. Default: none."),
    record_steps: int = typer.Option(
        3000, "--record-steps", rich_help_panel=o.OUTPUT, help="Agent steps kept in the video (15 per second of game). Default: 3000."),
    out: Path = typer.Option(
        None, "--out", rich_help_panel=o.OUTPUT, help="Result JSON path (a .md table and a .episodes.jsonl log go beside it). Default: "
        "RUN/eval/NAME.json for a checkpoint, ./eval/NAME.json otherwise."),
    name: str = typer.Option(
        None, "--name", rich_help_panel=o.OUTPUT, help="NAME of the default output path. Default: derived from step, protocol, games and "
        "a hash of the settings."),
    acting: ActingChoice = typer.Option(
        None, "--acting", rich_help_panel=o.EVALUATION, help="greedy (argmax) or sample (draws from the policy). "
        "Default: the method's: greedy for scaled-ql and c51 (paper) and bc (ours: the Q-methods' acting), "
        "sample for dt (authors' code). scaled-ql and c51 act greedily only."),
    dt_return_samples: int = dt_option("return_samples"),
    dt_return_inverse_temperature: float = dt_option("return_inverse_temperature"),
    dt_kappa: float = dt_option("kappa"),
    dt_action_inverse_temperature: float = dt_option("action_inverse_temperature"),
    dt_action_top_fraction: float = dt_option("action_top_fraction"),
    bootstrap_reps: int = typer.Option(
        50_000, "--bootstrap-reps", rich_help_panel=o.OUTPUT, help="Stratified bootstrap replicates for the 95% intervals. Default: 50000 "
        "(rliable's)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Play ALE episodes and report raw and human-normalized scores with IQM/median/mean and 95% CIs."""
    protocol_name, policy_kind = o.plain(protocol_name), o.plain(policy_kind)
    protocol = get_protocol(protocol_name)
    seed_list = parse_seeds(seeds)
    if bootstrap_reps < 1:
        raise UsageError(f"--bootstrap-reps must be >= 1, got {bootstrap_reps}", hint="e.g. --bootstrap-reps 50000")
    if name is not None:
        check_name(name)
    if policy_kind not in POLICIES:
        raise UsageError(f"unknown --policy '{policy_kind}'", hint=f"choose one of {', '.join(POLICIES)}")
    if max_steps is None:
        max_steps = protocol.max_episode_steps

    acting = o.plain(acting)
    dt_given = dict(zip(DT_OPTIONS, (dt_return_samples, dt_return_inverse_temperature, dt_kappa,
                                     dt_action_inverse_temperature, dt_action_top_fraction)))
    source = run_dir = None
    acting_settings = None
    if policy_kind == "checkpoint":
        if checkpoint_or_run is None:
            raise UsageError("no checkpoint given", hint="pass a run directory, or use --policy random")
        from sqlcli_core.runs.policy import load_policy

        require_path(checkpoint_or_run, "run", hint="pass a run directory written by `sql pretrain`")
        policy = load_policy(checkpoint_or_run)
        source = Path(checkpoint_or_run).resolve()  # one name per checkpoint, whatever the working directory
        run_dir = find_run_dir(source)
        game_names = tuple(g.name for g in resolve_games(games)) if games else tuple(g.name for g in policy.games)
        epsilon, label = protocol.epsilon, f"step{policy.step}"
        acting_settings = resolve_acting(policy, acting, dt_given)
    else:
        if acting is not None or any(v is not None for v in dt_given.values()):
            raise UsageError(f"--policy {policy_kind} plays uniform actions: --acting and --dt-* do not apply",
                             hint="drop them, or evaluate a checkpoint")
        if checkpoint_or_run is not None:
            raise UsageError(f"--policy {policy_kind} takes no checkpoint, got {checkpoint_or_run}",
                             hint="drop the argument, or use --policy checkpoint")
        if not games:
            raise UsageError("--policy random needs --games", hint="e.g. --games pong,breakout")
        game_list = resolve_games(games)
        game_names = tuple(g.name for g in game_list)
        policy = RandomPolicy(game_list)
        epsilon, label = 1.0, "random"

    config = EvalConfig(games=game_names, seeds=seed_list, episodes=episodes, protocol=protocol,
                        epsilon=epsilon, max_steps=max_steps, mode=mode, difficulty=difficulty, acting=acting_settings)
    validate_config(config)
    backend = choose_backend(o.plain(backend), mode, difficulty)
    heads = head_indices(policy, config.games)  # a game without a head is refused before anything is written
    if epsilon < 1.0:
        check_action_sets(policy, heads, batch_width(config, num_envs, overlap))  # evaluate's batch: one compile
    record_item = None
    if record_steps < 1:
        raise UsageError(f"--record-steps must be >= 1, got {record_steps}", hint="e.g. --record-steps 3000")
    if record is not None:
        record_game = canonical_name(record)
        if record_game not in config.games:
            raise UsageError(f"--record {record_game} is not among the evaluated games",
                             hint="add it to --games")
        record_item = (record_game, seed_list[0])
    policy_block = _policy_block(policy_kind, policy, source, run_dir, epsilon)
    policy_block["acting"] = acting_settings
    settings = {"policy": {k: policy_block[k] for k in ("kind", "run", "checkpoint", "step")},
                **config.play_settings()}

    if out is None:
        folder = (run_dir / "eval") if run_dir else Path("eval")
        out = folder / f"{name or _default_name(label, settings, config)}.json"
    elif out.suffix != ".json":
        raise UsageError(f"--out {out} must end in .json", hint="e.g. --out results/pong.json")
    # writer_lock creates out's folder, and removes what it created if the lock file cannot be made.
    with writer_lock(out.with_name(f".{out.name}.lock"), what=f"the eval result {out}",
                     hint="wait for that `sql eval` to finish, or pass another --name or --out"):
        _play_and_write(policy, config, policy_kind, policy_block, settings, out, num_envs, threads, backend,
                        record, record_item, record_steps, bootstrap_reps, seed_list, protocol, as_json,
                        overlap=overlap)


def check_name(name: str) -> None:
    """--name is a file name inside the output folder: no folders, no '..', nothing hidden or empty."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise UsageError(f"--name {name!r} must be a plain file name (no '/', no leading '.')",
                         hint="e.g. --name final; use --out PATH to write elsewhere")


def _play_and_write(policy, config, policy_kind, policy_block, settings, out, num_envs, threads, backend, record,
                    record_item, record_steps, bootstrap_reps, seed_list, protocol, as_json, *,
                    overlap: bool = False) -> None:
    episodes_path = out.with_name(out.stem + ".episodes.jsonl")
    previous = resume_episodes(episodes_path, settings)
    total = len(config.games) * len(config.seeds) * config.episodes
    wanted = {w.key for w in work_items(config)}
    previous = list({r.key: r for r in previous if r.key in wanted}.values())
    if previous:
        console.print(f"resuming: {len(previous)} of {total} episodes already played ({episodes_path})")

    video_path = None

    def save_video(item: WorkItem, frames, actions) -> None:
        """The recorded episode replayed for its RGB screens, beside the agent's view, as an MP4."""
        nonlocal video_path
        from sqlcli_core.evaluation.recording import replay_episode, write_mp4

        env_seed, _ = stream_seeds(item.game, item.seed)
        replay = replay_episode(Game(item.game), env_seed, actions, frames, protocol=protocol, mode=config.mode,
                                difficulty=config.difficulty)
        if replay.matched < len(frames):
            warnings.warn(f"--record: the replay of {item.game} seed {item.seed} left the played episode after "
                          f"{replay.matched} of {len(frames)} frames; the video stops there", SqlWarning, stacklevel=1)
        video_path = write_mp4(out.with_name(f"{out.stem}.{item.game}.mp4"), replay, frame_skip=protocol.frame_skip)

    digest = settings_digest(settings)
    # emulators end episodes in bursts: the rate counts from the start, not from the first episode
    report = ProgressReport(f"eval {len(config.games)} games", unit="episodes", rate_from="start")
    report.add("episodes", total=total, completed=len(previous))
    with report:

        def played(result: EpisodeResult) -> None:
            append_jsonl(episodes_path, _episode_line(result, digest))
            report.update(advance=1, status=f"{result.game} seed {result.seed}: {result.score:g}")

        new, stats = evaluate(policy, config, num_envs=num_envs, threads=threads, backend=backend,
                                 overlap=overlap, done={r.key for r in previous}, record=record_item, record_frames=record_steps,
                                 on_episode=played, on_record=save_video)

    cli_config = {**settings, "num_envs": num_envs, "threads": threads, "backend": backend, "overlap": overlap, "record": record,
                  "record_steps": record_steps, "out": str(out), "bootstrap_reps": bootstrap_reps}
    result = build_eval_result(
        command="eval", config=cli_config, seed=seed_list[0], eval_config=config, episodes=previous + new,
        policy=policy_block, bootstrap_reps=bootstrap_reps,
        throughput={**stats.to_dict(), "num_envs": num_envs, "threads": threads, "backend": backend,
                    "overlap": overlap, "episodes_reused": len(previous)})
    md_path = write_eval_result(out, result, markdown=True)
    from sqlcli_core.analysis.eval_chart import write_eval_chart

    png_path = write_eval_chart(result, out.with_suffix(".png"))

    _print_tables(result)
    console.print(f"{stats.env_steps} env steps in {stats.seconds:.1f} s: {stats.env_steps_per_s:.0f} env steps/s "
                  f"({num_envs} {backend} emulators)", markup=False)
    console.print(f"wrote {out}, {md_path}, {png_path}" + (f", {video_path}" if video_path else ""), markup=False)
    emit_summary({
        "out": str(out), "markdown": str(md_path), "plot": str(png_path),
        "video": str(video_path) if video_path else None,
        "policy": policy_block, "protocol": config.protocol.name,
        "deviates_from_protocol": result["protocol"]["deviates_from_protocol"],
        "games": {g: {"mean": b["mean"], "std": b["std"], "episodes": len(b["scores"]),
                      "human_normalized": b["human_normalized"],
                      **({"optimal_normalized": b["optimal_normalized"]} if "optimal_normalized" in b else {})}
                  for g, b in result["games"].items()},
        "aggregates": result["aggregates"], "excluded_from_aggregates": result["excluded_from_aggregates"],
        "episodes_played": stats.episodes, "episodes_reused": len(previous),
        "env_steps": stats.env_steps, "env_steps_per_s": round(stats.env_steps_per_s, 1),
        "notes": result["notes"],
    }, as_json)


def _print_tables(result: dict) -> None:
    table = Table(title=f"{result['policy']['kind']} policy, protocol {result['protocol']['name']}")
    synthetic = any("optimal_normalized" in b for b in result["games"].values())
    for col in ("game", "episodes", "mean", "std", "human-normalized") + (("of optimal (0 = random)",) if synthetic else ()):
        table.add_column(col, justify="left" if col == "game" else "right")
    for game, b in result["games"].items():
        hns, ons = b["human_normalized"], b.get("optimal_normalized")
        digits = 2 if synthetic else 1
        table.add_row(game, str(len(b["scores"])), f"{b['mean']:.{digits}f}", f"{b['std']:.{digits}f}",
                      "-" if hns is None else f"{100 * hns:.1f}%",
                      *(("-" if ons is None else f"{100 * ons:.1f}%",) if synthetic else ()))
    console.print(table)
    scale = result.get("aggregate_method", {}).get("scale", "human")
    for agg, a in result["aggregates"].items():
        lo, hi = a["ci95"]
        console.print(f"{agg} ({scale}-normalized): {100 * a['value']:.1f}% (95% CI {100 * lo:.1f}% .. "
                      f"{100 * hi:.1f}%)", markup=False)
    for note in result["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False)

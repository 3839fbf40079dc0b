"""`sql pretrain`: train one multi-game network (Scaled QL, C51, behaviour cloning or a Decision Transformer) on a
Zarr store; resumable.

Settings come from, in increasing priority: the config dataclasses' defaults (docs/defaults.md), `--config`
(a TOML file with flat keys named like the options, `-` or `_`, or a run's RUN/run.json to re-create its
settings), then the flags given on the command line. Every option's default and help is read from the
dataclass field it sets (`sqlcli.options`).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.options import DATA, DISTRIBUTED, NETWORK, OPTIMISATION, RUN, ConfigFile, Wandb, choices, option
from sqlcli.progress import ProgressReport, metrics_line
from sqlcli.tracking import open_wandb
from sqlcli_core.errors import UsageError
from sqlcli_core.methods import method_names
from sqlcli_core.networks.config import ARCHS, DT_ARCHS, NetworkConfig
from sqlcli_core.training.configs import LearnerConfig, PretrainConfig

P, N, L = PretrainConfig, NetworkConfig, LearnerConfig
Data = Annotated[str | None, option(P, "data", panel=DATA)]
RunDir = Annotated[Path | None, option(P, "run_dir", panel=RUN)]
Games = Annotated[str | None, option(P, "games", panel=DATA)]
# The registered methods, as a choice list (shown in --help, refused with the list otherwise).
MethodName = enum.Enum("MethodName", {name: name for name in method_names()}, type=str)
Method = Annotated[MethodName | None, option(L, "method", panel=OPTIMISATION)]
ArchName = choices("ArchName", (*ARCHS, *DT_ARCHS))
Arch = Annotated[ArchName | None, option(N, "arch", panel=NETWORK)]
Width = Annotated[float | None, option(N, "width", panel=NETWORK)]
BatchSize = Annotated[int | None, option(P, "batch_size", panel=OPTIMISATION)]
Lr = Annotated[float | None, option(L, "learning_rate", "--lr", panel=OPTIMISATION)]
AdamEps = Annotated[float | None, option(L, "adam_eps", panel=OPTIMISATION)]
Alpha = Annotated[float | None, option(L, "alpha", panel=OPTIMISATION)]
NStep = Annotated[int | None, option(P, "n_step", panel=DATA)]
Gamma = Annotated[float | None, option(L, "gamma", panel=OPTIMISATION)]
NumAtoms = Annotated[int | None, option(N, "num_atoms", panel=NETWORK)]
ProjectionDim = Annotated[int | None, option(N, "projection_dim", panel=NETWORK)]
VMin = Annotated[float | None, option(N, "v_min", panel=NETWORK)]
VMax = Annotated[float | None, option(N, "v_max", panel=NETWORK)]
TargetUpdatePeriod = Annotated[int | None, option(L, "target_update_period", panel=OPTIMISATION)]
MaxGradNorm = Annotated[float | None, option(L, "max_grad_norm", panel=OPTIMISATION)]
Steps = Annotated[int | None, option(P, "steps", panel=OPTIMISATION)]
Seed = Annotated[int | None, option(P, "seed", panel=RUN)]
CheckpointEvery = Annotated[int | None, option(P, "checkpoint_every", panel=RUN)]
Keep = Annotated[int | None, option(P, "keep", panel=RUN)]
LogEvery = Annotated[int | None, option(P, "log_every", panel=RUN)]
Bf16 = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="Compute the network in bfloat16 (params and "
                                           "Adam stay float32): compute_dtype bfloat16. Default: off (ours).",
                                           rich_help_panel=NETWORK)]
GameWeights = Annotated[str | None, option(P, "game_weights", panel=DATA)]
CacheBytes = Annotated[int | None, option(P, "cache_bytes", panel=DATA)]
Prefetch = Annotated[int | None, option(P, "prefetch", panel=DATA)]
Coordinator = Annotated[str | None, typer.Option("--coordinator", help="HOST:PORT of process 0 for a multi-process run "
                                                 "(or SQL_COORDINATOR / JAX_COORDINATOR_ADDRESS). Default: single process.",
                                                 rich_help_panel=DISTRIBUTED)]
NumProcesses = Annotated[int | None, typer.Option("--num-processes", help="Processes of a multi-process run "
                                                  "(or SQL_NUM_PROCESSES). Default: 1.", rich_help_panel=DISTRIBUTED)]
ProcessId = Annotated[int | None, typer.Option("--process-id", help="This process's id, 0..N-1 (or SQL_PROCESS_ID). "
                                               "Default: 0.", rich_help_panel=DISTRIBUTED)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the parameter count per part and exit without "
                                      "reading data or training.", rich_help_panel=RUN)]

EXAMPLE = "Example: sql pretrain --data store --games atari40 --arch resnet50 --steps 100000 --run-dir runs/r50"


def parse_game_weights(value: Any) -> dict[str, float] | None:
    """'Pong=2,Breakout=1' (or a TOML table) -> {"Pong": 2.0, "Breakout": 1.0}, names canonicalised."""
    from sqlcli_core.games.catalog import canonical_name

    if value is None or value == "":
        return None
    if isinstance(value, str):
        pairs = []
        for item in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, weight = item.partition("=")
            if not sep:
                raise UsageError(f"bad --game-weights item '{item}'", hint="write GAME=WEIGHT pairs, e.g. Pong=2,Breakout=1")
            pairs.append((name, weight))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise UsageError("game_weights must be a string or a table", hint="e.g. game_weights = {Pong = 2.0}")
    weights = {}
    for name, weight in pairs:
        try:
            w = float(weight)
        except ValueError:
            raise UsageError(f"weight of {name} is not a number: '{weight}'", hint="e.g. Pong=2") from None
        if not w >= 0:
            raise UsageError(f"weight of {name} must be >= 0, got {w}")
        weights[canonical_name(str(name))] = w
    return weights


def resolve_settings(config_file: Path | None, flags: dict[str, Any]):
    """Defaults <- --config <- flags that were given (not None) -> (flat settings, PretrainConfig)."""
    from sqlcli_core.training.pretrain import resolve_settings

    return resolve_settings(config_file, flags, parse_game_weights)


def _parts_table(table: dict, method: str) -> Table:
    shape = (f"torso output {table['torso_output']}" if "torso_output" in table else
             f"{table['layers']} layers x {table['model_dim']} wide, {table['heads']} heads, "
             f"context {table['context_steps']} steps")
    t = Table(title=f"{method}: {table['arch']} width {table['width']}: {table['num_games']} games, "
              f"{sum(table['num_actions'])} actions, {shape}")
    t.add_column("part")
    t.add_column("parameters", justify="right")
    for part, n in table["parts"].items():
        t.add_row(part, f"{n:,}")
    t.add_row("total", f"{table['total']:,}", style="bold")
    return t


@handles_errors
def pretrain(
    data: Data = None, run_dir: RunDir = None, games: Games = None, method: Method = None, arch: Arch = None,
    width: Width = None, batch_size: BatchSize = None, lr: Lr = None, adam_eps: AdamEps = None, alpha: Alpha = None,
    n_step: NStep = None, gamma: Gamma = None, num_atoms: NumAtoms = None, projection_dim: ProjectionDim = None, v_min: VMin = None, v_max: VMax = None,
    target_update_period: TargetUpdatePeriod = None, max_grad_norm: MaxGradNorm = None, steps: Steps = None,
    seed: Seed = None, checkpoint_every: CheckpointEvery = None, keep: Keep = None, log_every: LogEvery = None,
    bf16: Bf16 = None, game_weights: GameWeights = None, cache_bytes: CacheBytes = None, prefetch: Prefetch = None,
    coordinator: Coordinator = None, num_processes: NumProcesses = None, process_id: ProcessId = None,
    config_file: ConfigFile = None, dry_run: DryRun = False, wandb_project: Wandb = None, as_json: bool = JSON_OPTION,
) -> None:
    """Pre-train one network on offline data from many games (Scaled QL, C51, BC or a Decision Transformer), resumably."""
    flags = {
        "data": data, "run_dir": str(run_dir) if run_dir else None, "games": games, "method": method and method.value, "arch": arch and arch.value,
        "width": width, "batch_size": batch_size, "learning_rate": lr, "adam_eps": adam_eps, "alpha": alpha,
        "n_step": n_step, "gamma": gamma, "num_atoms": num_atoms, "projection_dim": projection_dim, "v_min": v_min, "v_max": v_max,
        "target_update_period": target_update_period, "max_grad_norm": max_grad_norm, "steps": steps, "seed": seed,
        "checkpoint_every": checkpoint_every, "keep": keep, "log_every": log_every, "compute_dtype": bf16,
        "game_weights": game_weights, "cache_bytes": cache_bytes, "prefetch": prefetch,
    }
    if dry_run:
        _dry_run(config_file, flags, as_json)
        return

    from sqlcli_core.training.mesh import init_distributed
    from sqlcli_core.training.pretrain import run_pretraining

    # Joining a multi-process job must precede every other JAX call.
    init_distributed(coordinator, num_processes, process_id)
    settings, config = resolve_settings(config_file, flags)
    require_path(settings["data"], "data store", hint="pass a Zarr store written by `sql shard SRC DST`")
    import jax

    primary = jax.process_index() == 0
    wandb = open_wandb(wandb_project, config.run_dir, "pretrain", settings) if primary else None
    report = ProgressReport("pretrain", unit="steps", enabled=primary)
    task = report.add("pretrain", total=config.steps, status="compiling")

    def on_start(info: dict) -> None:
        start = info["start_step"]
        what = f"resuming from step {info['resumed_from']}" if info["resumed_from"] is not None else "starting"
        if primary:
            console.print(f"{what}: {info['method']}, {sum(info['parameter_counts'].values()):,} parameters, "
                          f"{len(info['games'])} games, "
                          f"{info['devices']} devices in {info['processes']} processes -> {config.run_dir}")
        report.update(task, completed=start, restart=True)
        report.start()  # only now: errors while opening the store or run stay one line

    method_spec = config.learner.get_method()

    def on_log(record: dict) -> None:
        report.update(task, status=f"{metrics_line(record, method_spec)}  {record['samples_per_s'] or 0:.0f} samples/s")
        if wandb is not None:
            wandb.log(record)

    def on_step(step: int) -> None:
        report.update(task, completed=step)

    try:
        summary = run_pretraining(config, on_start=on_start, on_log=on_log, on_step=on_step)
    finally:
        report.stop()
        if wandb is not None:
            wandb.close()
    if primary:
        last = summary["last_metrics"]
        if last is None:
            console.print(f"nothing to do: {config.run_dir} is already at step {summary['steps']} of {config.steps}")
        else:
            console.print(f"step {summary['steps']}: loss {last['loss']:.4f}; checkpoint {summary['checkpoint_step']} "
                          f"in {config.run_dir}")
        summary["learning_curves"] = write_curves(config.run_dir)
        emit_summary({**summary, "config": settings}, as_json)


def _dry_run(config_file: Path | None, flags: dict, as_json: bool) -> None:
    from sqlcli_core.games.catalog import resolve_games
    from sqlcli_core.networks.network import parameter_table

    flags = {**flags, "data": flags["data"] or "-", "run_dir": flags["run_dir"] or "-"}
    settings, config = resolve_settings(config_file, flags)
    table = parameter_table(config.network, resolve_games(config.games), config.learner.get_method().head)
    console.print(_parts_table(table, config.learner.method))
    emit_summary({"dry_run": True, "method": config.learner.method, **table, "config": {k: v for k, v in settings.items() if k not in ("data", "run_dir")}},
                 as_json)

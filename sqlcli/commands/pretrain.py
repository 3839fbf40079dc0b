"""`sql pretrain`: train one multi-game network (Scaled QL, C51, behaviour cloning or a Decision Transformer) on a
Zarr store; resumable.

Settings come from, in increasing priority: the config dataclasses' defaults (docs/defaults.md), `--config`
(a TOML file with flat keys named like the options, `-` or `_`, or a run's RUN/run.json to re-create its
settings), then the flags given on the command line. Every option's default and help is read from the
dataclass field it sets (`sqlcli.options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.options import (
    DISTRIBUTED,
    NETWORK,
    RUN,
    ConfigFile,
    Wandb,
    method_setting_parameters,
    setting_parameters,
    with_setting_options,
)
from sqlcli.progress import ProgressReport, metrics_line
from sqlcli.tracking import open_wandb
from sqlcli_core.networks.config import SHARED_FIELDS, DecisionTransformerConfig, NetworkConfig
from sqlcli_core.training.configs import LearnerConfig, PretrainConfig

# Every option of a config field is generated from the field (flag, type, help, default, panel, choices):
# adding a setting to PretrainConfig, LearnerConfig, NetworkConfig or a method's config is adding the field.
SETTING_OPTIONS = [
    *setting_parameters(PretrainConfig, types={"run_dir": Path}), *setting_parameters(LearnerConfig),
    *setting_parameters(NetworkConfig), *setting_parameters(DecisionTransformerConfig, skip=SHARED_FIELDS),
    *method_setting_parameters(),
]
Bf16 = Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="Compute the network in bfloat16 (params and "
                                           "Adam stay float32): compute_dtype bfloat16. Default: off (ours).",
                                           rich_help_panel=NETWORK)]
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


def resolve_settings(config_file: Path | None, flags: dict[str, Any]):
    """Defaults <- --config <- flags that were given (not None) -> (flat settings, PretrainConfig)."""
    from sqlcli_core.training.pretrain import resolve_settings

    return resolve_settings(config_file, flags)


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


@with_setting_options(SETTING_OPTIONS, into="given")
@handles_errors
def pretrain(
    bf16: Bf16 = None, coordinator: Coordinator = None, num_processes: NumProcesses = None,
    process_id: ProcessId = None, config_file: ConfigFile = None, dry_run: DryRun = False,
    wandb_project: Wandb = None, as_json: bool = JSON_OPTION, given: dict | None = None,
) -> None:
    """Pre-train one network on offline data from many games (Scaled QL, C51, BC or a Decision Transformer), resumably."""
    flags = {**given, "run_dir": str(given["run_dir"]) if given["run_dir"] else None, "compute_dtype": bf16}
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

"""`sql pretrain`: train one multi-game Q-network (CQL + C51) on a Zarr store; resumable.

Settings come from, in increasing priority: the defaults below (docs/defaults.md), `--config FILE.toml`
(flat keys named like the options, `-` or `_`), then the flags given on the command line.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sqlcli.output import JSON_OPTION, console, emit_summary, handles_errors
from sqlcli_core.errors import UsageError

# Every setting of a run, with its default. Network settings without a flag are TOML-only.
DEFAULTS: dict[str, Any] = {
    "data": None, "run_dir": None, "games": "atari40",
    "arch": "resnet101", "width": 1.0, "num_atoms": 51, "v_min": -10.0, "v_max": 10.0,
    "spatial_embedding_features": 8, "projection_dim": 1024, "num_groups": 32, "normalize_features": True,
    "full_action_space": False, "bf16": False,
    "batch_size": 512, "lr": 2e-4, "adam_eps": 3.125e-4, "alpha": 0.05, "n_step": 3, "gamma": 0.99,
    "target_update_period": 2000, "max_grad_norm": None, "steps": 10_000_000, "seed": 0,
    "checkpoint_every": 1000, "keep": 3, "log_every": 100, "game_weights": None, "cache_bytes": None,
    "prefetch": 2, "prefetch_units": None,  # prefetch_units: TOML-only (the sampler's; docs/sampler.md)
}
NETWORK_KEYS = ("arch", "width", "num_atoms", "v_min", "v_max", "spatial_embedding_features", "projection_dim",
                "num_groups", "normalize_features", "full_action_space")


def read_config_file(path: Path) -> dict[str, Any]:
    """Flat settings from a TOML file; keys may use '-' or '_'. Unknown keys are an error."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist", hint="pass an existing TOML file to --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML ({exc})", hint="fix the file") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in DEFAULTS:
            raise UsageError(f"unknown setting '{key}' in {path}", hint="known settings: " + ", ".join(sorted(DEFAULTS)))
        out[name] = value
    return out


def parse_game_weights(value: Any) -> dict[str, float] | None:
    """'Pong=2,Breakout=1' (or a TOML table) -> {"Pong": 2.0, "Breakout": 1.0}, names canonicalised."""
    from sqlcli_core.atari.games import canonical_name

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
    """Defaults <- TOML <- flags that were given (not None) -> (flat dict, learner.PretrainConfig)."""
    from sqlcli_core import networks
    from sqlcli_core.training import learner

    settings = dict(DEFAULTS)
    if config_file is not None:
        settings.update(read_config_file(config_file))
    settings.update({k: v for k, v in flags.items() if v is not None})
    if not settings["data"]:
        raise UsageError("no data store given", hint="pass --data STORE (a Zarr store written by `sql shard`)")
    if not settings["run_dir"]:
        raise UsageError("no run directory given", hint="pass --run-dir RUN (created if missing, resumed if present)")
    settings["game_weights"] = parse_game_weights(settings["game_weights"])
    network = networks.NetworkConfig(
        **{k: settings[k] for k in NETWORK_KEYS}, compute_dtype="bfloat16" if settings["bf16"] else "float32")
    learner_config = learner.LearnerConfig(
        learning_rate=float(settings["lr"]), adam_eps=float(settings["adam_eps"]), alpha=float(settings["alpha"]),
        gamma=float(settings["gamma"]), target_update_period=int(settings["target_update_period"]),
        max_grad_norm=None if settings["max_grad_norm"] is None else float(settings["max_grad_norm"]))
    config = learner.PretrainConfig(
        # Absolute, so that run.json still names the store when read from another directory (scale-report).
        data=str(settings["data"]) if "://" in str(settings["data"]) else str(Path(settings["data"]).resolve()),
        run_dir=str(settings["run_dir"]), games=str(settings["games"]), network=network,
        learner=learner_config, batch_size=int(settings["batch_size"]), n_step=int(settings["n_step"]),
        steps=int(settings["steps"]), seed=int(settings["seed"]), checkpoint_every=int(settings["checkpoint_every"]),
        keep=int(settings["keep"]), log_every=int(settings["log_every"]), game_weights=settings["game_weights"],
        cache_bytes=None if settings["cache_bytes"] is None else int(settings["cache_bytes"]),
        prefetch=int(settings["prefetch"]),
        prefetch_units=None if settings["prefetch_units"] is None else int(settings["prefetch_units"]))
    return settings, config


def _parts_table(table: dict) -> Table:
    t = Table(title=f"{table['arch']} width {table['width']}: {table['num_games']} games, "
              f"{sum(table['num_actions'])} actions, torso output {table['torso_output']}")
    t.add_column("part")
    t.add_column("parameters", justify="right")
    for part, n in table["parts"].items():
        t.add_row(part, f"{n:,}")
    t.add_row("total", f"{table['total']:,}", style="bold")
    return t


@handles_errors
def pretrain(
    data: str | None = typer.Option(None, "--data", help="Zarr store written by `sql shard`: a path or an s3://, gs://, https:// or file:// URL. Required."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory: created if missing, resumed from its newest checkpoint if present. Required."),
    games: str | None = typer.Option(None, "--games", help="Training games: a set (atari40, ...) or comma-separated names. Default: atari40."),
    arch: str | None = typer.Option(None, "--arch", help="Torso: dqn, impala, resnet18/34/50/101/152. Default: resnet101."),
    width: float | None = typer.Option(None, "--width", help="Channel multiplier of the torso. Default: 1.0."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch (samples per step, over all devices and processes). Default: 512."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate. Default: 2e-4."),
    adam_eps: float | None = typer.Option(None, "--adam-eps", help="Adam epsilon. Default: 3.125e-4."),
    alpha: float | None = typer.Option(None, "--alpha", help="CQL weight (0 = plain C51). Default: 0.05."),
    n_step: int | None = typer.Option(None, "--n-step", help="n of the n-step returns (transitions). Default: 3."),
    gamma: float | None = typer.Option(None, "--gamma", help="Discount per agent step. Default: 0.99."),
    num_atoms: int | None = typer.Option(None, "--num-atoms", help="C51 atoms. Default: 51."),
    v_min: float | None = typer.Option(None, "--v-min", help="Lowest atom (return units, clipped rewards). Default: -10."),
    v_max: float | None = typer.Option(None, "--v-max", help="Highest atom (return units, clipped rewards). Default: 10."),
    target_update_period: int | None = typer.Option(None, "--target-update-period", help="Gradient steps between hard target copies. Default: 2000."),
    max_grad_norm: float | None = typer.Option(None, "--max-grad-norm", help="Clip gradients to this global L2 norm. Default: no clipping."),
    steps: int | None = typer.Option(None, "--steps", help="Total gradient steps of the run (a re-run continues up to it). Default: 10,000,000."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the initial parameters and of the sampler. Default: 0."),
    checkpoint_every: int | None = typer.Option(None, "--checkpoint-every", help="Gradient steps between checkpoints (the last step is always saved). Default: 1000."),
    keep: int | None = typer.Option(None, "--keep", help="Checkpoints kept (newest). Default: 3."),
    log_every: int | None = typer.Option(None, "--log-every", help="Gradient steps per metrics line (averaged over them). Default: 100."),
    bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="Compute the network in bfloat16 (params and Adam stay float32). Default: off."),
    game_weights: str | None = typer.Option(None, "--game-weights", help="Relative sampling weight per game, GAME=W pairs (e.g. Pong=2,Breakout=1). Default: the sampler's."),
    cache_bytes: int | None = typer.Option(None, "--cache-bytes", help="Sampler chunk cache per process, in bytes. Default: the sampler's."),
    prefetch: int | None = typer.Option(None, "--prefetch", help="Batches prepared ahead on the devices by a background thread. Default: 2."),
    coordinator: str | None = typer.Option(None, "--coordinator", help="HOST:PORT of process 0 for a multi-process run (or SQL_COORDINATOR / JAX_COORDINATOR_ADDRESS). Default: single process."),
    num_processes: int | None = typer.Option(None, "--num-processes", help="Processes of a multi-process run (or SQL_NUM_PROCESSES). Default: 1."),
    process_id: int | None = typer.Option(None, "--process-id", help="This process's id, 0..N-1 (or SQL_PROCESS_ID). Default: 0."),
    config_file: Path | None = typer.Option(None, "--config", help="TOML file with any of the settings (flat keys named like the options); flags override it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the parameter count per part and exit without reading data or training."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Pre-train one value network on offline data from many games (Scaled QL: CQL + C51), resumably."""
    flags = {
        "data": data, "run_dir": str(run_dir) if run_dir else None, "games": games, "arch": arch, "width": width,
        "batch_size": batch_size, "lr": lr, "adam_eps": adam_eps, "alpha": alpha, "n_step": n_step, "gamma": gamma,
        "num_atoms": num_atoms, "v_min": v_min, "v_max": v_max, "target_update_period": target_update_period,
        "max_grad_norm": max_grad_norm, "steps": steps, "seed": seed, "checkpoint_every": checkpoint_every,
        "keep": keep, "log_every": log_every, "bf16": bf16, "game_weights": game_weights,
        "cache_bytes": cache_bytes, "prefetch": prefetch,
    }
    if dry_run:
        _dry_run(config_file, flags, as_json)
        return

    from sqlcli_core.training import learner

    # Joining a multi-process job must precede every other JAX call.
    learner.init_distributed(coordinator, num_processes, process_id)
    settings, config = resolve_settings(config_file, flags)
    import jax

    primary = jax.process_index() == 0
    progress = Progress(
        TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not primary, transient=False)
    task = progress.add_task("steps", total=config.steps, status="compiling")

    def on_start(info: dict) -> None:
        start = info["start_step"]
        what = f"resuming from step {info['resumed_from']}" if info["resumed_from"] is not None else "starting"
        if primary:
            console.print(f"{what}: {sum(info['parameter_counts'].values()):,} parameters, {len(info['games'])} games, "
                          f"{info['devices']} devices in {info['processes']} processes -> {config.run_dir}")
        progress.update(task, completed=start)
        progress.start()  # only now: errors while opening the store or run stay one line

    def on_log(record: dict) -> None:
        progress.update(task, status=f"loss {record['loss']:.4f} td {record['td_loss']:.4f} "
                        f"cql {record['cql_loss']:.3f} Q {record['q_data']:.3f} {record['samples_per_s'] or 0:.0f} samples/s")

    def on_step(step: int) -> None:
        progress.update(task, completed=step)

    try:
        summary = learner.run_pretraining(config, on_start=on_start, on_log=on_log, on_step=on_step)
    finally:
        progress.stop()
    if primary:
        last = summary["last_metrics"]
        if last is None:
            console.print(f"nothing to do: {config.run_dir} is already at step {summary['steps']} of {config.steps}")
        else:
            console.print(f"step {summary['steps']}: loss {last['loss']:.4f}; checkpoint {summary['checkpoint_step']} "
                          f"in {config.run_dir}")
        emit_summary({**summary, "config": settings}, as_json)


def _dry_run(config_file: Path | None, flags: dict, as_json: bool) -> None:
    from sqlcli_core import networks
    from sqlcli_core.atari.games import resolve_games

    flags = {**flags, "data": flags["data"] or "-", "run_dir": flags["run_dir"] or "-"}
    settings, config = resolve_settings(config_file, flags)
    table = networks.parameter_table(config.network, resolve_games(config.games))
    console.print(_parts_table(table))
    emit_summary({"dry_run": True, **table, "config": {k: v for k, v in settings.items() if k not in ("data", "run_dir")}},
                 as_json)

"""`sql finetune-offline`: Scaled QL on a small slice of a new game's data, from a pre-trained torso or scratch."""

from __future__ import annotations

from typing import Annotated

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport, metrics_line
from sqlcli.tracking import open_wandb
from sqlcli_core.data.slices import SLICE_RULES
from sqlcli_core.training.configs import OfflineConfig

SliceChoice = o.choices("SliceChoice", SLICE_RULES)
Game = Annotated[str | None, o.option(OfflineConfig, "game", panel=o.DATA)]
Data = Annotated[str | None, o.option(OfflineConfig, "data", panel=o.DATA)]
Transitions = Annotated[int | None, o.option(OfflineConfig, "transitions", panel=o.DATA)]
SliceRule = Annotated[SliceChoice | None, o.option(OfflineConfig, "slice_rule", "--slice", panel=o.DATA)]
Runs = Annotated[str | None, o.option(OfflineConfig, "runs", panel=o.DATA)]
Checkpoints = Annotated[str | None, o.option(OfflineConfig, "checkpoints", panel=o.DATA)]
CacheBytes = Annotated[int | None, o.option(OfflineConfig, "cache_bytes", panel=o.DATA)]
EvalEnvs = Annotated[int | None, o.option(OfflineConfig, "eval_envs", panel=o.EVALUATION)]

# The options whose unit differs between the two commands (agent steps online, gradient steps offline): each
# command's own help, not the shared one.
Steps = Annotated[int | None, o.option(OfflineConfig, "steps", panel=o.OPTIMISATION)]
CheckpointEvery = Annotated[int | None, o.option(OfflineConfig, "checkpoint_every", panel=o.RUN)]
LogEvery = Annotated[int | None, o.option(OfflineConfig, "log_every", panel=o.RUN)]

EXAMPLE = ("Example: sql finetune-offline --from runs/pretrain --game Alien --data store --transitions 2000000 "
           "--run-dir runs/alien-ft")


@handles_errors
def finetune_offline(
    run_dir: o.RunDir, source: o.From = None, game: Game = None, data: Data = None,
    transitions: Transitions = None, slice_rule: SliceRule = None, runs: Runs = None, checkpoints: Checkpoints = None, init: o.Init = None,
    freeze: o.Freeze = None, steps: Steps = None, batch_size: o.BatchSize = None, lr: o.Lr = None,
    adam_eps: o.AdamEps = None, alpha: o.Alpha = None, gamma: o.Gamma = None, n_step: o.NStep = None,
    target_update_period: o.TargetUpdatePeriod = None, cache_bytes: CacheBytes = None, protocol: o.Protocol = None,
    final_seeds: o.FinalSeeds = None, final_episodes: o.FinalEpisodes = None, eval_max_steps: o.EvalMaxSteps = None,
    eval_envs: EvalEnvs = None, checkpoint_every: CheckpointEvery = None, log_every: LogEvery = None,
    seed: o.Seed = None, config_file: o.ConfigFile = None, wandb_project: o.Wandb = None, as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune offline on a new game's data; writes RUN/metrics.jsonl and RUN/eval/final.json (raw and human-normalized)."""
    flags = {name: o.plain(value) for name, value in locals().items()}
    from sqlcli_core.methods import get_method
    from sqlcli_core.training.finetune_offline import resolve_config, run_offline
    for name in ("run_dir", "source", "config_file", "as_json", "wandb_project"):
        flags.pop(name)
    flags["learning_rate"] = flags.pop("lr")
    config = resolve_config(config_file, {**flags, "data": None if data is None else str(data)})
    method = get_method(config.learner_config().method)
    require_path(source, "pre-trained run", hint="pass a run directory written by `sql pretrain`")
    require_path(config.data, "data store", hint="pass a Zarr store written by `sql shard SRC DST`")

    wandb = open_wandb(wandb_project, run_dir, "finetune-offline", config.identity_fields())
    report = ProgressReport("finetune-offline", unit="steps")
    task = report.add("finetune-offline", total=config.steps, status="starting")

    def progress(record: dict) -> None:
        report.start()  # at the first record: a refusal before training stays one line
        if record.get("kind", "train") == "train":
            report.update(task, completed=record["step"],
                          status=f"{metrics_line(record, method)}  {record['steps_per_s'] or 0:.1f} steps/s")
            if record["step"] >= config.steps:
                report.set_status("final evaluation")
        if wandb is not None:
            wandb.log(record)

    try:
        summary = run_offline(config, run_dir=run_dir, source=source, on_log=progress)
    finally:
        report.stop()
        if wandb is not None:
            wandb.close()
    summary["learning_curves"] = write_curves(run_dir)
    hns = summary["human_normalized"]
    console.print(f"{summary['game']}: final score {summary['final_mean']:.1f} +- {summary['final_std']:.1f}"
                  + (f" ({100 * hns:.1f}% human-normalized)" if hns is not None else "")
                  + f" after {summary['grad_steps']} gradient steps on {summary['data_rows']} rows ({summary['init']}); "
                  f"{summary['eval_file']}", highlight=False)
    emit_summary(summary, as_json)

"""`sql finetune-offline`: Scaled QL on a small slice of a new game's data, from a pre-trained torso or scratch."""

from __future__ import annotations

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport, metrics_line
from sqlcli.tracking import open_wandb
from sqlcli_core.data.slices import SLICE_RULES
from sqlcli_core.training.configs import OfflineConfig

SliceChoice = o.choices("SliceChoice", SLICE_RULES)
# Every option but --run-dir and --from is generated from a field of OfflineConfig (`setting(...)`): a new field is a
# new option.
SETTING_OPTIONS = o.setting_parameters(OfflineConfig, types={"slice_rule": SliceChoice})

EXAMPLE = ("Example: sql finetune-offline --from runs/pretrain --game Alien --data store --transitions 2000000 "
           "--run-dir runs/alien-ft")


@o.with_setting_options(SETTING_OPTIONS, into="given")
@handles_errors
def finetune_offline(
    run_dir: o.RunDir, source: o.From = None, config_file: o.ConfigFile = None, wandb_project: o.Wandb = None,
    as_json: bool = JSON_OPTION, given: dict | None = None,
) -> None:
    """Fine-tune offline on a new game's data; writes RUN/metrics.jsonl and RUN/eval/final.json (raw and human-normalized)."""
    from sqlcli_core.methods import get_method
    from sqlcli_core.training.finetune_offline import resolve_config, run_offline
    config = resolve_config(config_file, given)
    method = get_method(config.learner.method)
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

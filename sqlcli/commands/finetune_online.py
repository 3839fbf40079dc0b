"""`sql finetune-online`: online RL on a game variant, from a pre-trained torso or from scratch."""

from __future__ import annotations

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport
from sqlcli.tracking import open_wandb
from sqlcli_core.training.configs import OnlineConfig

# Every option but --run-dir and --from is generated from a field of OnlineConfig (`setting(...)`): a new field is a
# new option.
SETTING_OPTIONS = o.setting_parameters(OnlineConfig)

EXAMPLE = ("Example: sql finetune-online --from runs/pretrain --game breakout --mode 12 --steps 20000 "
           "--run-dir runs/breakout-m12")


@o.with_setting_options(SETTING_OPTIONS, into="given")
@handles_errors
def finetune_online(
    run_dir: o.RunDir, source: o.From = None, config_file: o.ConfigFile = None, wandb_project: o.Wandb = None,
    as_json: bool = JSON_OPTION, given: dict | None = None,
) -> None:
    """Fine-tune online on an ALE game variant; writes RUN/metrics.jsonl, RUN/learning_curve.csv, RUN/eval/final.json."""
    from sqlcli_core.training.finetune_online import resolve_config, run_online
    config = resolve_config(config_file, given)
    require_path(source, "pre-trained run", hint="pass a run directory written by `sql pretrain`")

    wandb = open_wandb(wandb_project, run_dir, "finetune-online", config.identity_fields())
    report = ProgressReport("finetune-online", unit="agent steps")
    task = report.add("finetune-online", total=config.steps, status="starting")

    def progress(record: dict) -> None:
        report.start()  # at the first record: a refusal before training stays one line
        if record["kind"] == "train":
            ret = record.get("episode_return_mean")
            report.update(task, completed=record["step"], status=(
                f"updates {record['grad_steps']}  eps {record['epsilon']:.3f}  episodes {record['episodes']}  "
                f"return {float('nan') if ret is None else ret:.1f}  loss {record.get('loss', float('nan')):.3f}"))
            if record["step"] >= config.steps:
                report.set_status("final evaluation")
        else:
            report.print(f"step {record['step']:>8}  {'final ' if record.get('final') else ''}eval "
                         f"{record['mean']:.1f} +- {record['std']:.1f} over {len(record['scores'])} episodes")
        if wandb is not None:
            wandb.log(record)

    try:
        summary = run_online(config, run_dir=run_dir, source=source, on_progress=progress)
    finally:
        report.stop()
        if wandb is not None:
            wandb.close()
    summary["learning_curves"] = write_curves(run_dir)
    console.print(f"{summary['game']} mode {summary['mode']} difficulty {summary['difficulty']}: final score "
                  f"{summary['final_mean']:.1f} +- {summary['final_std']:.1f} after {summary['agent_steps']} agent steps "
                  f"({summary['init']}); {summary['eval_file']}", highlight=False)
    emit_summary(summary, as_json)

"""`sql finetune-online`: online RL on a game variant, from a pre-trained torso or from scratch."""

from __future__ import annotations

from typing import Annotated

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.curves import write_curves
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport
from sqlcli.tracking import open_wandb
from sqlcli_core.training.configs import OnlineConfig

Game = Annotated[str | None, o.option(OnlineConfig, "game", panel=o.DATA)]
Mode = Annotated[int | None, o.option(OnlineConfig, "mode", panel=o.DATA)]
Difficulty = Annotated[int | None, o.option(OnlineConfig, "difficulty", panel=o.DATA)]
NumEnvs = Annotated[int | None, o.option(OnlineConfig, "num_envs", panel=o.DATA)]
UpdatePeriod = Annotated[int | None, o.option(OnlineConfig, "update_period", panel=o.DATA)]
MinReplay = Annotated[int | None, o.option(OnlineConfig, "min_replay", panel=o.DATA)]
EpsilonStart = Annotated[float | None, o.option(OnlineConfig, "epsilon_start", panel=o.DATA)]
EpsilonEnd = Annotated[float | None, o.option(OnlineConfig, "epsilon_end", panel=o.DATA)]
EpsilonDecaySteps = Annotated[int | None, o.option(OnlineConfig, "epsilon_decay_steps", panel=o.DATA)]
ReplayCapacity = Annotated[int | None, o.option(OnlineConfig, "replay_capacity", panel=o.DATA)]
EvalEvery = Annotated[int | None, o.option(OnlineConfig, "eval_every", panel=o.EVALUATION)]
EvalEpisodes = Annotated[int | None, o.option(OnlineConfig, "eval_episodes", panel=o.EVALUATION)]

# The options whose unit differs between the two commands (agent steps online, gradient steps offline): each
# command's own help, not the shared one.
Steps = Annotated[int | None, o.option(OnlineConfig, "steps", panel=o.OPTIMISATION)]
CheckpointEvery = Annotated[int | None, o.option(OnlineConfig, "checkpoint_every", panel=o.RUN)]
LogEvery = Annotated[int | None, o.option(OnlineConfig, "log_every", panel=o.RUN)]

EXAMPLE = ("Example: sql finetune-online --from runs/pretrain --game breakout --mode 12 --steps 20000 "
           "--run-dir runs/breakout-m12")


@handles_errors
def finetune_online(
    run_dir: o.RunDir, source: o.From = None, game: Game = None, mode: Mode = None, difficulty: Difficulty = None,
    steps: Steps = None, init: o.Init = None, freeze: o.Freeze = None, num_envs: NumEnvs = None,
    batch_size: o.BatchSize = None, lr: o.Lr = None, adam_eps: o.AdamEps = None, alpha: o.Alpha = None,
    gamma: o.Gamma = None, n_step: o.NStep = None, target_update_period: o.TargetUpdatePeriod = None,
    update_period: UpdatePeriod = None, min_replay: MinReplay = None, epsilon_start: EpsilonStart = None,
    epsilon_end: EpsilonEnd = None, epsilon_decay_steps: EpsilonDecaySteps = None,
    replay_capacity: ReplayCapacity = None, protocol: o.Protocol = None, eval_every: EvalEvery = None,
    eval_episodes: EvalEpisodes = None, final_seeds: o.FinalSeeds = None, final_episodes: o.FinalEpisodes = None,
    eval_max_steps: o.EvalMaxSteps = None, checkpoint_every: CheckpointEvery = None, log_every: LogEvery = None,
    seed: o.Seed = None, config_file: o.ConfigFile = None, wandb_project: o.Wandb = None, as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune online on an ALE game variant; writes RUN/metrics.jsonl, RUN/learning_curve.csv, RUN/eval/final.json."""
    flags = {name: o.plain(value) for name, value in locals().items()}
    from sqlcli_core.training.finetune_online import resolve_config, run_online
    for name in ("run_dir", "source", "config_file", "as_json", "wandb_project"):
        flags.pop(name)
    flags["learning_rate"] = flags.pop("lr")
    config = resolve_config(config_file, flags)
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

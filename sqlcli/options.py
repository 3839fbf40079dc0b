"""Typer options as `Annotated` aliases whose defaults and help come from the config dataclasses.

Every option defaults to None ("not given"), so that a command can merge, in increasing priority: the
dataclass defaults, the `--config` file (TOML or RUN/run.json), and the flags given. The help text is the
field's `setting(...)` help with its default; a field shared by several commands is declared here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sqlcli_core.settings import field_help
from sqlcli_core.training.finetune_offline import OfflineConfig
from sqlcli_core.training.finetune_online import OnlineConfig


def option(cls: type, name: str, *flags: str, **kwargs) -> typer.models.OptionInfo:
    """A typer option for field `name` of `cls` with the field's help (flag: --name-with-dashes); the command's
    signature gives it the default None."""
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=field_help(cls, name), **kwargs)


def shared_help(name: str) -> str:
    """Help of a fine-tuning setting, naming each command's default when they differ."""
    offline, online = field_help(OfflineConfig, name), field_help(OnlineConfig, name)
    if offline == online:
        return offline
    return f"{offline.split(' Default:')[0]} Default: offline {_default(offline)}, online {_default(online)}."


def _default(text: str) -> str:
    return text.split(" Default: ", 1)[1].rstrip(".")


def finetune_option(name: str, *flags: str) -> typer.models.OptionInfo:
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=shared_help(name))


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="Settings file: TOML (flat keys named like the options, '-' or '_') or a run's RUN/run.json "
    "(re-creates its settings); flags override it. Unknown keys are refused.")]

Wandb = Annotated[str | None, typer.Option(
    "--wandb", metavar="PROJECT", help="Also log the metrics to this Weights & Biases project (needs pip install "
    "'scaled-ql[wandb]'; wandb's login and WANDB_MODE apply). Default: off (metrics.jsonl and TensorBoard only).")]

# The options both fine-tuning commands take, declared once.
From = Annotated[Path | None, typer.Option("--from", help="Pre-trained run directory (or RUN/checkpoints/STEP). "
                                           "With --init scratch it only sets the architecture.")]
RunDir = Annotated[Path, typer.Option("--run-dir", help="Output run directory; re-running the same command resumes it.")]
Init = Annotated[str | None, finetune_option("init")]
Freeze = Annotated[str | None, finetune_option("freeze")]
Steps = Annotated[int | None, finetune_option("steps")]
BatchSize = Annotated[int | None, finetune_option("batch_size")]
Lr = Annotated[float | None, finetune_option("learning_rate", "--lr")]
AdamEps = Annotated[float | None, finetune_option("adam_eps")]
Alpha = Annotated[float | None, finetune_option("alpha")]
Gamma = Annotated[float | None, finetune_option("gamma")]
NStep = Annotated[int | None, finetune_option("n_step")]
TargetUpdatePeriod = Annotated[int | None, finetune_option("target_update_period")]
Protocol = Annotated[str | None, finetune_option("protocol")]
FinalSeeds = Annotated[int | None, finetune_option("final_seeds")]
FinalEpisodes = Annotated[int | None, finetune_option("final_episodes")]
EvalMaxSteps = Annotated[int | None, finetune_option("eval_max_steps")]
CheckpointEvery = Annotated[int | None, finetune_option("checkpoint_every")]
LogEvery = Annotated[int | None, finetune_option("log_every")]
Seed = Annotated[int | None, finetune_option("seed")]

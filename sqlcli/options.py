"""Typer options as `Annotated` aliases whose defaults and help come from the config dataclasses.

Every option defaults to None ("not given"), so that a command can merge, in increasing priority: the
dataclass defaults, the `--config` file (TOML or RUN/run.json), and the flags given. The help text is the
field's `setting(...)` help with its default; a field shared by several commands is declared here once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.settings import field_help
from sqlcli_core.training.configs import FREEZE_CHOICES, INITS, OfflineConfig, OnlineConfig

# The help panels options are grouped in (`sql CMD --help`).
DATA, NETWORK, OPTIMISATION, RUN, DISTRIBUTED = "Data", "Network", "Optimisation", "Run", "Distributed"
EVALUATION, OUTPUT = "Evaluation", "Output"
POLICY, SOURCE, TRANSFER, STORE, FIT = "Behaviour policy", "Source", "Transfer", "Store layout", "Fit"


def choices(name: str, values: Iterable[str]) -> type[enum.StrEnum]:
    """An enumeration of the allowed values of an option: `--help` lists them and click refuses others in one
    line. Members are str (`plain` turns them back into the library's strings)."""
    return enum.StrEnum(name, {value: value for value in values})


def plain(value: Any) -> Any:
    """An option's value as the library takes it: a choice's string."""
    return value.value if isinstance(value, enum.Enum) else value


InitChoice = choices("InitChoice", INITS)
FreezeChoice = choices("FreezeChoice", FREEZE_CHOICES)
ProtocolChoice = choices("ProtocolChoice", PROTOCOLS)


def option(cls: type, name: str, *flags: str, panel: str | None = None, **kwargs) -> typer.models.OptionInfo:
    """A typer option for field `name` of `cls` with the field's help (flag: --name-with-dashes) in help panel
    `panel`; the command's signature gives it the default None."""
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=field_help(cls, name),
                        rich_help_panel=panel, **kwargs)


def shared_help(name: str) -> str:
    """Help of a fine-tuning setting, naming each command's default when they differ."""
    offline, online = field_help(OfflineConfig, name), field_help(OnlineConfig, name)
    if offline == online:
        return offline
    return f"{offline.split(' Default:')[0]} Default: offline {_default(offline)}, online {_default(online)}."


def _default(text: str) -> str:
    return text.split(" Default: ", 1)[1].rstrip(".")


def finetune_option(name: str, *flags: str, panel: str | None = None) -> typer.models.OptionInfo:
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=shared_help(name), rich_help_panel=panel)


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="Settings file: TOML (flat keys named like the options, '-' or '_') or a run's RUN/run.json "
    "(re-creates its settings); flags override it. Unknown keys are refused.", rich_help_panel=RUN)]

Wandb = Annotated[str | None, typer.Option(
    "--wandb", metavar="PROJECT", help="Also log the metrics to this Weights & Biases project (needs pip install "
    "'scaled-ql\\[wandb]'; wandb's login and WANDB_MODE apply). Default: off (metrics.jsonl and TensorBoard only).",
    rich_help_panel=RUN)]

# The options both fine-tuning commands take, declared once.
From = Annotated[Path | None, typer.Option("--from", help="Pre-trained run directory (or RUN/checkpoints/STEP). "
                                           "With --init scratch it only sets the architecture.", rich_help_panel=NETWORK)]
RunDir = Annotated[Path, typer.Option("--run-dir", help="Output run directory; re-running the same command resumes it.",
                                      rich_help_panel=RUN)]
Init = Annotated[InitChoice | None, finetune_option("init", panel=NETWORK)]
Freeze = Annotated[FreezeChoice | None, finetune_option("freeze", panel=NETWORK)]
Steps = Annotated[int | None, finetune_option("steps", panel=OPTIMISATION)]
BatchSize = Annotated[int | None, finetune_option("batch_size", panel=OPTIMISATION)]
Lr = Annotated[float | None, finetune_option("learning_rate", "--lr", panel=OPTIMISATION)]
AdamEps = Annotated[float | None, finetune_option("adam_eps", panel=OPTIMISATION)]
Alpha = Annotated[float | None, finetune_option("alpha", panel=OPTIMISATION)]
Gamma = Annotated[float | None, finetune_option("gamma", panel=OPTIMISATION)]
NStep = Annotated[int | None, finetune_option("n_step", panel=OPTIMISATION)]
TargetUpdatePeriod = Annotated[int | None, finetune_option("target_update_period", panel=OPTIMISATION)]
Protocol = Annotated[ProtocolChoice | None, finetune_option("protocol", panel=EVALUATION)]
FinalSeeds = Annotated[int | None, finetune_option("final_seeds", panel=EVALUATION)]
FinalEpisodes = Annotated[int | None, finetune_option("final_episodes", panel=EVALUATION)]
EvalMaxSteps = Annotated[int | None, finetune_option("eval_max_steps", panel=EVALUATION)]
CheckpointEvery = Annotated[int | None, finetune_option("checkpoint_every", panel=RUN)]
LogEvery = Annotated[int | None, finetune_option("log_every", panel=RUN)]
Seed = Annotated[int | None, finetune_option("seed", panel=RUN)]

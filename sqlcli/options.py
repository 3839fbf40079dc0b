"""Typer options as `Annotated` aliases whose defaults and help come from the config dataclasses.

Every option defaults to None ("not given"), so that a command can merge, in increasing priority: the
dataclass defaults, the `--config` file (TOML or RUN/run.json), and the flags given. The help text is the
field's `setting(...)` help with its default; a field shared by several commands is declared here once.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.methods.catalog import method_config_class, method_names
from sqlcli_core.settings import field_flag, field_help, field_type, setting_specs

# The help panels options are grouped in (`sql CMD --help`).
DATA, NETWORK, OPTIMISATION, RUN, DISTRIBUTED = "Data", "Network", "Optimisation", "Run", "Distributed"
EVALUATION, OUTPUT = "Evaluation", "Output"
POLICY, SOURCE, TRANSFER, STORE, FIT = "Behaviour policy", "Source", "Transfer", "Store layout", "Fit"


def choices(name: str, values: Iterable[str]) -> type[enum.StrEnum]:
    """An enumeration of the allowed values of an option: `--help` lists them and click refuses others in one
    line. Members are str (`plain` turns them back into the library's strings)."""
    return enum.StrEnum(name, {value: value for value in values})


ProtocolChoice = choices("ProtocolChoice", PROTOCOLS)  # collect's and eval's --protocol


def plain(value: Any) -> Any:
    """An option's value as the library takes it: a choice's string."""
    return value.value if isinstance(value, enum.Enum) else value




def option(cls: type, name: str, *flags: str, panel: str | None = None, **kwargs) -> typer.models.OptionInfo:
    """A typer option for field `name` of `cls` with the field's help (flag: --name-with-dashes) in help panel
    `panel`; the command's signature gives it the default None."""
    return typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=field_help(cls, name),
                        rich_help_panel=panel, **kwargs)


def setting_parameter(cls: type, name: str, value_type: Any = None) -> inspect.Parameter:
    """The keyword parameter (default None: "not given") of a typer command for flat setting `name` of config
    dataclass `cls` (its own field, or one of a nested config's: `settings.setting_specs`), all read from the
    field's `setting(...)`: its flag, help (with the command's default), help panel, choices (an enumeration:
    `--help` lists them, click refuses others) and value type (a dict, which the library parses from text, is a
    string). value_type: a command's own type for it (a heavy module's choices)."""
    spec = setting_specs(cls)[name]
    field = spec.field
    if value_type is None and field.metadata.get("choices"):
        value_type = choices(f"{spec.owner.__name__}_{name}", field.metadata["choices"])
    if value_type is None:
        declared = field_type(spec.owner, name)
        value_type = str if dict in (declared, *typing.get_args(declared)) else declared
    info = typer.Option(field_flag(field), help=spec.help(), rich_help_panel=spec.panel)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[value_type | None, info])


def setting_parameters(cls: type, *, skip: Iterable[str] = (), types: dict[str, Any] | None = None
                       ) -> list[inspect.Parameter]:
    """One option per CLI setting of `cls` (its `setting(...)` fields and the listed fields of its `nested(...)`
    configs, but those with cli=False and `skip`), in field order: adding a field adds the option."""
    skip, types = set(skip), types or {}
    return [setting_parameter(cls, name, types.get(name)) for name, spec in setting_specs(cls).items()
            if spec.field.metadata.get("cli", True) and name not in skip]


def method_setting_parameters() -> list[inspect.Parameter]:
    """One option per field of every method's own config class (`methods/catalog.py`), in a panel per method."""
    params = []
    for method in method_names():
        cls = method_config_class(method)
        for field in dataclasses.fields(cls) if cls is not None else ():
            param = setting_parameter(cls, field.name)
            info = typing.get_args(param.annotation)[1]
            info.rich_help_panel = info.rich_help_panel or f"Method {method}"
            params.append(param)
    return params


def with_setting_options(parameters: Iterable[inspect.Parameter], into: str) -> Callable[[Callable], Callable]:
    """Add generated options to a typer command: the command's signature gains `parameters`, and the command
    receives their values as one dict {setting name: value or None} in its keyword argument `into`.

    typer reads a command's `__signature__`, so a setting declared once in its dataclass is an option of
    every command that generates it, with no alias, parameter or flags entry written by hand."""
    parameters = list(parameters)
    names = {p.name for p in parameters}

    def decorate(command: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != into]
        clash = names & {p.name for p in own}
        if clash:
            raise ValueError(f"{command.__name__}: generated options clash with its parameters {sorted(clash)}")

        @functools.wraps(command)
        def wrapper(**kwargs):
            generated = {name: plain(kwargs.pop(name, None)) for name in names}
            return command(**kwargs, **{into: generated})

        del wrapper.__wrapped__  # typer must read the signature below, not the command's
        # The generated options first: --help lists panels in the order their first option appears.
        wrapper.__signature__ = inspect.Signature(parameters + own)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters + own}
        return wrapper

    return decorate


ConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="Settings file: TOML (flat keys named like the options, '-' or '_') or a run's RUN/run.json "
    "(re-creates its settings); flags override it. Unknown keys are refused.", rich_help_panel=RUN)]

Wandb = Annotated[str | None, typer.Option(
    "--wandb", metavar="PROJECT", help="Also log the metrics to this Weights & Biases project (needs pip install "
    "'scaled-ql\\[wandb]'; wandb's login and WANDB_MODE apply). Default: off (metrics.jsonl and TensorBoard only).",
    rich_help_panel=RUN)]

# The options both fine-tuning commands take besides their config's fields, declared once.
From = Annotated[Path | None, typer.Option("--from", help="Pre-trained run directory (or RUN/checkpoints/STEP). "
                                           "With --init scratch it only sets the architecture.", rich_help_panel=NETWORK)]
RunDir = Annotated[Path, typer.Option("--run-dir", help="Output run directory; re-running the same command resumes it.",
                                      rich_help_panel=RUN)]

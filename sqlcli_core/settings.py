"""Config dataclasses as the one home of every default: fields with help text, flat settings, TOML files.

Each setting of a config dataclass is declared with `setting(default, help)`: the default lives there, and
so does the one-line help that the CLI shows (the commands read both from the dataclass) and docs/defaults.md
repeats. A run's flat settings (what TOML `--config` files and run.json's `settings` hold) map onto fields by
name; unknown names are refused.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlcli_core.errors import UsageError


def setting(default: Any, help: str, *, tag: str = "ours", flag: str | None = None, panel: str | None = None,
            choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    """A dataclass field with its default, its one-line help and its source tag (paper | ours | ...).

    The CLI generates each command's options from these fields (`sqlcli.options.setting_parameters`):
    flag: the CLI option when it differs from `--field-name` (e.g. `--lr` for learning_rate); panel: the
    `--help` panel it is listed in; choices: the allowed strings (`--help` lists them, others are refused);
    cli: False for a setting only settings files set (no option).
    """
    return dataclasses.field(default=default, metadata={"help": help, "tag": tag, "flag": flag, "panel": panel,
                                                        "choices": choices, "cli": cli})


def field_flag(field: dataclasses.Field) -> str:
    """The CLI option of a config field: its `flag`, else --name-with-dashes."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def field_type(cls: type, name: str) -> Any:
    """The value type a config field declares (`float`, `int | None`, ...), its annotation resolved."""
    return typing.get_type_hints(cls)[name]


def require_finite(config: Any) -> None:
    """Refuse (UsageError, exit 2) a float setting of a config dataclass that is NaN or infinite.

    Called first by every config's `__post_init__`, so that the CLI flags and TOML files share the rule
    (`--lr nan` would otherwise pass every `<= 0` check and train on NaN)."""
    import math

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = field_flag(field)
            raise UsageError(f"{flag} must be a finite number, got {value}", hint="pass a number such as 0.5")


def field_help(cls: type, name: str) -> str:
    """The help text of `cls.name`, ending with its default (as every option's help does)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    text = field.metadata.get("help", "")
    default = field.default
    if default is dataclasses.MISSING or (default is None and "Required" in text):
        return text
    shown = "none" if default is None else (f"{default:,}" if isinstance(default, int) and not isinstance(default, bool)
                                             and abs(default) >= 10_000 else str(default))
    return f"{text} Default: {shown} ({field.metadata.get('tag', 'ours')})."


def field_default(cls: type, name: str) -> Any:
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def read_settings_file(path: str | Path, known: Iterable[str], *, from_run: Callable[[dict], dict],
                       aliases: Mapping[str, str] | None = None) -> dict:
    """Flat settings from a TOML file or a run's run.json; keys may use '-' or '_'. Unknown keys are an error.

    from_run(record) gives the flat settings a run.json records, so `--config RUN/run.json` re-creates
    that run's settings. aliases: other names of a key (the CLI's short flags) -> the setting name.
    """
    path = Path(path)
    known = set(known)
    aliases = dict(aliases or {})
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist",
                         hint="pass an existing TOML file or RUN/run.json to --config") from None
    if path.suffix == ".json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"config file {path} is not valid JSON ({exc.msg})", hint="pass RUN/run.json of a run") from None
        if not isinstance(record, dict) or record.get("kind") != "sql-run":
            raise UsageError(f"{path} is not a run record of sql", hint="pass RUN/run.json of a run, or a TOML file")
        raw = from_run(record)
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {path} is not valid TOML ({exc})", hint="fix the file") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name not in known:
            raise UsageError(f"unknown setting '{key}' in {path}", hint="known settings: " + ", ".join(sorted(known)))
        out[name] = value
    return out


def merge_settings(defaults: Mapping[str, Any], config_file: str | Path | None, flags: Mapping[str, Any], *,
                   from_run: Callable[[dict], dict], aliases: Mapping[str, str] | None = None) -> dict:
    """defaults <- the --config file (TOML or RUN/run.json) <- the flags that were given (not None)."""
    settings = dict(defaults)
    if config_file is not None:
        settings.update(read_settings_file(config_file, defaults, from_run=from_run, aliases=aliases))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a config dataclass (required fields: None)."""
    return {f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(cls)}

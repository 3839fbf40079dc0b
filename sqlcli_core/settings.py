"""Config dataclasses as the one home of every default: fields with help text, flat settings, TOML files.

Each setting of a config dataclass is declared with `setting(default, help)`: the default lives there, and
so does the one-line help that the CLI shows (the commands read both from the dataclass) and docs/defaults.md
repeats. A run's flat settings (what TOML `--config` files and run.json's `settings` hold) map onto fields by
name; unknown names are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

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
    """The value type a config field declares (`float`, `int | None`, ...), its annotation resolved: the type
    the CLI option parses (`sqlcli.options`) and `check_settings` checks, from the same `setting_types`."""
    return setting_types([cls])[name][1]


def require_finite(config: Any) -> None:
    """Refuse (UsageError, exit 2) a float setting of a config dataclass that is NaN or infinite.

    Called first by every config's `__post_init__`, so that the CLI flags and TOML files share the rule
    (`--lr nan` would otherwise pass every `<= 0` check and train on NaN)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            flag = field_flag(field)
            raise UsageError(f"{flag} must be a finite number, got {value}", hint="pass a number such as 0.5")


def field_help(cls: type, name: str) -> str:
    """The help text of `cls.name`, ending with its default (as every option's help does)."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return help_line(field, field.default)


def help_line(field: dataclasses.Field, default: Any, tag: str | None = None) -> str:
    """A field's help text ending with `default` and its source tag (the field's own unless given)."""
    text = field.metadata.get("help", "")
    if default is dataclasses.MISSING or (default is None and "Required" in text):
        return text
    shown = "none" if default is None else (f"{default:,}" if isinstance(default, int) and not isinstance(default, bool)
                                             and abs(default) >= 10_000 else str(default))
    return f"{text} Default: {shown} ({tag or field.metadata.get('tag', 'ours')})."


def field_default(cls: type, name: str) -> Any:
    return {f.name: f for f in dataclasses.fields(cls)}[name].default


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def read_settings_file(path: str | Path, known: Iterable[str], *, from_run: Callable[[dict], dict],
                       aliases: Mapping[str, str] | None = None, classes: Sequence[type] = (),
                       normalize: Callable[[str, Any], Any] | None = None) -> dict:
    """Flat settings from a TOML file or a run's run.json; keys may use '-' or '_'. Unknown keys are an error.

    from_run(record) gives the flat settings a run.json records, so `--config RUN/run.json` re-creates
    that run's settings. aliases: other names of a key (the CLI's short flags) -> the setting name.
    classes: the config dataclasses that declare the settings; each value is checked against its field's
    type (`check_settings`) after normalize(name, value) has turned an alternative spelling into the
    field's own (e.g. `bf16 = true` -> compute_dtype "bfloat16").
    """
    path = Path(path)
    known = set(known)
    aliases = {**flag_aliases(classes), **(aliases or {})}
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist",
                         hint="pass an existing TOML file or RUN/run.json to --config") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a directory", hint="pass a TOML file or RUN/run.json") from None
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
    out, spelled = {}, {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name not in known:
            raise UsageError(f"unknown setting '{key}' in {path}", hint="known settings: " + ", ".join(sorted(known)))
        out[name] = normalize(name, value) if normalize is not None else value
        spelled[name] = key
    return check_settings(classes, out, source=path, spelled=spelled)


def merge_settings(defaults: Mapping[str, Any], config_file: str | Path | None, flags: Mapping[str, Any], *,
                   from_run: Callable[[dict], dict], aliases: Mapping[str, str] | None = None,
                   classes: Sequence[type] = (), normalize: Callable[[str, Any], Any] | None = None) -> dict:
    """defaults <- the --config file (TOML or RUN/run.json) <- the flags that were given (not None).

    Both the file's values and the flags are checked against the types of `classes` (`check_settings`)
    before anything runs: one rule for every source."""
    return {**defaults, **given_settings(defaults, config_file, flags, from_run=from_run, aliases=aliases,
                                         classes=classes, normalize=normalize)}


@contextlib.contextmanager
def naming_settings_file(config_file: str | Path | None):
    """A UsageError raised while the config is built from settings a --config file helped give (a range or a
    combination refused, e.g. `steps = 0` in the file) names that file: its message names the flag, which the
    user may not have typed."""
    try:
        yield
    except UsageError as exc:
        if config_file is None or str(config_file) in exc.message:
            raise
        raise UsageError(f"{exc.message} (settings read from {config_file})", hint=exc.hint) from None


def given_settings(known: Iterable[str], config_file: str | Path | None, flags: Mapping[str, Any], *,
                   from_run: Callable[[dict], dict], aliases: Mapping[str, str] | None = None,
                   classes: Sequence[type] = (), normalize: Callable[[str, Any], Any] | None = None) -> dict:
    """The settings given explicitly: the --config file's (TOML or RUN/run.json) <- the flags given (not None),
    each checked against its declared type; `merge_settings` puts them over the defaults."""
    settings = {}
    if config_file is not None:
        settings.update(read_settings_file(config_file, known, from_run=from_run, aliases=aliases,
                                           classes=classes, normalize=normalize))
    given = {k: normalize(k, v) if normalize is not None else v for k, v in flags.items() if v is not None}
    settings.update(check_settings(classes, given))
    return settings


# ---------------------------------------------------------------------------------------------------------
# Typed settings: every source (flags, TOML, RUN/run.json) is checked against the declared field types.


def setting_types(classes: Sequence[type]) -> dict[str, tuple[dataclasses.Field, Any]]:
    """{flat setting name: (field, resolved type)} of config dataclasses, the first class declaring a name
    winning. Fields that hold a nested config dataclass are not flat settings and are left out."""
    out: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            hint = hints.get(field.name, Any)
            if field.name in out or any(dataclasses.is_dataclass(t) for t in _members(hint)):
                continue
            out[field.name] = (field, hint)
    return out


def flag_aliases(classes: Sequence[type]) -> dict[str, str]:
    """{flag name with '_' (e.g. 'lr', 'slice'): setting name} for fields whose CLI flag differs from their name."""
    out = {}
    for name, (field, _) in setting_types(classes).items():
        flag = field.metadata.get("flag")
        if flag:
            out[flag.lstrip("-").replace("-", "_")] = name
    return out


def check_settings(classes: Sequence[type], values: Mapping[str, Any], source: str | os.PathLike | None = None, *,
                   spelled: Mapping[str, str] | None = None) -> dict:
    """`values` with each one checked against its field's declared type; a UsageError (exit 2) otherwise.

    The rules: a bool field takes only true/false; an int field a whole number (not a bool; 20.0 becomes 20,
    20.7 is refused); a float field any number but a bool (ints become floats); a str field a string (or
    path); `X | None` also None; a Literal or Enum field one of its choices (named in the error); a tuple
    field a list or tuple of its element type. Other types (tables such as game_weights) are left to their
    own parsers. source: the file the values came from, named in the error (None: the command line, where
    the key is named as its flag); spelled: the key as the file wrote it.
    """
    types_by_name = setting_types(classes)
    out = dict(values)
    for name, value in values.items():
        if name not in types_by_name:
            continue
        field, hint = types_by_name[name]
        ok, converted = _conform(value, hint)
        if ok:
            out[name] = converted
            continue
        shown = json.dumps(value) if isinstance(value, (bool, int, float, str)) or value is None else repr(value)
        expected = _expected(hint)
        if source is None:
            flag = field.metadata.get("flag") or "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be {expected}, got {shown}",
                             hint=f"pass {flag} {_example(field, hint)}".rstrip())
        key = (spelled or {}).get(name, name)
        raise UsageError(f"setting '{key}' in {source} must be {expected}, got {shown}",
                         hint=f"write {key} = {_example(field, hint, toml=True)} in {Path(source).name}")
    return out


def _members(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (X | Y, Optional[X]); the type itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether `value` is a `hint`, the value as the field holds it)."""
    members = _members(hint)
    if len(members) > 1:
        if value is None and type(None) in members:
            return True, None
        for member in members:
            if member is not type(None):
                ok, converted = _conform(value, member)
                if ok:
                    return True, converted
        return False, value
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True, value
    if origin is Literal:
        choices = typing.get_args(hint)
        plain = value.value if isinstance(value, enum.Enum) else value
        return plain in choices and not isinstance(plain, bool), plain
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        plain = value.value if isinstance(value, enum.Enum) else value
        return plain in {m.value for m in hint}, plain
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return True, int(value)
        return False, value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if hint is str:
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, os.PathLike):
            return True, os.fspath(value)
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(hint)
        element_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(element_types) != len(value):
            return False, value
        items = [_conform(v, t) for v, t in zip(value, element_types)]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    return True, value  # a table or another structure: its own parser checks it


def _expected(hint: Any) -> str:
    """`hint` in words, for the error line."""
    members = _members(hint)
    if len(members) > 1:
        words = [_expected(m) for m in members if m is not type(None)]
        return " or ".join(words) + (" (or left out: none)" if type(None) in members else "")
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(c) for c in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values ({', '.join(_expected(a) for a in args)})"
    return {bool: "true or false", int: "an integer (a whole number)", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _example(field: dataclasses.Field, hint: Any, *, toml: bool = False) -> str:
    """An example value of the field: its default when it has one, written as a TOML value or a flag value."""
    default = field.default
    if default is None or default is dataclasses.MISSING:
        members = [m for m in _members(hint) if m is not type(None)]
        base = members[0] if members else str
        default = {bool: True, int: 1, float: 0.5, str: "..."}.get(base, "...")
        if typing.get_origin(base) is Literal:
            default = typing.get_args(base)[0]
    if isinstance(default, enum.Enum):
        default = default.value
    if toml:
        if isinstance(default, tuple):
            return json.dumps(list(default))
        return json.dumps(default)
    if isinstance(default, bool):
        return ""  # a flag's presence
    return str(default)


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a config dataclass (required fields: None)."""
    return {f.name: None if f.default is dataclasses.MISSING else f.default for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------------------------
# Nested configs: a command's config that holds another config with the command's own defaults (the
# fine-tuning commands' `learner: LearnerConfig`). Its listed fields are flat settings of the command.


def nested(default: Any, *, options: Sequence[str], panel: str | None = None) -> Any:
    """A field holding the config dataclass instance `default`: this command's defaults of a nested config.

    options: the nested fields that are this command's flat settings (its options, settings-file keys and the
    flat form of its run.json); a listed field that holds a config dataclass itself (the learner's
    `method_config`) contributes every field of it. panel: the --help panel of those that name none."""
    return dataclasses.field(default=default, metadata={"nested": tuple(options), "panel": panel})


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """One flat setting of a config dataclass: the field that declares it (help, flag, choices, type: in class
    `owner`), the command's default, `path` (the nested fields it lives in; () for the class's own) and the
    --help panel."""

    name: str
    field: dataclasses.Field
    owner: type
    default: Any
    path: tuple[str, ...]
    panel: str | None

    def help(self) -> str:
        """The field's help with this command's default; a default the command changed is its own ("ours")."""
        own = self.default != self.field.default
        return help_line(self.field, self.default, "ours" if own else None)


def setting_specs(cls: type) -> dict[str, SettingSpec]:
    """{flat setting name: SettingSpec} of a config dataclass, in field order: its own `setting(...)` fields and
    the listed fields of its `nested(...)` ones. A name declared twice is refused (one flat namespace)."""
    out: dict[str, SettingSpec] = {}

    def add(spec: SettingSpec) -> None:
        if spec.name in out:
            raise ValueError(f"{cls.__name__}: setting {spec.name!r} is declared twice")
        out[spec.name] = spec

    def walk(instance: Any, names: Sequence[str], path: tuple[str, ...], panel: str | None) -> None:
        fields = {f.name: f for f in dataclasses.fields(instance)}
        for name in names:
            value = getattr(instance, name)
            if dataclasses.is_dataclass(value):
                walk(value, [f.name for f in dataclasses.fields(value)], path + (name,), panel)
            elif "help" in fields[name].metadata:
                add(SettingSpec(name, fields[name], type(instance), value, path,
                                fields[name].metadata.get("panel") or panel))

    for field in dataclasses.fields(cls):
        if "nested" in field.metadata:
            walk(field.default, field.metadata["nested"], (field.name,), field.metadata.get("panel"))
        elif "help" in field.metadata:
            add(SettingSpec(field.name, field, cls, field.default, (), field.metadata.get("panel")))
    return out


def spec_defaults(cls: type) -> dict[str, Any]:
    """{flat setting: this command's default} of a config dataclass with nested configs."""
    return {name: spec.default for name, spec in setting_specs(cls).items()}


def spec_classes(cls: type) -> tuple[type, ...]:
    """The dataclasses that declare `cls`'s flat settings (their types check the values: `check_settings`)."""
    return tuple(dict.fromkeys([cls, *(spec.owner for spec in setting_specs(cls).values())]))


def compose(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of `cls` from flat settings: its own fields by name, each nested config its default with the
    given values replaced (and so validated by the nested class). Settings left out keep their defaults."""

    def replaced(instance: Any, names: Sequence[str]) -> Any:
        changes = {}
        for name in names:
            value = getattr(instance, name)
            if dataclasses.is_dataclass(value):
                changes[name] = replaced(value, [f.name for f in dataclasses.fields(value)])
            elif name in values:
                changes[name] = values[name]
        return dataclasses.replace(instance, **changes) if changes else instance

    kwargs = {}
    for field in dataclasses.fields(cls):
        if "nested" in field.metadata:
            kwargs[field.name] = replaced(field.default, field.metadata["nested"])
        elif field.name in values:
            kwargs[field.name] = values[field.name]
    return cls(**kwargs)


def flatten(cls: type, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings from a config's dict form (`dataclasses.asdict`, as run.json records it): each nested
    config's listed fields lifted to the top (a nested config dict within, e.g. method_config, entirely);
    unlisted nested fields are dropped. A flat record (older runs) comes back as it is."""
    out = dict(recorded)

    def lift(d: Mapping[str, Any], names: Sequence[str]) -> None:
        for name in names:
            if isinstance(d.get(name), Mapping):
                lift(d[name], list(d[name]))
            elif name in d:
                out[name] = d[name]

    for field in dataclasses.fields(cls):
        if "nested" in field.metadata and isinstance(out.get(field.name), Mapping):
            lift(out.pop(field.name), field.metadata["nested"])
    return out

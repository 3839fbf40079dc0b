"""The method names and where each method lives: a name -> lazy loader table, free of JAX.

Listing the methods (`--help`, `--method` choices, settings files) needs no JAX: each entry names the module
that builds and `register`s the method, imported on the first `get_method(name)`. A new method is one line
here (its module, one-line summary and, if it has settings of its own, its config class) plus its module.

A method's own settings are a frozen dataclass of `setting(...)` fields ("module:Class" in `config`). Put it in
a module that does not import JAX (the built-in ones are in `methods/configs.py`) to keep `--help` fast; in the
method's own module it works too, at the cost of importing JAX for `--help`. Its fields become flat settings
(`--alpha`, TOML `alpha = ...`), are recorded in run.json under config.learner.method_config and re-created on
resume, with no other edit.
"""

from __future__ import annotations

import dataclasses
import importlib

from sqlcli_core.errors import UsageError

DEFAULT_METHOD = "scaled-ql"


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """Where a method lives: `module` registers it when imported; `summary` is its line in --help; `config`
    ("module:Class", or None for a method without settings of its own) its config dataclass."""

    module: str
    summary: str
    config: str | None = None


METHODS: dict[str, MethodEntry] = {
    "scaled-ql": MethodEntry("sqlcli_core.methods.scaled_ql", "Scaled QL: C51 TD cross-entropy on n-step targets + "
                             "alpha * CQL (alpha 0: plain C51)", config="sqlcli_core.methods.configs:ScaledQLConfig"),
    "bc": MethodEntry("sqlcli_core.methods.bc", "Behaviour cloning: cross-entropy of the data action over the "
                      "game's actions (no TD, no target)"),
    "c51": MethodEntry("sqlcli_core.methods.c51", "C51: distributional TD on n-step targets, no conservative term"),
    "dt": MethodEntry("sqlcli_core.methods.decision_transformer", "Multi-game Decision Transformer: "
                      "return-conditioned sequence model, expert action inference (--arch dt-*)",
                      config="sqlcli_core.methods.configs:DTConfig"),
}


def add_method(name: str, entry: MethodEntry) -> None:
    """Make a method known by name (tests and plugins; the built-in ones are the table above)."""
    if name in METHODS and METHODS[name] != entry:
        raise ValueError(f"method {name!r} is already known from {METHODS[name].module}")
    METHODS[name] = entry


def method_names() -> tuple[str, ...]:
    """Known method names: the default first, then in table order."""
    return tuple(sorted(METHODS, key=lambda name: name != DEFAULT_METHOD))


def method_entry(name: str | None) -> MethodEntry:
    """The entry of `name` (None: the default); a UsageError names the choices."""
    name = DEFAULT_METHOD if name is None else name
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method '{name}'", hint="choose one of " + ", ".join(method_names())) from None


def load_method_module(name: str | None) -> None:
    """Import the module that registers `name` (it imports JAX: only when the method is used)."""
    importlib.import_module(method_entry(name).module)


def method_config_class(name: str | None) -> type | None:
    """The config dataclass of method `name` (None when it has no settings of its own), imported on first use."""
    location = method_entry(name).config
    if location is None:
        return None
    module, _, cls = location.partition(":")
    return getattr(importlib.import_module(module), cls)


def method_setting_owners() -> dict[str, str]:
    """{setting name: method} over every known method's config class; a name two methods declare is refused
    (the flat settings and the CLI options share one namespace)."""
    owners: dict[str, str] = {}
    for name in method_names():
        cls = method_config_class(name)
        for field in dataclasses.fields(cls) if cls is not None else ():
            if field.name in owners:
                raise ValueError(f"methods {owners[field.name]} and {name} both declare setting {field.name!r}")
            owners[field.name] = name
    return owners


def make_method_config(name: str | None, values: dict | None = None) -> object | None:
    """Method `name`'s config from `values` (keys that are not its fields are ignored: the settings of other
    methods); None for a method without settings of its own."""
    cls = method_config_class(name)
    if cls is None:
        return None
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (values or {}).items() if k in own})

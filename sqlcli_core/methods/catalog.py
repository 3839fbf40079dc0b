"""The method names and where each method lives: a name -> lazy loader table, free of JAX.

Listing the methods (`--help`, `--method` choices, settings files) needs no JAX: each entry names the module
that builds and `register`s the method, imported on the first `get_method(name)`. A new method is one line
here (its module and one-line summary) plus its module.
"""

from __future__ import annotations

import dataclasses
import importlib

from sqlcli_core.errors import UsageError

DEFAULT_METHOD = "scaled-ql"


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """Where a method lives: `module` registers it when imported; `summary` is its line in --help."""

    module: str
    summary: str


METHODS: dict[str, MethodEntry] = {
    "scaled-ql": MethodEntry("sqlcli_core.methods.scaled_ql", "Scaled QL: C51 TD cross-entropy on n-step targets + "
                             "alpha * CQL (alpha 0: plain C51)"),
    "bc": MethodEntry("sqlcli_core.methods.bc", "Behaviour cloning: cross-entropy of the data action over the "
                      "game's actions (no TD, no target)"),
    "c51": MethodEntry("sqlcli_core.methods.c51", "C51: distributional TD on n-step targets, no conservative term"),
    "dt": MethodEntry("sqlcli_core.methods.decision_transformer", "Multi-game Decision Transformer: "
                      "return-conditioned sequence model, expert action inference (--arch dt-*)"),
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

"""Training methods: pure losses (`losses`), the method registry (`registry`: what a method is) and the
name -> module table (`catalog`: listing the methods needs no JAX; a method's module is imported, and so
registered, on the first `get_method(name)`).

The names below are this package's public ones; those of `registry` are loaded on first use (PEP 562), so
that `from sqlcli_core.methods import method_names` stays free of JAX.
"""

from __future__ import annotations

from sqlcli_core.methods.catalog import DEFAULT_METHOD, method_names

_FROM_REGISTRY = ("LossSetup", "Method", "get_method", "greedy_output", "register")


def __getattr__(name: str):
    if name in _FROM_REGISTRY:
        from sqlcli_core.methods import registry  # imports JAX and Haiku: only when a method is used

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_METHOD", "LossSetup", "Method", "get_method", "greedy_output", "method_names", "register"]

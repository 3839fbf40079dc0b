"""Training methods: pure losses (`losses`) and the registry that names each method's loss, network
outputs, batch kind and metrics (`registry`). Importing this package registers the built-in methods."""

from sqlcli_core.methods import bc, c51, decision_transformer, scaled_ql  # noqa: F401  (each registers its method)
from sqlcli_core.methods.registry import (
    DEFAULT_METHOD,
    LossSetup,
    Method,
    get_method,
    greedy_output,
    method_names,
    register,
)

__all__ = ["DEFAULT_METHOD", "LossSetup", "Method", "get_method", "greedy_output", "method_names", "register"]

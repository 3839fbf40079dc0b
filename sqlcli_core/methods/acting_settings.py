"""How a trained policy chooses its actions in evaluation: the settings `sql eval` exposes and records.

Two modes (`ACTING_MODES`): "greedy" plays the argmax of the policy's acting output; "sample" draws from it
(the softmax of a BC policy's logits; the Decision Transformer's expert action inference). Each method lists
the modes it supports, its default first (`Method.acting_modes`): scaled-ql and c51 act greedily on Q
[paper]; bc greedily [ours: the Q-methods' acting, so that BC and Scaled QL differ only in their loss; `sample`
reproduces the data's own noise]; dt samples [authors' code].

`DTActing` holds the Decision Transformer's expert action inference. Defaults are read from the authors'
public notebook (google-research `multi_game_dt`, `optimal_action` as their notebook calls it): 128 return
samples at logit multiplier 0.75 (their "return_temperature" multiplies the logits, so it is an inverse
temperature), the best of them kept, no optimality reweighting (their `opt_weight` 0: our `kappa`), actions
drawn at multiplier 1 from the logits above the 50th percentile of the game's action logits. This module
imports nothing heavy (the CLI reads its defaults for `--help`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlcli_core.errors import UsageError
from sqlcli_core.settings import require_finite, setting

ACTING_MODES = ("greedy", "sample")


@dataclasses.dataclass(frozen=True)
class DTActing:
    """The Decision Transformer's expert action inference (methods.decision_transformer.act_on_context).

    Per step: draw `return_samples` returns from beta_R * (log P(R | context) + kappa * u(R)) (u: the bin's
    place in [0, 1]) and condition on the largest; then draw the action from beta_a * logits over the game's
    actions whose logit lies above the (1 - action_top_fraction) quantile of them (the argmax is always kept;
    fraction 1: no filter), or take the argmax with `greedy_action`.
    """

    return_samples: int = setting(128, "Returns drawn per step; the largest conditions the action.",
                                  tag="authors' code")
    return_inverse_temperature: float = setting(0.75, "Multiplier of the return logits before drawing (their "
                                                "'return_temperature').", tag="authors' code")
    kappa: float = setting(0.0, "Optimality weight: return logits + kappa * u(R), u in [0, 1] over the bins (the "
                           "paper's expert reweighting; 0 = the model's own return distribution).",
                           tag="authors' code: opt_weight 0")
    action_inverse_temperature: float = setting(1.0, "Multiplier of the action logits before drawing.",
                                                tag="authors' code")
    action_top_fraction: float = setting(0.5, "Draw actions only among this top fraction of the game's action "
                                         "logits (above the 1 - fraction quantile); 1 = no filter.",
                                         tag="authors' code: top percentile 50")
    greedy_action: bool = setting(False, "Take the argmax action instead of drawing it (--acting greedy).",
                                  tag="authors' code samples")

    def __post_init__(self):
        require_finite(self)
        if self.return_samples < 1:
            raise UsageError(f"return_samples must be at least 1, got {self.return_samples}",
                             hint="the authors' notebook draws 128")
        if self.kappa < 0 or self.return_inverse_temperature <= 0 or self.action_inverse_temperature <= 0:
            raise UsageError("kappa must be >= 0 and the inverse temperatures > 0",
                             hint="the authors' notebook: kappa 0, return 0.75, action 1")
        if not 0.0 < self.action_top_fraction <= 1.0:
            raise UsageError(f"action_top_fraction must lie in (0, 1], got {self.action_top_fraction}",
                             hint="0.5 keeps the top half (the authors' notebook); 1 keeps every action")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_mode(method: str, modes: tuple[str, ...], asked: str | None) -> str:
    """The acting mode of a run of `method` (supporting `modes`, default first): `asked`, or the default."""
    if asked is None:
        return modes[0]
    if asked not in ACTING_MODES:
        raise UsageError(f"unknown acting mode '{asked}'", hint="choose greedy or sample")
    if asked not in modes:
        raise UsageError(f"runs of method {method} act {' or '.join(modes)}, not {asked}",
                         hint="drop --acting (sampling from Q-values is no policy the paper evaluates)")
    return asked


def acting_block(method: str | None, mode: str, default: bool, dt: DTActing | None) -> dict[str, Any]:
    """What the eval result records under policy.acting (and what its settings digest covers)."""
    block: dict[str, Any] = {"mode": mode, "method_default": default}
    if dt is not None:
        block["dt"] = dataclasses.replace(dt, greedy_action=mode == "greedy").to_dict()
    return block


__all__ = ["ACTING_MODES", "DTActing", "acting_block", "resolve_mode"]

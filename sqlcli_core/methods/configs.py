"""The built-in methods' own settings, free of JAX so that `--help`, settings files and run.json readers load
them at once. A method's config class is a frozen dataclass of `setting(...)` fields that its catalog line in
`methods/catalog.py` names ("module:Class"); the learner carries an instance (`LearnerConfig.method_config`),
run.json records it under config.learner.method_config, and `sql pretrain` shows each field as an option.
"""

from __future__ import annotations

import dataclasses

from sqlcli_core.errors import UsageError
from sqlcli_core.settings import require_finite, setting


@dataclasses.dataclass(frozen=True)
class ScaledQLConfig:
    """Scaled QL's own setting: the weight of the conservative (CQL) term."""

    alpha: float = setting(0.05, "CQL weight of scaled-ql (0 = plain C51).", tag="ours")

    def __post_init__(self):
        require_finite(self)
        if self.alpha < 0:
            raise UsageError(f"CQL alpha must be >= 0, got {self.alpha}", hint="e.g. --alpha 0.05")


@dataclasses.dataclass(frozen=True)
class DTConfig:
    """The Decision Transformer's own training settings: the weights of its three token cross-entropies in the
    loss. Its shape is the network's (`networks.config.DecisionTransformerConfig`, part of the run identity) and
    its acting is `methods.acting_settings.DTActing`."""

    action_loss_weight: float = setting(1.0, "Weight of the action tokens' cross-entropy in the dt loss.",
                                        tag="ours: equal weights")
    return_loss_weight: float = setting(1.0, "Weight of the return tokens' cross-entropy in the dt loss.",
                                        tag="ours: equal weights")
    reward_loss_weight: float = setting(1.0, "Weight of the reward tokens' cross-entropy in the dt loss.",
                                        tag="ours: equal weights")

    def __post_init__(self):
        require_finite(self)
        if min(self.weights()) < 0 or max(self.weights()) <= 0:
            raise UsageError(f"the dt loss weights must be >= 0 and not all 0, got {self.weights()}",
                             hint="e.g. --action-loss-weight 1 --return-loss-weight 1 --reward-loss-weight 1")

    def weights(self) -> tuple[float, float, float]:
        """(action, return, reward): the order `methods.decision_transformer.make_loss_fn` takes them in."""
        return (self.action_loss_weight, self.return_loss_weight, self.reward_loss_weight)

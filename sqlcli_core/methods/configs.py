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

"""A toy method with a setting of its own, as a contributor would add one (tests/test_method_settings.py).

Scaled QL's loss with the conservative term weighted by the method's own `toy_weight` instead of `alpha`: one
config dataclass, one `register(...)`; the catalog line is added by the test (`catalog.add_method`).
"""

from __future__ import annotations

import dataclasses

from sqlcli_core.methods.registry import register
from sqlcli_core.methods.scaled_ql import SCALED_QL, make_loss_fn
from sqlcli_core.settings import setting

ENTRY = ("tests.toy_method", "Toy: C51 + toy_weight * CQL", "tests.toy_method:ToyConfig")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    toy_weight: float = setting(0.25, "Weight of the toy method's conservative term.", tag="ours")


TOY = register(dataclasses.replace(
    SCALED_QL, name="toy", summary=ENTRY[1],
    make_loss=lambda setup: make_loss_fn(setup.network.apply, setup.mask, setup.network_config.support(),
                                         setup.learner_config.gamma, setup.learner_config.method_config.toy_weight),
))

"""Plain C51 (Bellemare et al. 2017) as its own method: Scaled QL's TD loss without the CQL term.

The worked example of docs/architecture.md "How to extend": a method is one module that registers a
`Method`, plus one import line in `methods/__init__.py`.
"""

from __future__ import annotations

import dataclasses

from sqlcli_core.methods.registry import register
from sqlcli_core.methods.scaled_ql import SCALED_QL, make_loss_fn

C51 = register(dataclasses.replace(
    SCALED_QL,
    name="c51",
    summary="C51: distributional TD on n-step targets, no conservative term",
    metrics=("td_loss", "q_data", "q_other", "q_max"),
    progress=(("td_loss", "td", ".4f"), ("q_data", "Q", ".3f")),
    learner_fields=("gamma", "target_update_period"),
    make_loss=lambda setup: make_loss_fn(setup.network.apply, setup.mask, setup.network_config.support(),
                                         setup.learner_config.gamma, cql_alpha=0.0),
))

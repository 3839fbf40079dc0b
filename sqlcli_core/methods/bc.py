"""Behaviour cloning: the Scaled QL torso, neck and per-game heads, trained to predict the data action.

The heads are policy heads (one logit per action of the game); the loss is the cross-entropy of the data
action under a softmax over the sample's own game's actions (`losses.behaviour_cloning_loss`). No TD, no
target network, no discount: the n-step fields of the batch are not read. Acting: argmax of the logits over
the game's own actions by default, or draws from their softmax (`sql eval --acting sample`); with the
evaluation protocol's epsilon, as for every policy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from sqlcli_core.methods import losses
from sqlcli_core.methods.registry import LossSetup, Method, register


def _make_loss(setup: LossSetup) -> Callable:
    apply = setup.network.apply
    mask = jnp.asarray(setup.mask)

    def loss_fn(params, target_params, batch):
        del target_params  # behaviour cloning has no target network
        logits_tm1 = apply(params, batch.state, batch.game).logits
        return losses.behaviour_cloning_loss(logits_tm1, batch.action, batch.game, mask)

    return loss_fn


BC = register(Method(
    name="bc",
    summary="Behaviour cloning: cross-entropy of the data action over the game's actions (no TD, no target)",
    batch_kind="transitions",
    head="policy",
    acting_output="logits",
    metrics=("ce_loss", "accuracy", "entropy"),
    per_game_metric="ce_loss",
    progress=(("accuracy", "acc", ".3f"), ("entropy", "H", ".3f")),
    uses_target_network=False,
    learner_fields=(),
    make_loss=_make_loss,
    # greedy by default [ours]: the Q-methods' acting, so BC and Scaled QL differ only in the loss; `sample`
    # draws from the softmax of the logits (the data's own noise)
    acting_modes=("greedy", "sample"),
))

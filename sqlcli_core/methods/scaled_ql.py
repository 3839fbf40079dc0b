"""Scaled QL (Kumar et al. 2023): C51 on n-step targets plus a CQL term, per game's actions.

The loss is `losses.scaled_ql_loss`; this module binds it to the network and the batch, and registers the
method. Acting: argmax of the expected returns (`q_values` of the categorical heads) over the game's actions.
"""

from __future__ import annotations

from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.methods import losses
from sqlcli_core.methods.registry import LossSetup, Method, register


def make_loss_fn(apply: Callable, mask: jax.Array, support: jax.Array, gamma: float,
                 cql_alpha: float) -> Callable[[hk.Params, hk.Params, TransitionBatch],
                                               tuple[jax.Array, dict[str, jax.Array]]]:
    """loss_fn(params, target_params, batch) -> (loss, aux) for jax.value_and_grad(..., has_aux=True).

    apply: build_network(..., head="categorical").apply; mask (G, A) from networks.action_mask; support (K,)
    from NetworkConfig.support(); the discount is `batch.discount(gamma)`, gamma**steps * (1 - done).
    """
    mask = jnp.asarray(mask)
    support = jnp.asarray(support, jnp.float32)

    def loss_fn(params: hk.Params, target_params: hk.Params, batch: TransitionBatch):
        logits_tm1 = apply(params, batch.state, batch.game).logits
        logits_t = apply(target_params, batch.next_state, batch.game).logits
        discount_t = batch.discount(gamma)
        return losses.scaled_ql_loss(logits_tm1, logits_t, batch.action, batch.reward.astype(jnp.float32),
                                     discount_t, batch.game, mask, support, cql_alpha)

    return loss_fn


def _make_loss(setup: LossSetup) -> Callable:
    cfg = setup.learner_config
    return make_loss_fn(setup.network.apply, setup.mask, setup.network_config.support(), cfg.gamma, cfg.alpha)


SCALED_QL = register(Method(
    name="scaled-ql",
    summary="Scaled QL: C51 TD cross-entropy on n-step targets + alpha * CQL (alpha 0: plain C51)",
    batch_kind="transitions",
    head="categorical",
    acting_output="q_values",
    metrics=("td_loss", "cql_loss", "q_data", "q_other", "q_max"),
    per_game_metric="td_loss",
    progress=(("td_loss", "td", ".4f"), ("cql_loss", "cql", ".3f"), ("q_data", "Q", ".3f")),
    uses_target_network=True,
    learner_fields=("alpha", "gamma", "target_update_period"),
    make_loss=_make_loss,
))

"""The Scaled QL objective: C51 TD cross-entropy on n-step targets plus a CQL term, per game's actions.

Shapes: B batch, A = A_max (the largest action set of the games), K atoms, G games. Every action-indexed
array is padded to A; `mask` (G, A) says which actions exist in each game, and padded actions never enter
the target's greedy choice, the CQL logsumexp or any gradient.

Per sample of game g (docs/defaults.md, "The objective"):
    a*   = argmax_{a in A_g} sum_j z_j p_target(s', a)_j                   (target network, own actions)
    m    = Proj_z( R_n + gamma^steps (1 - done) z , p_target(s', a*) )     (clipped, linear projection)
    td   = - sum_j m_j log softmax(logits(s, a_data))_j
    Q(s, a) = sum_j z_j softmax(logits(s, a))_j
    cql  = logsumexp_{a in A_g} Q(s, a) - Q(s, a_data)
    loss = mean_b (td + alpha * cql)
"""

from __future__ import annotations

from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import rlax

from sqlcli_core.data.batch import TransitionBatch


def categorical_mean(logits: jax.Array, support: jax.Array) -> jax.Array:
    """Q = E[Z]: (..., K) logits, (K,) support -> (...) float32."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


def projected_target(next_logits: jax.Array, reward: jax.Array, discount: jax.Array,
                     next_mask: jax.Array, support: jax.Array) -> jax.Array:
    """The C51 target distribution, without gradient.

    next_logits (B, A, K) of the target network at the n-step next state; reward (B,) n-step return;
    discount (B,) gamma^steps * (1 - done); next_mask (B, A) bool real actions; support (K,).
    Returns (B, K) probabilities on `support`.
    """
    next_logits = jax.lax.stop_gradient(next_logits)
    next_q = jnp.where(next_mask, categorical_mean(next_logits, support), -jnp.inf)  # (B, A)
    greedy = jnp.argmax(next_q, axis=-1)  # (B,)
    next_probs = jax.nn.softmax(jnp.take_along_axis(next_logits, greedy[:, None, None], axis=1)[:, 0], axis=-1)
    shifted = reward[:, None] + discount[:, None] * support[None, :]  # (B, K), clipped by the projection
    project = jax.vmap(rlax.categorical_l2_project, in_axes=(0, 0, None))
    return jax.lax.stop_gradient(project(shifted, next_probs, support))


def scaled_ql_loss(logits: jax.Array, next_logits: jax.Array, action: jax.Array, reward: jax.Array,
                   discount: jax.Array, game: jax.Array, mask: jax.Array, support: jax.Array,
                   cql_alpha: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scaled QL loss from network outputs.

    logits (B, A, K) online network at s; next_logits (B, A, K) target network at s_{t+steps};
    action (B,) int32 data action (index in the game's action set); reward (B,) float32 n-step return;
    discount (B,) float32 = gamma^steps * (1 - done); game (B,) int32 in [0, G); mask (G, A) bool
    (networks.action_mask); support (K,) float32 atoms; cql_alpha the CQL weight (0 = plain C51).

    Returns (loss, aux): loss the scalar mean over the batch of td + alpha * cql; aux holds scalars
    td_loss, cql_loss, q_data (mean Q of the data action), q_other (mean Q of the game's other actions),
    q_max (mean over the batch of max_a Q over the game's actions) and (G,) vectors per_game_td_loss
    (mean td of each game's samples in this batch, 0 where a game has none) and per_game_count.
    """
    num_games = mask.shape[0]
    support = jnp.asarray(support, jnp.float32)
    sample_mask = jnp.asarray(mask)[game]  # (B, A)
    target = projected_target(next_logits, reward, discount, sample_mask, support)  # (B, K)

    data_logits = jnp.take_along_axis(logits, action[:, None, None], axis=1)[:, 0]  # (B, K)
    td = -jnp.sum(target * jax.nn.log_softmax(data_logits, axis=-1), axis=-1)  # (B,)

    q = categorical_mean(logits, support)  # (B, A)
    q_data = jnp.take_along_axis(q, action[:, None], axis=1)[:, 0]  # (B,)
    q_real = jnp.where(sample_mask, q, -jnp.inf)
    cql = jax.nn.logsumexp(q_real, axis=-1) - q_data  # (B,)

    loss = jnp.mean(td + cql_alpha * cql)

    other = sample_mask & (jnp.arange(q.shape[1])[None, :] != action[:, None])
    counts = jax.ops.segment_sum(jnp.ones_like(td), game, num_segments=num_games)
    aux = {
        "td_loss": jnp.mean(td),
        "cql_loss": jnp.mean(cql),
        "q_data": jnp.mean(q_data),
        "q_other": jnp.sum(jnp.where(other, q, 0.0)) / jnp.maximum(jnp.sum(other), 1),
        "q_max": jnp.mean(jnp.max(q_real, axis=-1)),
        "per_game_td_loss": jax.ops.segment_sum(td, game, num_segments=num_games) / jnp.maximum(counts, 1.0),
        "per_game_count": counts,
    }
    return loss, aux


def make_loss_fn(apply: Callable[..., jax.Array], mask: jax.Array, support: jax.Array, gamma: float,
                 cql_alpha: float) -> Callable[[hk.Params, hk.Params, TransitionBatch],
                                               tuple[jax.Array, dict[str, jax.Array]]]:
    """loss_fn(params, target_params, batch) -> (loss, aux) for jax.value_and_grad(..., has_aux=True).

    apply: build_network(...).apply; mask (G, A) from networks.action_mask; support (K,) from
    NetworkConfig.support(); the discount is gamma**batch.steps * (1 - batch.done).
    """
    mask = jnp.asarray(mask)
    support = jnp.asarray(support, jnp.float32)

    def loss_fn(params: hk.Params, target_params: hk.Params, batch: TransitionBatch):
        logits = apply(params, batch.state, batch.game)
        next_logits = apply(target_params, batch.next_state, batch.game)
        discount = (gamma ** batch.steps.astype(jnp.float32)) * (1.0 - batch.done.astype(jnp.float32))
        return scaled_ql_loss(logits, next_logits, batch.action, batch.reward.astype(jnp.float32), discount,
                              batch.game, mask, support, cql_alpha)

    return loss_fn

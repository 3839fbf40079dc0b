"""Pure losses of the built-in methods, rlax style: chex checks first, time-indexed names, one loss each.

Shapes: B batch, A = A_max (the largest action set of the games), K atoms, G games. Every action-indexed
array is padded to A; `mask` (G, A) says which actions exist in each game, and padded actions never enter
the target's greedy choice, the CQL logsumexp, the behaviour-cloning softmax or any gradient.
Names: `_tm1` is the sampled state s (time t-1), `_t` the n-step next state; `a_tm1` the data action.

Per sample of game g (docs/defaults.md, "The objective"):
    a*   = argmax_{a in A_g} sum_j z_j p_target(s', a)_j                   (target network, own actions)
    m    = Proj_z( R_n + gamma^steps (1 - done) z , p_target(s', a*) )     (clipped, linear projection)
    td   = - sum_j m_j log softmax(logits(s, a_data))_j
    Q(s, a) = sum_j z_j softmax(logits(s, a))_j
    cql  = logsumexp_{a in A_g} Q(s, a) - Q(s, a_data)
    loss = mean_b (td + alpha * cql)
Behaviour cloning, per sample of game g:
    ce   = logsumexp_{a in A_g} logits(s, a) - logits(s, a_data)            (cross-entropy on the data action)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from sqlcli_core.networks.network import categorical_mean


def categorical_l2_project(z_p: jax.Array, probs: jax.Array, z_q: jax.Array) -> jax.Array:
    """Project the distribution (atoms z_p (K,), probabilities probs (K,)) onto the support z_q (K',).

    The C51 projection (Bellemare et al. 2017, Algorithm 1) written as a weight matrix: source atom j,
    clipped to [z_q[0], z_q[-1]], gives target atom i the share max(0, 1 - |z_p_j - z_q_i| / d_i), where
    d_i is the distance from z_q_i to its neighbour on z_p_j's side. Returns (K',) probabilities.
    The arithmetic is laid out as rlax's (target atoms on rows, a sum over the last axis), so results are
    bit-identical to it (tests/test_losses.py compares them).
    """
    chex.assert_rank([z_p, probs, z_q], 1)
    next_atom = jnp.roll(z_q, shift=-1)  # z_q[i + 1] (the last wraps around: a negative gap, unused)
    prev_atom = jnp.roll(z_q, shift=1)  # z_q[i - 1] (the first wraps around: a negative gap, unused)
    z_p = jnp.clip(z_p, z_q[0], z_q[-1])[None, :]  # (1, K)
    gap_up = (next_atom - z_q)[:, None]  # (K', 1)
    gap_down = (z_q - prev_atom)[:, None]
    z_q = z_q[:, None]
    inv_down = jnp.where(gap_down > 0, 1.0 / gap_down, jnp.zeros_like(gap_down))  # equal atoms: no share
    inv_up = jnp.where(gap_up > 0, 1.0 / gap_up, jnp.zeros_like(gap_up))
    delta = z_p - z_q  # (K', K): clip(z_p)[j] - z_q[i]
    above = (delta >= 0.0).astype(probs.dtype)
    distance = (above * delta * inv_up) - ((1.0 - above) * delta * inv_down)
    return jnp.sum(jnp.clip(1.0 - distance, 0.0, 1.0) * probs[None, :], axis=-1)


def projected_target(logits_t: jax.Array, r_t: jax.Array, discount_t: jax.Array, mask_t: jax.Array,
                     support: jax.Array) -> jax.Array:
    """The C51 target distribution, without gradient.

    logits_t (B, A, K) of the target network at the n-step next state; r_t (B,) n-step return;
    discount_t (B,) gamma^steps * (1 - done); mask_t (B, A) bool real actions; support (K,).
    Returns (B, K) probabilities on `support`.
    """
    chex.assert_rank([logits_t, r_t, discount_t, mask_t, support], [3, 1, 1, 2, 1])
    logits_t = jax.lax.stop_gradient(logits_t)
    q_t = jnp.where(mask_t, categorical_mean(logits_t, support), -jnp.inf)  # (B, A)
    greedy = jnp.argmax(q_t, axis=-1)  # (B,)
    probs_t = jax.nn.softmax(jnp.take_along_axis(logits_t, greedy[:, None, None], axis=1)[:, 0], axis=-1)
    shifted = r_t[:, None] + discount_t[:, None] * support[None, :]  # (B, K), clipped by the projection
    project = jax.vmap(categorical_l2_project, in_axes=(0, 0, None))
    return jax.lax.stop_gradient(project(shifted, probs_t, support))


def _per_game_mean(per_sample: jax.Array, game: jax.Array, num_games: int) -> tuple[jax.Array, jax.Array]:
    """(G,) mean of `per_sample` over each game's samples (0 where a game has none), and (G,) counts."""
    counts = jax.ops.segment_sum(jnp.ones_like(per_sample), game, num_segments=num_games)
    return jax.ops.segment_sum(per_sample, game, num_segments=num_games) / jnp.maximum(counts, 1.0), counts


def scaled_ql_loss(logits_tm1: jax.Array, logits_t: jax.Array, a_tm1: jax.Array, r_t: jax.Array,
                   discount_t: jax.Array, game: jax.Array, mask: jax.Array, support: jax.Array,
                   cql_alpha: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scaled QL loss from network outputs (cql_alpha = 0: plain C51).

    logits_tm1 (B, A, K) online network at s; logits_t (B, A, K) target network at s_{t+steps};
    a_tm1 (B,) int32 data action (index in the game's action set); r_t (B,) float32 n-step return;
    discount_t (B,) float32 = gamma^steps * (1 - done); game (B,) int32 in [0, G); mask (G, A) bool
    (networks.action_mask); support (K,) float32 atoms; cql_alpha the CQL weight.

    Returns (loss, aux): loss the scalar mean over the batch of td + alpha * cql; aux holds scalars
    td_loss, cql_loss, q_data (mean Q of the data action), q_other (mean Q of the game's other actions),
    q_max (mean over the batch of max_a Q over the game's actions) and (G,) vectors per_game_td_loss
    (mean td of each game's samples in this batch, 0 where a game has none) and per_game_count.
    """
    chex.assert_rank([logits_tm1, logits_t, a_tm1, r_t, discount_t, game, mask, support], [3, 3, 1, 1, 1, 1, 2, 1])
    chex.assert_type([a_tm1, game], int)
    chex.assert_equal_shape([logits_tm1, logits_t])
    num_games = mask.shape[0]
    support = jnp.asarray(support, jnp.float32)
    sample_mask = jnp.asarray(mask)[game]  # (B, A)
    target = projected_target(logits_t, r_t, discount_t, sample_mask, support)  # (B, K)

    data_logits = jnp.take_along_axis(logits_tm1, a_tm1[:, None, None], axis=1)[:, 0]  # (B, K)
    td = -jnp.sum(target * jax.nn.log_softmax(data_logits, axis=-1), axis=-1)  # (B,)

    q = categorical_mean(logits_tm1, support)  # (B, A)
    q_data = jnp.take_along_axis(q, a_tm1[:, None], axis=1)[:, 0]  # (B,)
    q_real = jnp.where(sample_mask, q, -jnp.inf)
    cql = jax.nn.logsumexp(q_real, axis=-1) - q_data  # (B,)

    loss = jnp.mean(td + cql_alpha * cql)

    other = sample_mask & (jnp.arange(q.shape[1])[None, :] != a_tm1[:, None])
    per_game_td, counts = _per_game_mean(td, game, num_games)
    aux = {
        "td_loss": jnp.mean(td),
        "cql_loss": jnp.mean(cql),
        "q_data": jnp.mean(q_data),
        "q_other": jnp.sum(jnp.where(other, q, 0.0)) / jnp.maximum(jnp.sum(other), 1),
        "q_max": jnp.mean(jnp.max(q_real, axis=-1)),
        "per_game_td_loss": per_game_td,
        "per_game_count": counts,
    }
    return loss, aux


def behaviour_cloning_loss(logits_tm1: jax.Array, a_tm1: jax.Array, game: jax.Array,
                           mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of the data action under a softmax over each sample's own game's actions.

    logits_tm1 (B, A) policy logits at s; a_tm1 (B,) int32 data action; game (B,) int32; mask (G, A) bool.
    Returns (loss, aux): loss the mean cross-entropy; aux holds scalars ce_loss, accuracy (share of samples
    whose greedy action is the data action), entropy (mean entropy of the policy over the game's actions)
    and (G,) vectors per_game_ce_loss and per_game_count.
    """
    chex.assert_rank([logits_tm1, a_tm1, game, mask], [2, 1, 1, 2])
    chex.assert_type([a_tm1, game], int)
    num_games = mask.shape[0]
    sample_mask = jnp.asarray(mask)[game]  # (B, A)
    real_logits = jnp.where(sample_mask, logits_tm1, -jnp.inf)
    log_probs = jax.nn.log_softmax(real_logits, axis=-1)  # -inf off the game's actions
    ce = -jnp.take_along_axis(log_probs, a_tm1[:, None], axis=1)[:, 0]  # (B,)
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(jnp.where(sample_mask, probs * log_probs, 0.0), axis=-1)
    per_game_ce, counts = _per_game_mean(ce, game, num_games)
    aux = {
        "ce_loss": jnp.mean(ce),
        "accuracy": jnp.mean((jnp.argmax(real_logits, axis=-1) == a_tm1).astype(jnp.float32)),
        "entropy": jnp.mean(entropy),
        "per_game_ce_loss": per_game_ce,
        "per_game_count": counts,
    }
    return jnp.mean(ce), aux

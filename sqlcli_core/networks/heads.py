"""The shared neck and the per-game heads that sit on every torso.

torso map (B, H, W, C) -> learned spatial embedding (B, C*F) -> dense projection + ReLU (B, D)
-> L2 feature normalization (B, D) -> per-game linear C51 heads, each sample reading only its own game's
head: (B, A_max, num_atoms) logits.

All heads live in ONE weight matrix (D, sum_g A_g * num_atoms): the forward pass is one matmul for the
whole batch followed by a gather of each sample's own columns. With G=40 games and D=1024 the matmul costs
about 2% of a ResNet-101 forward pass, whereas gathering a per-sample weight matrix would move
B x D x A_max x atoms floats (about 2 GB at B=512). The gather's transpose is a scatter-add, so a game's
columns receive gradient only from that game's samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


class SpatialEmbedding(hk.Module):
    """Learned spatial embedding (replaces global average pooling).

    K has shape (H, W, C, F); out[b, c, f] = sum_{h, w} x[b, h, w, c] * K[h, w, c, f], flattened
    channel-major to (B, C*F). Initialised LeCun-normal with fan-in H*W*C, as the authors' public code does.
    """

    def __init__(self, num_features: int, name: str = "spatial_embedding"):
        super().__init__(name=name)
        self.num_features = num_features

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kernel = hk.get_parameter(
            "kernel", (h, w, c, self.num_features), x.dtype,
            init=hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"))
        out = jnp.einsum("bhwc,hwcf->bcf", x, kernel)
        return out.reshape(b, c * self.num_features)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x||_2 along the last axis, computed in float32. (B, D) -> (B, D) float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps * eps)


def head_offsets(num_actions: Sequence[int], num_atoms: int) -> np.ndarray:
    """First column of each game's head in the stacked head matrix: (G + 1,) int, last entry = total."""
    return np.concatenate([[0], np.cumsum(np.asarray(num_actions, np.int64) * num_atoms)])


def head_gather_table(num_actions: Sequence[int], num_atoms: int) -> np.ndarray:
    """(G, A_max * num_atoms) int32: column of (game g, action a, atom j) at [g, a * num_atoms + j].

    Padded actions (a >= A_g) point at column 0; their logits are replaced by zeros after the gather.
    """
    a_max = max(num_actions)
    offsets = head_offsets(num_actions, num_atoms)
    table = np.zeros((len(num_actions), a_max * num_atoms), np.int32)
    for g, n in enumerate(num_actions):
        table[g, : n * num_atoms] = offsets[g] + np.arange(n * num_atoms)
    return table


def padded_action_mask(num_actions: Sequence[int]) -> np.ndarray:
    """(G, A_max) bool: True where action a exists in game g."""
    a_max = max(num_actions)
    return np.arange(a_max)[None, :] < np.asarray(num_actions)[:, None]


class MultiGameHeads(hk.Module):
    """One linear C51 head per game, evaluated for each sample's own game.

    (B, D) features, (B,) int32 game -> (B, A_max, num_atoms) logits; entries of actions outside the
    sample's game are exactly 0 and carry no gradient.
    """

    def __init__(self, num_actions: Sequence[int], num_atoms: int, name: str = "heads"):
        super().__init__(name=name)
        self.num_actions = tuple(int(n) for n in num_actions)
        self.num_atoms = num_atoms

    def __call__(self, features: jax.Array, game: jax.Array) -> jax.Array:
        total = int(head_offsets(self.num_actions, self.num_atoms)[-1])
        all_logits = hk.Linear(total, name="linear")(features)  # (B, sum_g A_g * atoms)
        table = jnp.asarray(head_gather_table(self.num_actions, self.num_atoms))
        own = jnp.take_along_axis(all_logits, table[game], axis=1)  # (B, A_max * atoms)
        a_max = max(self.num_actions)
        own = own.reshape(-1, a_max, self.num_atoms)
        real = jnp.asarray(padded_action_mask(self.num_actions))[game]  # (B, A_max)
        return jnp.where(real[:, :, None], own, jnp.zeros((), own.dtype))

"""The IMPALA CNN torso (Espeholt et al. 2018): three conv + max-pool stacks with two residual blocks each.

Stack channels (16, 32, 32) times the width multiplier; 84x84 -> 42 -> 21 -> 11, so the final map is
11x11x(32*width) after a last ReLU. This is the "IMPALA CNN of growing width" family of the paper's
scaling comparison.
"""

from __future__ import annotations

import haiku as hk
import jax

from sqlcli_core.networks.dqn_cnn import scaled

IMPALA_CHANNELS = (16, 32, 32)


class ImpalaCnn(hk.Module):
    """(B, 84, 84, 4) float -> (B, 11, 11, 32*width)."""

    def __init__(self, width: float = 1.0, name: str = "torso"):
        super().__init__(name=name)
        self.width = width

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, base in enumerate(IMPALA_CHANNELS):
            channels = scaled(base, self.width)
            x = hk.Conv2D(channels, 3, padding="SAME", name=f"stack{i}_conv")(x)
            x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
            for j in range(2):
                shortcut = x
                x = jax.nn.relu(x)
                x = hk.Conv2D(channels, 3, padding="SAME", name=f"stack{i}_block{j}_conv0")(x)
                x = jax.nn.relu(x)
                x = hk.Conv2D(channels, 3, padding="SAME", name=f"stack{i}_block{j}_conv1")(x)
                x = x + shortcut
        return jax.nn.relu(x)

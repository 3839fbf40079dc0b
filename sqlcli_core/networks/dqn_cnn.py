"""The Nature DQN torso (Mnih et al. 2015): three ReLU convolutions, the classic small baseline.

84x84x4 -> conv 8x8/4 (32) -> conv 4x4/2 (64) -> conv 3x3/1 (64), VALID padding as in the Nature paper,
giving a 7x7x64 map at width 1. The width multiplier scales every layer's channels.
"""

from __future__ import annotations

import haiku as hk
import jax


def scaled(channels: int, width: float) -> int:
    """Channels after a width multiplier: round(channels * width), at least 1."""
    return max(1, int(round(channels * width)))


class DqnCnn(hk.Module):
    """Nature DQN convolutions. (B, 84, 84, 4) float -> (B, 7, 7, 64*width) after the last ReLU."""

    def __init__(self, width: float = 1.0, name: str = "torso"):
        super().__init__(name=name)
        self.width = width

    def __call__(self, x: jax.Array) -> jax.Array:
        for channels, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = hk.Conv2D(scaled(channels, self.width), kernel, stride=stride, padding="VALID")(x)
            x = jax.nn.relu(x)
        return x

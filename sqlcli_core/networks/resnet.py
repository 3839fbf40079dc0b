"""ResNet torsos (He et al. 2016) with group normalization instead of batch normalization.

Depths 18/34 use basic blocks (two 3x3 convs), 50/101/152 bottleneck blocks (1x1, 3x3, 1x1 with 4x
expansion; the stride sits on the 3x3 conv, "ResNet v1.5"). Stage widths (64, 128, 256, 512) times the
width multiplier. Convolutions have no bias (each is followed by a group norm), as in the standard ResNet,
so the parameter count of the conv trunk equals the standard ImageNet model's minus its classifier
(group-norm scale/offset replace batch-norm gamma/beta one for one).

Stem: the standard ImageNet stem (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) with SAME padding. On 84x84
frames it gives 84 -> 42 -> 21 (stage 1) -> 11 -> 6 -> 3: a 3x3 final map, the 3x3x2048 map the learned
spatial embedding of the spec (3x3x2048x8) implies. There is no global average pooling.

Normalization statistics are computed in float32 even when the torso runs in bfloat16.
"""

from __future__ import annotations

import math

import haiku as hk
import jax
import jax.numpy as jnp

from sqlcli_core.networks.config import RESNET_LAYOUTS
from sqlcli_core.networks.dqn_cnn import scaled

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


def group_count(num_groups: int, channels: int) -> int:
    """Groups actually used for `channels`: gcd(num_groups, channels), so narrow nets stay valid."""
    return math.gcd(num_groups, channels)


def group_norm(x: jax.Array, num_groups: int, name: str) -> jax.Array:
    """Group norm over (H, W, C/groups) with per-channel scale and offset; statistics in float32."""
    channels = x.shape[-1]
    y = hk.GroupNorm(group_count(num_groups, channels), name=name)(x.astype(jnp.float32))
    return y.astype(x.dtype)


def _conv(channels: int, kernel: int, stride: int, name: str) -> hk.Conv2D:
    return hk.Conv2D(channels, kernel, stride=stride, padding="SAME", with_bias=False, name=name)


class _Block(hk.Module):
    """One residual block; `inner` channels, output `inner * 4` for bottlenecks, `inner` for basic."""

    def __init__(self, inner: int, stride: int, bottleneck: bool, project: bool, num_groups: int, name: str):
        super().__init__(name=name)
        self.inner, self.stride, self.bottleneck = inner, stride, bottleneck
        self.project, self.num_groups = project, num_groups

    def __call__(self, x: jax.Array) -> jax.Array:
        out_channels = self.inner * 4 if self.bottleneck else self.inner
        shortcut = x
        if self.project:
            shortcut = _conv(out_channels, 1, self.stride, "shortcut_conv")(x)
            shortcut = group_norm(shortcut, self.num_groups, "shortcut_norm")
        if self.bottleneck:
            specs = ((self.inner, 1, 1), (self.inner, 3, self.stride), (out_channels, 1, 1))
        else:
            specs = ((self.inner, 3, self.stride), (out_channels, 3, 1))
        for i, (channels, kernel, stride) in enumerate(specs):
            x = _conv(channels, kernel, stride, f"conv{i}")(x)
            x = group_norm(x, self.num_groups, f"norm{i}")
            if i < len(specs) - 1:
                x = jax.nn.relu(x)
        return jax.nn.relu(x + shortcut)


class ResNet(hk.Module):
    """(B, 84, 84, 4) float -> (B, 3, 3, 512*width*expansion) for depth in RESNET_LAYOUTS."""

    def __init__(self, depth: int, width: float = 1.0, num_groups: int = 32, name: str = "torso"):
        super().__init__(name=name)
        self.blocks, self.bottleneck = RESNET_LAYOUTS[depth]
        self.width, self.num_groups = width, num_groups

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv(scaled(64, self.width), 7, 2, "stem_conv")(x)
        x = jax.nn.relu(group_norm(x, self.num_groups, "stem_norm"))
        x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        expansion = 4 if self.bottleneck else 1
        in_channels = x.shape[-1]
        for s, (num_blocks, base, stage_stride) in enumerate(zip(self.blocks, STAGE_CHANNELS, STAGE_STRIDES)):
            inner = scaled(base, self.width)
            for b in range(num_blocks):
                stride = stage_stride if b == 0 else 1
                project = b == 0 and (stride != 1 or in_channels != inner * expansion)
                x = _Block(inner, stride, self.bottleneck, project, self.num_groups, name=f"stage{s}_block{b}")(x)
                in_channels = inner * expansion
        return x

"""The unit of data between the sampler and the learner."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TransitionBatch(NamedTuple):
    """A batch of n-step transitions from one or many games (B = batch size).

    Frames are frame-major, oldest first: state[b, k] is frame i-3+k. Frame-major is what a numpy
    gather produces fastest; the network transposes to channels-last on the device.
    """

    game: np.ndarray  # (B,) int32: index into the sampler's (and the network's) game list
    state: np.ndarray  # (B, 4, 84, 84) uint8
    action: np.ndarray  # (B,) int32: index into the game's minimal action set
    reward: np.ndarray  # (B,) float32: sum_{k < steps} gamma^k r_{i+k}
    done: np.ndarray  # (B,) float32: 1.0 when a terminal ends the n-step window
    steps: np.ndarray  # (B,) int32: length of the window (n, or the terminal's offset + 1)
    next_state: np.ndarray  # (B, 4, 84, 84) uint8: the stack ending at i + steps

    def discount(self, gamma: float) -> np.ndarray:
        """gamma**steps * (1 - done): the factor on the bootstrapped value, shape (B,)."""
        return (gamma ** self.steps.astype(np.float32)) * (1.0 - self.done)

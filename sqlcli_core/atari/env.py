"""Atari with Dopamine's preprocessing: the protocol that produced DQN-Replay.

Per agent step: repeat the action for `frame_skip` emulator frames (ALE applies sticky actions per
frame), sum the raw rewards, max-pool the grayscale screens of the last two frames, resize to 84x84
with area interpolation. Episodes end at game over only (never on a lost life); the caller applies the
27,000-step cap. The emulator is created through gymnasium (which validates mode and difficulty) and
then driven through its ALE interface directly, which avoids building an RGB observation per frame.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sqlcli_core.atari.games import Game, minimal_action_set, validate_variant
from sqlcli_core.errors import UsageError

SCREEN_SHAPE = (210, 160)  # most games; a few (Carnival, Pooyan, AirRaid, JourneyEscape) are taller
OBS_SHAPE = (84, 84)
MAX_EPISODE_STEPS = 27_000  # agent steps = 108,000 frames


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the emulator is driven. `dopamine` produced DQN-Replay; `no-sticky` is the Multi-Game DT variant."""

    name: str = "dopamine"
    sticky_action_prob: float = 0.25
    frame_skip: int = 4
    max_episode_steps: int = MAX_EPISODE_STEPS
    epsilon: float = 0.001  # epsilon of the evaluation policy

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "dopamine": Protocol(),
    "no-sticky": Protocol(name="no-sticky", sticky_action_prob=0.0),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UsageError(f"unknown protocol '{name}'", hint=f"choose one of {', '.join(PROTOCOLS)}") from None


def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix of area-interpolation weights: each output cell averages the source span it covers."""
    scale = src / dst
    w = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), int(np.ceil(hi))):
            w[i, j] = min(hi, j + 1) - max(lo, j)
    return (w / scale).astype(np.float32)


@functools.cache
def _resize_matrices(src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return _area_weights(src_shape[0], dst_shape[0]), _area_weights(src_shape[1], dst_shape[1]).T.copy()


def area_resize(frame: np.ndarray, out_shape: tuple[int, int] = OBS_SHAPE) -> np.ndarray:
    """Area-interpolated resize of a 2-D uint8 frame, rounded to nearest (what cv2.INTER_AREA computes)."""
    rows, cols = _resize_matrices(tuple(frame.shape), tuple(out_shape))
    out = rows @ frame.astype(np.float32) @ cols
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class AtariGame:
    """One preprocessed Atari emulator. Actions are indices into the game's minimal action set."""

    def __init__(self, game: Game, *, protocol: Protocol = PROTOCOLS["dopamine"], mode: int | None = None,
                 difficulty: int | None = None, seed: int = 0):
        import ale_py
        import gymnasium as gym

        validate_variant(game, mode, difficulty)
        gym.register_envs(ale_py)
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.game = game
        self.protocol = protocol
        self.mode = mode
        self.difficulty = difficulty
        self._env = gym.make(
            game.gym_id, frameskip=1, repeat_action_probability=protocol.sticky_action_prob,
            full_action_space=False, mode=mode, difficulty=difficulty, obs_type="grayscale",
            max_episode_steps=None,
        )
        self._ale = self._env.unwrapped.ale
        self._actions = [ale_py.Action(a) for a in minimal_action_set(game.name)]
        if len(self._env.unwrapped._action_set) != len(self._actions):  # pragma: no cover - ALE invariant
            raise RuntimeError("gymnasium and ALE disagree on the minimal action set")
        height, width = self._ale.getScreenDims()
        self._buffers = np.zeros((2, height, width), dtype=np.uint8)
        self._seed = seed
        self._seeded = False

    @property
    def num_actions(self) -> int:
        return len(self._actions)

    def reset(self) -> np.ndarray:
        """Start a new episode; returns the first 84x84 uint8 frame. The first reset seeds the emulator."""
        if not self._seeded:
            self._env.reset(seed=self._seed)
            self._seeded = True
        else:
            self._env.reset()
        self._ale.getScreenGrayscale(self._buffers[0])
        self._buffers[1].fill(0)
        return self._observation()

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """Apply one agent step; returns (frame, raw reward summed over the skipped frames, game_over)."""
        ale_action = self._actions[action]
        reward = 0.0
        game_over = False
        skip = self.protocol.frame_skip
        for t in range(skip):
            reward += self._ale.act(ale_action)
            game_over = self._ale.game_over()
            if game_over:
                break
            if t >= skip - 2:
                self._ale.getScreenGrayscale(self._buffers[t - (skip - 2)])
        return self._observation(), float(reward), bool(game_over)

    def save_state(self) -> bytes:
        """The emulator's state (RAM, CPU, RNG) and the two screen buffers, as bytes.

        ALE does not save the last applied action, which sticky actions repeat; `reset()` sets it to NOOP.
        So `restore_state` continues exactly (in a fresh process too) from a state saved right after
        `reset()`, or when the next call is `reset()`; from any other state, a frame that repeats the last
        action may differ.
        """
        return self._buffers.tobytes() + self._ale.cloneState(include_rng=True).serialize()

    def restore_state(self, state: bytes) -> None:
        """Continue from `save_state`'s bytes (taken from an AtariGame of the same game, mode and difficulty).

        Leaves the last applied action as it was here (NOOP right after `reset()`).
        """
        import ale_py

        if not self._seeded:  # the first reset loads the ROM with this mode and difficulty
            self.reset()
        n = self._buffers.nbytes
        self._buffers[...] = np.frombuffer(state[:n], dtype=np.uint8).reshape(self._buffers.shape)
        self._ale.restoreState(ale_py.ALEState(state[n:]))

    def _observation(self) -> np.ndarray:
        return area_resize(np.maximum(self._buffers[0], self._buffers[1]))

    def close(self) -> None:
        self._env.close()

"""Atari with Dopamine's preprocessing: the protocol that produced DQN-Replay.

Per agent step: repeat the action for `frame_skip` emulator frames (ALE applies sticky actions per
frame), sum the raw rewards, max-pool the grayscale screens of the last two frames, resize to 84x84
with OpenCV's INTER_AREA (reproduced exactly in numpy). Episodes end at game over (never on a lost
life); the caller applies the 27,000-step cap. The emulator is a bare `ale_py.ALEInterface`: its `random_seed` (which drives
sticky actions and nothing else) is the seed given here, exactly as ale_py's vector environment
(`sqlcli_core.acting.ale_vector`) sets it, so the two paths play the same game for the same seed.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from sqlcli_core.acting.protocol import PROTOCOLS, ActingProtocol, check_seed
from sqlcli_core.games.catalog import Game, minimal_action_set, validate_variant

FRAME_SHAPE = (84, 84)  # one preprocessed frame; the agent's observation stacks 4 of them










@functools.cache
def _area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA table for one axis: (k, dst) source indices and float32 weights, in its order.

    Output cell d covers the source span [d*scale, (d+1)*scale) with scale = 1 / (dst / src), as
    cv::resize computes it; partly covered source cells get the covered fraction. Rows past a cell's
    entries are padded with weight 0 (adding 0.0 leaves a float32 sum unchanged).
    """
    scale = 1.0 / (dst / src)
    cells = []
    for d in range(dst):
        lo = d * scale
        hi = lo + scale
        width = min(scale, src - lo)
        first, last = math.ceil(lo), min(math.floor(hi), src - 1)
        first = min(first, last)
        entries = []
        if first - lo > 1e-3:
            entries.append((first - 1, (first - lo) / width))
        entries += [(s, 1.0 / width) for s in range(first, last)]
        if hi - last > 1e-3:
            entries.append((last, min(hi - last, 1.0, width) / width))
        cells.append(entries)
    k = max(len(c) for c in cells)
    index = np.zeros((k, dst), np.intp)
    weight = np.zeros((k, dst), np.float32)
    for d, entries in enumerate(cells):
        for m, (s, w) in enumerate(entries):
            index[m, d], weight[m, d] = s, np.float32(w)
    return index, weight


def area_resize(frame: np.ndarray, out_shape: tuple[int, int] = FRAME_SHAPE) -> np.ndarray:
    """cv2.resize(frame, INTER_AREA) of a 2-D uint8 frame, bit for bit (Dopamine's resize; ALE's vector env's).

    Same float32 operations in the same order as OpenCV's generic area resize: each row is reduced along
    x (sum of pixel * weight), then rows are combined along y, then rounded half to even.
    """
    y_index, y_weight = _area_table(frame.shape[0], out_shape[0])
    x_index, x_weight = _area_table(frame.shape[1], out_shape[1])
    rows = np.zeros((frame.shape[0], out_shape[1]), np.float32)
    for m in range(len(x_index)):
        rows += frame[:, x_index[m]] * x_weight[m]
    out = np.zeros(out_shape, np.float32)
    for m in range(len(y_index)):
        out += rows[y_index[m]] * y_weight[m][:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def new_ale(game: Game, *, sticky_action_prob: float, seed: int, mode: int | None = None,
            difficulty: int | None = None):
    """A bare ALEInterface with the ROM loaded: random_seed = seed, mode and difficulty set.

    ALE's own frame cap (`max_num_frames_per_episode`, 108,000 in gymnasium's envs) is left off: callers
    cap episodes by agent steps, as Dopamine's runner does. (ALE's cap also counts from 1 in some games,
    Pooyan for one, so it ended their capped episodes a frame early.)
    """
    import ale_py
    from ale_py import roms

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setFloat("repeat_action_probability", sticky_action_prob)
    ale.setInt("random_seed", check_seed(seed))
    ale.loadROM(str(roms.get_rom_path(game.rom)))
    if mode is not None:
        ale.setMode(mode)
    if difficulty is not None:
        ale.setDifficulty(difficulty)
    return ale


class AtariGame:
    """One preprocessed Atari emulator. Actions are indices into the game's minimal action set.

    `step` reports game over only; the caller applies the step cap (and decides truncation by length).
    """

    def __init__(self, game: Game, *, protocol: ActingProtocol = PROTOCOLS["dopamine"], mode: int | None = None,
                 difficulty: int | None = None, seed: int = 0):
        import ale_py

        validate_variant(game, mode, difficulty)
        self.game = game
        self.protocol = protocol
        self.mode = mode
        self.difficulty = difficulty
        self._ale = new_ale(game, sticky_action_prob=protocol.sticky_action_prob, seed=seed, mode=mode,
                            difficulty=difficulty)
        self._actions = [ale_py.Action(a) for a in minimal_action_set(game.name)]
        height, width = self._ale.getScreenDims()
        self._buffers = np.zeros((2, height, width), dtype=np.uint8)

    @property
    def num_actions(self) -> int:
        return len(self._actions)

    def reseed(self, seed: int) -> None:
        """Start over as a fresh emulator with this seed (reloads the ROM: the only way ALE re-seeds)."""
        from ale_py import roms

        self._ale.setInt("random_seed", check_seed(seed))
        self._ale.loadROM(str(roms.get_rom_path(self.game.rom)))
        if self.mode is not None:
            self._ale.setMode(self.mode)
        if self.difficulty is not None:
            self._ale.setDifficulty(self.difficulty)

    def reset(self) -> np.ndarray:
        """Start a new episode; returns the first 84x84 uint8 frame."""
        self._ale.reset_game()
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

        n = self._buffers.nbytes
        self._buffers[...] = np.frombuffer(state[:n], dtype=np.uint8).reshape(self._buffers.shape)
        self._ale.restoreState(ale_py.ALEState(state[n:]))

    def _observation(self) -> np.ndarray:
        return area_resize(np.maximum(self._buffers[0], self._buffers[1]))

    def screen_rgb(self) -> np.ndarray:
        """The emulator's screen as it is now, (210, 160, 3) uint8 RGB: what a person sees, unprocessed."""
        return self._ale.getScreenRGB()

    def close(self) -> None:
        self._ale = None

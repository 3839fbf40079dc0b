"""An in-memory replay ring for online fine-tuning, sampled under the same rules as the offline data.

Each environment writes its own stream of Dopamine rows (row i = frame o_i, action a_i, clipped reward
r_i, terminal_i), with 3 all-zero padding rows before every episode, exactly as DQN-Replay stores them.
Sampling follows the rule of `sqlcli_core.data.transitions` (docs/store-format.md, "Sampling rule"), with
the rows still in the ring as the segment [max(0, add_count - capacity), add_count):

- i is valid when the rows i-3 .. i-1 hold no terminal (the stack stays inside one episode; with the
  padding this also excludes the padding rows themselves), the stack's oldest row i-3 is still in the ring,
  and the n rows from i plus the next-state row i+n have been written;
- reward = sum_{k < steps} gamma^k r_{i+k}, stopping after the first terminal (done = 1);
- state = frames [i-3 .. i], next_state = the stack ending at i + steps.

Indices are drawn uniformly over the valid transitions of all environments (by rejection, as Dopamine
does), so the offline sampler and this ring feed the learner the same kind of `TransitionBatch`.

Memory: `capacity` rows of 84x84 uint8 frames in all (7 KB each; 1M rows = 7 GB), split evenly over the
environments. The arrays are allocated with np.zeros, so pages that were never written cost no RAM.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sqlcli_core.data import transitions as tr
from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.data.replay_format import FRAME_SHAPE, PADDING_ROWS, STACK_SIZE
from sqlcli_core.errors import DataError, UsageError


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """capacity: rows in all (split evenly over num_envs); n_step, gamma: the return window and discount."""

    capacity: int = 1_000_000
    num_envs: int = 1
    n_step: int = 3
    gamma: float = 0.99

    def __post_init__(self):
        if self.num_envs < 1:
            raise UsageError(f"--num-envs must be at least 1, got {self.num_envs}", hint="e.g. --num-envs 4")
        if self.n_step < 1:
            raise UsageError(f"--n-step must be at least 1, got {self.n_step}", hint="the paper uses 3")
        if not 0.0 <= self.gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {self.gamma}", hint="e.g. --gamma 0.99")
        if self.capacity // self.num_envs < 2 * (STACK_SIZE + self.n_step):
            raise UsageError(
                f"replay capacity {self.capacity} is too small for {self.num_envs} environments",
                hint=f"use at least {2 * (STACK_SIZE + self.n_step) * self.num_envs} rows, e.g. --replay-capacity 100000")

    @property
    def rows_per_env(self) -> int:
        return self.capacity // self.num_envs


class OnlineReplay:
    """Per-environment rings of Dopamine rows; `sample(batch_size)` returns a TransitionBatch.

    Writing: `start_episodes(envs)` writes the 3 padding rows of a new episode, `add(frame, action,
    reward, terminal)` appends one row to every environment (frame (E, 84, 84) uint8 is the frame the
    action was chosen in; reward (E,) is clipped to [-1, 1] here, as in the offline data).
    """

    def __init__(self, config: ReplayConfig, *, game_id: int = 0, seed: int = 0):
        self.config = config
        self.game_id = int(game_id)
        e, c = config.num_envs, config.rows_per_env
        self.frames = np.zeros((e, c, *FRAME_SHAPE), np.uint8)
        self.actions = np.zeros((e, c), np.int32)
        self.rewards = np.zeros((e, c), np.float32)
        self.terminals = np.zeros((e, c), np.uint8)
        self.add_count = np.zeros((e,), np.int64)  # rows ever written per environment
        self.rng = np.random.default_rng(seed)

    # ----------------------------------------------------------------------------------------- writing

    def _write(self, env: np.ndarray, frame: np.ndarray, action: np.ndarray, reward: np.ndarray,
               terminal: np.ndarray) -> None:
        slot = self.add_count[env] % self.config.rows_per_env
        self.frames[env, slot] = frame
        self.actions[env, slot] = action
        self.rewards[env, slot] = np.clip(reward, -1.0, 1.0)
        self.terminals[env, slot] = terminal
        self.add_count[env] += 1

    def start_episodes(self, envs) -> None:
        """Write the 3 all-zero rows that precede every episode, in the environments `envs` (indices)."""
        envs = np.asarray(envs, np.int64).reshape(-1)
        if envs.size == 0:
            return
        zeros_i = np.zeros(envs.shape, np.int32)
        for _ in range(PADDING_ROWS):
            self._write(envs, np.zeros((envs.size, *FRAME_SHAPE), np.uint8), zeros_i,
                        np.zeros(envs.shape, np.float32), np.zeros(envs.shape, np.uint8))

    def add(self, frame: np.ndarray, action: np.ndarray, reward: np.ndarray, terminal: np.ndarray) -> None:
        """Append one row to every environment: frame (E, 84, 84) uint8, action, reward, terminal (E,)."""
        envs = np.arange(self.config.num_envs)
        self._write(envs, np.asarray(frame, np.uint8), np.asarray(action, np.int32),
                    np.asarray(reward, np.float32), np.asarray(terminal, np.uint8))

    # ---------------------------------------------------------------------------------------- sampling

    def _candidate_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per environment, the inclusive range [lo, hi] of positions that pass the ring-bound checks."""
        oldest = np.maximum(self.add_count - self.config.rows_per_env, 0)
        lo, end = tr.index_bounds(oldest, self.add_count, self.config.n_step)
        return lo, end - 1

    def num_candidates(self) -> int:
        lo, hi = self._candidate_ranges()
        return int(np.maximum(hi - lo + 1, 0).sum())

    def is_valid(self, env: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(B,) bool: the spec's validity rule for absolute stream positions `pos` of environments `env`."""
        lo, hi = self._candidate_ranges()
        in_ring = (pos >= lo[env]) & (pos <= hi[env])
        before = (pos[:, None] + tr.STACK_OFFSETS[None, :-1]) % self.config.rows_per_env  # (B, 3): i-3 .. i-1
        return in_ring & tr.stack_in_one_episode(self.terminals[env[:, None], before])

    def sample_indices(self, batch_size: int, max_tries: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(env, pos): `batch_size` positions drawn uniformly over all valid transitions (rejection)."""
        lo, hi = self._candidate_ranges()
        sizes = np.maximum(hi - lo + 1, 0)
        total = int(sizes.sum())
        if total == 0:
            raise DataError("the replay holds no complete transition yet",
                            hint="collect more steps before training (--min-replay)")
        bounds = np.cumsum(sizes)
        envs, positions = [], []
        have = 0
        for _ in range(max_tries):
            flat = self.rng.integers(0, total, size=2 * batch_size)
            env = np.searchsorted(bounds, flat, side="right")
            pos = lo[env] + flat - (bounds[env] - sizes[env])
            ok = self.is_valid(env, pos)
            envs.append(env[ok])
            positions.append(pos[ok])
            have += int(ok.sum())
            if have >= batch_size:
                return np.concatenate(envs)[:batch_size], np.concatenate(positions)[:batch_size]
        raise DataError("could not draw valid transitions from the replay",
                        hint="episodes are shorter than the frame stack; collect more steps")

    def gather(self, env: np.ndarray, pos: np.ndarray) -> TransitionBatch:
        """The n-step transitions at absolute positions `pos` of environments `env` (both (B,) int)."""
        n, cap = self.config.n_step, self.config.rows_per_env
        env = np.asarray(env, np.int64)
        pos = np.asarray(pos, np.int64)
        window = (pos[:, None] + np.arange(n)[None, :]) % cap  # (B, n)
        reward, done, steps = tr.n_step_window(self.rewards[env[:, None], window], self.terminals[env[:, None], window],
                                               self.config.gamma)
        offsets = tr.STACK_OFFSETS[None, :]  # oldest frame first
        state = self.frames[env[:, None], (pos[:, None] + offsets) % cap]
        next_state = self.frames[env[:, None], (pos[:, None] + steps[:, None] + offsets) % cap]
        return TransitionBatch(
            game=np.full(pos.shape, self.game_id, np.int32),
            state=state,
            action=self.actions[env, pos % cap].astype(np.int32),
            reward=reward,
            done=done.astype(np.float32),
            steps=steps.astype(np.int32),
            next_state=next_state,
        )

    def sample(self, batch_size: int) -> TransitionBatch:
        """A TransitionBatch of `batch_size` uniformly drawn valid transitions."""
        return self.gather(*self.sample_indices(batch_size))

    # ---------------------------------------------------------------------------------- checkpointing

    def rows_held(self) -> np.ndarray:
        """(E,) rows currently in each ring."""
        return np.minimum(self.add_count, self.config.rows_per_env)

    def arrays(self) -> dict[str, np.ndarray]:
        """The written rows in slot order, for a checkpoint: frames (E, R, 84, 84) etc., R = max rows held.

        Environments are written in lockstep apart from padding, so R is close to every ring's fill.
        """
        r = int(self.rows_held().max())
        return {"frames": self.frames[:, :r], "actions": self.actions[:, :r], "rewards": self.rewards[:, :r],
                "terminals": self.terminals[:, :r]}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable counters and RNG state (the arrays go through `arrays()`)."""
        return {"add_count": [int(x) for x in self.add_count], "rows": int(self.rows_held().max()),
                "rng": self.rng.bit_generator.state, "config": dataclasses.asdict(self.config)}

    def load(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what `state_dict()` and `arrays()` returned."""
        if state.get("config") != dataclasses.asdict(self.config):
            raise UsageError("the checkpoint's replay was made with other settings",
                             hint=f"resume with the same replay settings ({state.get('config')})")
        r = int(state["rows"])
        for name in ("frames", "actions", "rewards", "terminals"):
            getattr(self, name)[:, :r] = np.asarray(arrays[name])
        self.add_count[:] = np.asarray(state["add_count"], np.int64)
        self.rng.bit_generator.state = state["rng"]

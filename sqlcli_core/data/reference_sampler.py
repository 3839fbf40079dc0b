"""A slow, obviously correct sampler and transition rule, written from the store format's definitions: the
reference the fast `ReplaySampler` (and any new data source) is tested against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.data.view import open_run_set
from sqlcli_core.games.catalog import Game, canonical_name


def reference_is_valid(terminals: Sequence[int], segments: Sequence[Sequence[int]], i: int, n_step: int) -> bool:
    """The spec's rule, one index at a time: stack and next stack inside one segment, no terminal in i-3..i-1."""
    for s, e, *_ in segments:
        if s <= i < e:
            if i - 3 < s or i + n_step > e - 1:
                return False
            return not any(terminals[i - k] for k in (1, 2, 3))
    return False


def reference_transition(stream: dict, i: int, n_step: int, gamma: float) -> dict:
    """One n-step transition at store row i, by the spec, with plain loops (stream: whole-run arrays)."""
    frames, rewards, terminals = stream["frames"], stream["rewards"], stream["terminals"]
    ret = 0.0
    steps = n_step
    done = 0.0
    for k in range(n_step):
        ret += (gamma ** k) * float(rewards[i + k])
        if terminals[i + k]:
            steps, done = k + 1, 1.0
            break
    j = i + steps
    return {"state": np.stack([frames[i - 3], frames[i - 2], frames[i - 1], frames[i]]),
            "action": int(stream["actions"][i]), "reward": np.float32(ret), "done": np.float32(done),
            "steps": steps, "next_state": np.stack([frames[j - 3], frames[j - 2], frames[j - 1], frames[j]])}


class ReferenceSampler:
    """Slow and obviously correct: every run fully decompressed in RAM, transitions built one by one.

    For tests (small stores only): `valid_indices`, `transition`, and `batch(keys)` on the keys that
    ReplaySampler.next_batch_with_keys returns.
    """

    def __init__(self, store: Any, games: Sequence[str] | str | None = None, n_step: int = 3, gamma: float = 0.99):
        data = open_run_set(store)
        names = list(data.games) if games is None else [
            canonical_name(g) for g in (games.split(",") if isinstance(games, str) else games)]
        self.games = [Game(n) for n in names]
        self.n_step, self.gamma = n_step, gamma
        self.streams: dict[tuple[int, int], dict] = {}
        for gi, name in enumerate(names):
            for view in data.runs_of(name):
                rows = view.rows
                arrays = {k: view.arrays[k][:rows] for k in view.arrays} if rows else {}
                self.streams[(gi, view.run)] = arrays | {"segments": [list(s) for s in view.segments]}

    def valid_indices(self, game: int, run: int) -> list[int]:
        s = self.streams[(game, run)]
        return [i for i in range(len(s["terminals"])) if reference_is_valid(s["terminals"], s["segments"], i, self.n_step)]

    def transition(self, game: int, run: int, i: int) -> dict:
        s = self.streams[(game, run)]
        if not reference_is_valid(s["terminals"], s["segments"], i, self.n_step):
            raise ValueError(f"row {i} of game {game} run {run} is not a valid index")
        return reference_transition(s, i, self.n_step, self.gamma)

    def batch(self, keys: np.ndarray) -> TransitionBatch:
        """TransitionBatch for keys (B, 3) = (game index, run number, store row)."""
        ts = [self.transition(int(g), int(r), int(i)) for g, r, i in keys]
        return TransitionBatch(
            game=np.array([k[0] for k in keys], np.int32), state=np.stack([t["state"] for t in ts]),
            action=np.array([t["action"] for t in ts], np.int32), reward=np.array([t["reward"] for t in ts], np.float32),
            done=np.array([t["done"] for t in ts], np.float32), steps=np.array([t["steps"] for t in ts], np.int32),
            next_state=np.stack([t["next_state"] for t in ts]))

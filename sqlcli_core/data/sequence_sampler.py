"""Windows of K consecutive steps from the replay store, for sequence models (the Decision Transformer).

A window is K store rows [i, i+K) of ONE episode of ONE segment, each row one step (its single frame, action,
reward), with the undiscounted return-to-go of every step: the sum of the stored (clipped) rewards from that
step to the episode's terminal. The rule, for a segment [s, e) that starts at stream position p:

- an episode is the rows from just after the previous terminal (or the segment's start) to its terminal j.
  Its first 3 rows are Dopamine's zero padding rows; they may open a window (then the window looks exactly
  like the acting context at an episode's first steps) but they are flagged in `step_mask`. Where the
  segment starts mid-stream (p > 0), rows s..s+2 might be padding of an episode whose start was lost, so its
  first episode begins at s + 3;
- the episode's terminal j must lie in the segment (otherwise its returns-to-go are unknown): the run's
  unfinished last episode and episodes cut by a lost checkpoint give no window;
- the window's rows lie in [episode start, j] and its last row is a real frame (not padding).
So a window never contains a terminal except possibly on its last row, never crosses an episode start or a
segment boundary, and always ends on a step that a policy could act on.

Sampling and memory follow ReplaySampler's scheme (see its docstring): a run's window starts are cut into
units of U rows; a cache of `slots_per_game` units per game holds decompressed rows; each slot holds a unit
drawn with probability proportional to its number of window starts, so every valid window of a game is
drawn with the same marginal probability; slots are replaced round-robin, one unit every reuse * U / B
batches. Slot contents and batches are pure functions of (seed, process_index, step): state_dict() is the
step counter plus the configuration, and load_state_dict() continues bit-identically. Loading is
synchronous here (no background thread).
"""

from __future__ import annotations

import dataclasses
import fractions
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.sampler import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_BYTES_PER_GAME, FRAME_BYTES
from sqlcli_core.data.unit_schedule import UnitSchedule
from sqlcli_core.data.view import ARRAY_NAMES, open_run_set
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game, canonical_name

STATE_FORMAT = "sql-sequence-sampler"
STATE_VERSION = 1


class SequenceBatch(NamedTuple):
    """A batch of K-step windows from one or many games (B windows, T = K steps, oldest first)."""

    game: np.ndarray  # (B,) int32: index into the sampler's game list
    frames: np.ndarray  # (B, T, 84, 84) uint8: the step's single frame (zeros on padding rows)
    action: np.ndarray  # (B, T) int32: index into the game's minimal action set
    reward: np.ndarray  # (B, T) float32: the stored (clipped) reward of taking the action
    return_to_go: np.ndarray  # (B, T) float32: sum of rewards from this step to the episode's terminal
    terminal: np.ndarray  # (B, T) float32: 1.0 on the episode's last step (only ever the window's last)
    step_mask: np.ndarray  # (B, T) float32: 1.0 real step, 0.0 padding row before the episode's first frame


@dataclasses.dataclass(frozen=True)
class Episodes:
    """The complete episodes of one run and the window starts they allow (all (E,) int64, row-sorted)."""

    first_real: np.ndarray  # first non-padding row
    end: np.ndarray  # terminal row
    lo: np.ndarray  # first valid window start
    count: np.ndarray  # valid window starts: lo .. lo + count - 1
    cum: np.ndarray  # (E + 1,) starts before each episode's interval

    def starts_below(self, x: np.ndarray) -> np.ndarray:
        """Number of valid window starts < x (vectorised)."""
        x = np.asarray(x, np.int64)
        if len(self.lo) == 0:
            return np.zeros(x.shape, np.int64)
        k = np.searchsorted(self.lo, x, side="right") - 1
        inside = np.clip(x - self.lo[np.maximum(k, 0)], 0, self.count[np.maximum(k, 0)])
        return np.where(k >= 0, self.cum[np.maximum(k, 0)] + inside, 0)

    def start_at(self, m: np.ndarray) -> np.ndarray:
        """The m-th valid window start (0-based), the inverse of starts_below."""
        k = np.searchsorted(self.cum, m, side="right") - 1
        return self.lo[k] + (m - self.cum[k])


def find_episodes(terminal_rows: np.ndarray, segments: Sequence[Sequence[int]], window: int) -> Episodes:
    """The rule of the module docstring, on a run's sorted terminal rows and its segments."""
    pad = rf.PADDING_ROWS
    first_real, end, lo = [], [], []
    for s, e, stream_start in segments:
        ends = terminal_rows[(terminal_rows >= s) & (terminal_rows < e)]
        if len(ends) == 0:
            continue
        start = np.concatenate([[s if stream_start == 0 else s + pad], ends[:-1] + 1])
        real = np.concatenate([[s + pad], ends[:-1] + 1 + pad])
        first_real.append(real)
        end.append(ends)
        lo.append(np.maximum(start, real - window + 1))
    if not end:
        z = np.zeros(0, np.int64)
        return Episodes(z, z, z, z, np.zeros(1, np.int64))
    first_real, end, lo = (np.concatenate(a).astype(np.int64) for a in (first_real, end, lo))
    count = np.maximum(end - window + 1 - lo + 1, 0)
    keep = count > 0
    first_real, end, lo, count = first_real[keep], end[keep], lo[keep], count[keep]
    return Episodes(first_real, end, lo, count, np.concatenate([[0], np.cumsum(count)]).astype(np.int64))


def returns_to_go(rewards: np.ndarray, terminals: np.ndarray) -> np.ndarray:
    """(n,) float32: sum of rewards[r..j] with j the first terminal at or after r; NaN after the last one."""
    rows = len(rewards)
    suffix = np.concatenate([np.cumsum(rewards[::-1].astype(np.float64))[::-1], [0.0]])  # suffix[r] = sum r..n-1
    ends = np.flatnonzero(terminals)
    nxt = np.searchsorted(ends, np.arange(rows), side="left")
    known = nxt < len(ends)
    j = ends[np.minimum(nxt, max(len(ends) - 1, 0))] if len(ends) else np.zeros(rows, np.int64)
    out = np.where(known, suffix[np.arange(rows)] - suffix[np.minimum(j + 1, rows)], np.nan)
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Run:
    game_index: int
    run: int
    rows: int
    terminal_rows: np.ndarray
    episodes: Episodes
    unit_counts: np.ndarray  # (units,) window starts owned by each unit


def _terminal_rows(arrays, rows: int, block: int = 1 << 22) -> np.ndarray:
    terms = arrays["terminals"]
    found = [np.flatnonzero(terms[lo:min(rows, lo + block)]) + lo for lo in range(0, rows, block)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


class SequenceSampler(UnitSchedule):
    """Batches of K-step windows from many games of a replay store (see the module docstring).

    Args:
      store: path or URL of the store, its root zarr group, or a `data.view.RunSet` (runs, segments, arrays).
      games: game names (list or comma string) in the order that batch `game` ids index; None = all.
      batch_size: B. window: K, steps per window (the Decision Transformer's context).
      seed: everything is a function of (seed, process_index, step).
      game_weights: per-game sampling probabilities (normalised); None = uniform over games.
      cache_bytes: bytes of decompressed units kept in RAM; None = ReplaySampler's default (256 MiB per game,
        at least 2 GiB).
      process_index, process_count: this host's stream among process_count independent ones.
      unit_rows: rows per unit (default 4 frame chunks of the first run with rows).
      reuse: how many times a loaded window start is sampled on average before its unit is replaced.
      runs: restrict to these run numbers (None = all runs of each game).
    """

    def __init__(self, store: Any, games: Sequence[str] | str | None = None, batch_size: int = 32, window: int = 4,
                 seed: int = 0, game_weights: Sequence[float] | None = None, cache_bytes: int | None = None,
                 process_index: int = 0, process_count: int = 1, *, unit_rows: int | None = None,
                 reuse: float = 4.0, runs: Sequence[int] | None = None):
        if batch_size < 1 or window < 1:
            raise UsageError(f"bad sequence sampler settings batch_size={batch_size} window={window}",
                             hint="batch_size >= 1, window >= 1")
        if not 0 <= process_index < process_count:
            raise UsageError(f"process_index {process_index} outside [0, {process_count})")
        if reuse <= 0 or (unit_rows is not None and unit_rows < 1):
            raise UsageError(f"reuse {reuse} and unit_rows {unit_rows} must be positive")
        data = open_run_set(store)
        if games is None:
            names = list(data.games)
        else:
            names = [canonical_name(g) for g in (games.split(",") if isinstance(games, str) else games)]
            data.check_games(names)
        self.games = [Game(n) for n in names]
        G = len(names)
        w = np.full(G, 1.0 / G) if game_weights is None else np.asarray(game_weights, np.float64)
        if w.shape != (G,) or (w < 0).any() or w.sum() <= 0:
            raise UsageError(f"game_weights needs {G} non-negative numbers, got {list(game_weights or [])}")
        self.game_weights = w / w.sum()
        self.batch_size, self.window, self.seed = batch_size, window, int(seed)
        self.process_index, self.process_count = process_index, process_count
        self.reuse = fractions.Fraction(reuse).limit_denominator(1000)

        self._arrays: list[dict] = []
        found: list[tuple[int, int, int, np.ndarray, Episodes]] = []
        for gi, name in enumerate(names):
            for view in data.runs_of(name, runs):
                if view.rows == 0:
                    continue
                if unit_rows is None:
                    unit_rows = 4 * view.frame_chunk
                terminal_rows = _terminal_rows(view.arrays, view.rows)
                episodes = find_episodes(terminal_rows, view.segments, window)
                self._arrays.append({k: view.arrays[k] for k in ARRAY_NAMES})
                found.append((gi, view.run, view.rows, terminal_rows, episodes))
        if not found:
            raise UsageError("no rows to sample in the selected games/runs")
        self.unit_rows = U = int(unit_rows)
        self._runs = []
        for gi, run, rows, terminal_rows, episodes in found:
            bounds = np.arange(0, rows + U, U)
            self._runs.append(_Run(gi, run, rows, terminal_rows, episodes, np.diff(episodes.starts_below(bounds))))
        self._game_units = []
        for gi in range(G):
            rid, uid, cnt = [], [], []
            for ri, r in enumerate(self._runs):
                if r.game_index == gi:
                    nz = np.flatnonzero(r.unit_counts)
                    rid.append(np.full(len(nz), ri))
                    uid.append(nz)
                    cnt.append(r.unit_counts[nz])
            if not cnt or sum(int(c.sum()) for c in cnt) == 0:
                raise UsageError(f"{names[gi]}: no complete episode holds a window of {window} steps",
                                 hint="shard more checkpoints of it, or drop it from games")
            self._game_units.append((np.concatenate(rid), np.concatenate(uid), np.cumsum(np.concatenate(cnt))))
        self.valid_counts = [int(gu[2][-1]) for gu in self._game_units]

        self.slot_rows = R = U + window - 1
        slot_bytes = R * (FRAME_BYTES + 4 + 4 + 4 + 1 + 1)
        if cache_bytes is None:
            cache_bytes = max(DEFAULT_CACHE_BYTES, DEFAULT_CACHE_BYTES_PER_GAME * G)
        self.slots_per_game = int(cache_bytes // slot_bytes // G)
        if self.slots_per_game < 1:
            raise UsageError(f"cache_bytes={cache_bytes} holds no unit per game ({G} games, {slot_bytes} bytes a unit)",
                                hint=f"give at least {G * slot_bytes} bytes or lower unit_rows")
        self.slots = K = self.slots_per_game * G
        self._frames = np.zeros((K, R, *rf.FRAME_SHAPE), np.uint8)
        self._actions = np.zeros((K, R), np.int32)
        self._rewards = np.zeros((K, R), np.float32)
        self._rtg = np.zeros((K, R), np.float32)
        self._terminals = np.zeros((K, R), np.uint8)
        self._real = np.zeros((K, R), bool)
        self._slot_unit = np.full((K, 2), -1, np.int64)  # (run id, unit) each slot holds
        self._applied = -1  # replacement events reflected in the cache; -1 = cache not built
        self._step = 0
        self.last_keys: np.ndarray | None = None

    # ------------------------------------------------------------------------------ loading

    def _load(self, slot: int, run_id: int, unit: int) -> None:
        if tuple(self._slot_unit[slot]) == (run_id, unit):
            return
        r, arrays = self._runs[run_id], self._arrays[run_id]
        lo = unit * self.unit_rows
        hi = min(r.rows, lo + self.slot_rows)
        n = hi - lo
        # Returns-to-go need the rewards up to the terminal of the episode holding the unit's last row.
        k = np.searchsorted(r.terminal_rows, hi - 1, side="left")
        reward_end = int(r.terminal_rows[k]) + 1 if k < len(r.terminal_rows) else r.rows
        rewards = arrays["rewards"][lo:reward_end]
        terminals = arrays["terminals"][lo:reward_end]
        self._frames[slot, :n] = arrays["frames"][lo:hi]
        self._actions[slot, :n] = arrays["actions"][lo:hi]
        self._rewards[slot, :n] = rewards[:n]
        self._terminals[slot, :n] = terminals[:n]
        self._rtg[slot, :n] = returns_to_go(rewards, terminals)[:n]
        ep = r.episodes
        owner = np.searchsorted(ep.end, np.arange(lo, hi), side="left")  # episode whose end is the next one
        owner = np.minimum(owner, max(len(ep.end) - 1, 0))
        self._real[slot, :n] = (np.arange(lo, hi) >= ep.first_real[owner]) if len(ep.end) else False
        self._slot_unit[slot] = (run_id, unit)

    def _sync_cache(self, t: int) -> None:
        """Make the cache hold what it must at batch t (only the changed slots are read)."""
        events = self._events_before(t)
        if self._applied < 0 or events < self._applied or events - self._applied >= self.slots:
            for slot in range(self.slots):
                self._load(slot, *self._slot_unit_at(slot, events))
        else:
            for e in range(self._applied, events):
                slot = e % self.slots
                self._load(slot, *self._slot_unit_at(slot, e + 1))
        self._applied = events

    # ------------------------------------------------------------------------------ batches

    def _batch(self, t: int) -> tuple[SequenceBatch, np.ndarray]:
        self._sync_cache(t)
        B, K = self.batch_size, self.window
        rng = self._rng(2, t)
        G = len(self.games)
        game = rng.choice(G, size=B, p=self.game_weights) if G > 1 else np.zeros(B, np.int64)
        slot = game * self.slots_per_game + rng.integers(0, self.slots_per_game, size=B)
        run_id, unit = self._slot_unit[slot, 0], self._slot_unit[slot, 1]
        u = rng.random(B)
        start = np.zeros(B, np.int64)
        for i in range(B):  # B small searches; vectorising over runs would need per-run grouping
            ep = self._runs[run_id[i]].episodes
            first, last = ep.starts_below(np.array([unit[i], unit[i] + 1]) * self.unit_rows)
            m = min(first + int(u[i] * (last - first)), last - 1)
            start[i] = ep.start_at(m)
        local = (start - unit * self.unit_rows)[:, None] + np.arange(K)
        s = slot[:, None]
        batch = SequenceBatch(
            game=game.astype(np.int32), frames=self._frames[s, local], action=self._actions[s, local],
            reward=self._rewards[s, local], return_to_go=self._rtg[s, local],
            terminal=self._terminals[s, local].astype(np.float32), step_mask=self._real[s, local].astype(np.float32))
        if not np.isfinite(batch.return_to_go).all():
            raise DataError("a sampled window has no known return-to-go", hint="do not shard into a store while sampling it")
        runs = np.array([r.run for r in self._runs], np.int64)
        return batch, np.stack([game, runs[run_id], start], axis=1)

    def next_batch_with_keys(self) -> tuple[SequenceBatch, np.ndarray]:
        """The next batch and its keys (B, 3) int64: game index, run number, store row of the window's first step."""
        batch, keys = self._batch(self._step)
        self._step += 1
        self.last_keys = keys
        return batch, keys

    def next_batch(self) -> SequenceBatch:
        return self.next_batch_with_keys()[0]

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------------------ state

    def _config(self) -> dict:
        return {"games": [g.name for g in self.games], "game_weights": [float(x) for x in self.game_weights],
                "batch_size": self.batch_size, "window": self.window, "seed": self.seed,
                "process_index": self.process_index, "process_count": self.process_count,
                "unit_rows": self.unit_rows, "slots_per_game": self.slots_per_game,
                "reuse": [self.reuse.numerator, self.reuse.denominator],
                "runs": [[self.games[r.game_index].name, r.run, r.rows] for r in self._runs]}

    def state_dict(self) -> dict:
        """JSON-serialisable state: the number of batches handed out, and the settings it is valid for."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "step": self._step, "config": self._config()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict(): the following batches equal those the saved sampler would give."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError("not a sequence sampler state", hint="pass what SequenceSampler.state_dict() returned")
        mine = self._config()
        for key, value in state["config"].items():
            if key != "process_index" and mine.get(key) != value:
                raise UsageError(f"sampler state was saved with {key}={value}, this sampler has {mine.get(key)}",
                                 hint="build the sampler with the same store, games, batch size, window, seed and cache")
        self.process_index = int(state["config"]["process_index"])
        self._step = int(state["step"])
        self._applied = -1
        self._slot_unit[:] = -1

    def close(self) -> None:
        """Nothing runs in the background; kept for the ReplaySampler interface."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Episodes", "SequenceBatch", "SequenceSampler", "find_episodes", "returns_to_go"]

"""Multi-game n-step transition sampling from the replay store, with bounded memory.

Random single-frame reads from Zarr decompress a whole chunk each (2-3.5k frames/s), while a numpy
gather from frames already in RAM reaches ~330k transitions/s when it writes frame-major (B, 4, 84, 84).
So the sampler keeps a cache of decompressed *units* (a few consecutive chunks of one run) in one
preallocated array, gathers batches from it with one fancy index, and replaces units in the background.

Units and uniformity. A run's rows are cut into units of U rows (U = unit_chunks * frame chunk); unit a
owns the indices [aU + 3, (a+1)U + 3) and holds rows [aU, (a+1)U + 3 + n) so that every owned index has
its stack and next stack inside the unit. The cache has K slots per game. Every slot's content is a
unit drawn with probability proportional to its number of valid indices (over all runs of the game),
independently of everything else; a sample of game g picks one of g's slots uniformly and an index
uniformly among that unit's valid ones. So each valid index of g is drawn with probability exactly
1 / (valid indices of g) per sample, in expectation over the cache contents: the marginal is uniform.
What the cache costs is correlation: the samples of one batch come from at most K units of a game, and a
unit stays resident for K / (B / (reuse * U)) batches. Slots are replaced round-robin on a fixed schedule,
one unit every reuse * U / B batches, so each loaded row is used `reuse` times on average.

Determinism. Batch t is a pure function of (seed, process_index, t) and the cache content at t, which is
itself a pure function of (seed, process_index, t): slot contents are drawn by event number with their
own seeded generators. So state_dict() is just the step counter plus the configuration, and restoring
rebuilds the cache for that step. Background threads only compute ahead; they never change results.

Hosts. Each process samples an independent stream (its seeds include process_index) from the whole
store; there is no coordination and no duplicated *batch* (distinct streams), which is what data-parallel
training on i.i.d. minibatches needs.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import fractions
import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data import transitions as tr
from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.data.unit_schedule import UnitSchedule
from sqlcli_core.data.view import RunView, open_run_set
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game, canonical_name

DEFAULT_CACHE_BYTES = 2 << 30  # at least this much by default (up to 8 games: ~18 units per game or more)
DEFAULT_CACHE_BYTES_PER_GAME = 256 << 20  # ~18 units of 2048 rows per game (docs/sampler.md: correlation)
SPARE_SLOTS = 2  # default prefetch_units: slots the loader threads decode into ahead of the schedule
STATE_FORMAT = "sql-replay-sampler"
STATE_VERSION = 1
FRAME_BYTES = rf.FRAME_SHAPE[0] * rf.FRAME_SHAPE[1]
FILL_THREADS = 4  # units loaded at once when the cache is (re)filled


def slot_bytes(unit_rows: int, n_step: int) -> int:
    """Bytes of one cache slot: a unit's rows plus its halo (frames, actions, rewards, terminals) and its valid list."""
    return (unit_rows + rf.PADDING_ROWS + n_step) * (FRAME_BYTES + 9) + unit_rows * 4


def default_cache_bytes(num_games: int) -> int:
    """The cache when none is given: the larger of DEFAULT_CACHE_BYTES and DEFAULT_CACHE_BYTES_PER_GAME per game."""
    return max(DEFAULT_CACHE_BYTES, DEFAULT_CACHE_BYTES_PER_GAME * num_games)


def cache_slots(cache_bytes: int, num_games: int, unit_rows: int, n_step: int, spares: int = SPARE_SLOTS) -> int:
    """Units per game that `cache_bytes` holds (after the `spares` slots the loader decodes into)."""
    return int((cache_bytes // slot_bytes(unit_rows, n_step) - spares) // num_games)


@dataclasses.dataclass(frozen=True)
class _Run:
    game_index: int
    run: int
    rows: int
    segments: tuple  # ((row_start, row_end, stream_start), ...)
    unit_valid: np.ndarray  # (units,) valid indices owned by each unit


def _unit_valid_counts(view: RunView, n_step: int, unit_rows: int) -> np.ndarray:
    """Valid indices owned by each unit, read from the terminals in blocks (bounded memory)."""
    rows, segments = view.rows, view.segments
    units = max(0, -(-(rows - rf.PADDING_ROWS) // unit_rows))
    counts = np.zeros(units, dtype=np.int64)
    block_units = max(1, (1 << 22) // unit_rows)
    terms = view.arrays["terminals"]
    for u0 in range(0, units, block_units):
        u1 = min(units, u0 + block_units)
        lo, hi = u0 * unit_rows, min(rows, u1 * unit_rows + rf.PADDING_ROWS)
        mask = tr.valid_mask(terms[lo:hi], segments, n_step, offset=lo)
        idx = np.flatnonzero(mask[rf.PADDING_ROWS:]) + lo  # = owned index - 3
        counts[u0:u1] = np.bincount(idx // unit_rows - u0, minlength=u1 - u0)[: u1 - u0]
    return counts


class ReplaySampler(UnitSchedule):
    """Batches of n-step transitions from many games of a replay store (see the module docstring).

    Args:
      store: a run set (`sqlcli_core.data.view`), or a store's path, URL or root zarr group.
      games: game names (list or comma string) in the order that batch `game` ids index; None = all.
      batch_size: B.
      n_step, gamma: the n-step return sum_{k<steps} gamma^k r_{i+k}; steps stops after a terminal.
      seed: everything is a function of (seed, process_index, step).
      game_weights: per-game sampling probabilities (normalised); None = uniform over games.
      cache_bytes: bytes of decompressed units kept in RAM (frames + actions/rewards/terminals); None =
        `default_cache_bytes(games)`, about 18 units per game (see docs/sampler.md on correlation).
      process_index, process_count: this host's stream among process_count independent ones.
      unit_chunks: chunks of `frames` per unit (unit rows U = unit_chunks * chunk).
      reuse: how many times a loaded row is sampled on average before its unit is replaced.
      prefetch: batches computed ahead on the background thread.
      prefetch_units: units loaded ahead of their turn, concurrently (one loader thread each, into spare
        cache slots). Hides a store's latency (object storage); memory counts against cache_bytes.
      runs: restrict to these run numbers (None = all runs of each game).
    """

    def __init__(self, store: Any, games: Sequence[str] | str | None = None, batch_size: int = 32, n_step: int = 3,
                 gamma: float = 0.99, seed: int = 0, game_weights: Sequence[float] | None = None,
                 cache_bytes: int | None = None, process_index: int = 0, process_count: int = 1, *,
                 unit_chunks: int = 4, reuse: float = 4.0, prefetch: int = 2, prefetch_units: int = SPARE_SLOTS,
                 runs: Sequence[int] | None = None):
        if batch_size < 1 or n_step < 1 or not 0.0 <= gamma <= 1.0:
            raise UsageError(f"bad sampler settings batch_size={batch_size} n_step={n_step} gamma={gamma}",
                             hint="batch_size >= 1, n_step >= 1, 0 <= gamma <= 1")
        if not 0 <= process_index < process_count:
            raise UsageError(f"process_index {process_index} outside [0, {process_count})")
        if reuse <= 0:
            raise UsageError(f"reuse {reuse} must be positive")
        if prefetch_units < 1:
            raise UsageError(f"prefetch_units {prefetch_units} must be at least 1")
        self._data = open_run_set(store)
        if games is None:
            names = list(self._data.games)
        else:
            names = [canonical_name(g) for g in (games.split(",") if isinstance(games, str) else games)]
            self._data.check_games(names)
        self.games = [Game(n) for n in names]
        G = len(self.games)
        if game_weights is None:
            w = np.full(G, 1.0 / G)
        else:
            w = np.asarray(game_weights, dtype=np.float64)
            if w.shape != (G,) or (w < 0).any() or w.sum() <= 0:
                raise UsageError(f"game_weights needs {G} non-negative numbers, got {list(game_weights)}")
            w = w / w.sum()
        self.game_weights = w
        self.batch_size, self.n_step, self.gamma, self.seed = batch_size, n_step, float(gamma), int(seed)
        self.process_index, self.process_count = process_index, process_count
        self.reuse = fractions.Fraction(reuse).limit_denominator(1000)
        self.prefetch = prefetch

        # ---- runs, units, valid counts
        self._runs: list[_Run] = []
        self._arrays: list = []
        views: list[RunView] = []
        chunk = None
        for gi, name in enumerate(names):
            for view in self._data.runs_of(name, runs):
                if view.rows == 0:
                    continue
                c = view.frame_chunk
                chunk = chunk or c
                if c != chunk:
                    raise UsageError(f"{name}/{view.run}: frames chunk {c} differs from {chunk} of the other runs",
                                     hint="re-shard the runs with one --frame-chunk")
                views.append(view)
                self._arrays.append(view.arrays)
                self._runs.append(_Run(gi, view.run, view.rows, view.segments, None))
        if not self._runs:
            raise UsageError("no rows to sample in the selected games/runs")
        self.unit_rows = U = unit_chunks * chunk
        with cf.ThreadPoolExecutor(min(16, len(views))) as pool:  # concurrent reads: a remote store's latency
            counts = list(pool.map(lambda v: _unit_valid_counts(v, n_step, U), views))
        self._runs = [dataclasses.replace(r, unit_valid=c) for r, c in zip(self._runs, counts)]
        self._game_units = []  # per game: (run ids, unit ids, cumulative valid counts)
        for gi in range(G):
            rid, uid, cnt = [], [], []
            for ri, r in enumerate(self._runs):
                if r.game_index == gi:
                    nz = np.flatnonzero(r.unit_valid)
                    rid.append(np.full(len(nz), ri))
                    uid.append(nz)
                    cnt.append(r.unit_valid[nz])
            if not cnt or sum(c.sum() for c in cnt) == 0:
                raise UsageError(f"{names[gi]}: no transition can be sampled with n_step={n_step}",
                                 hint="shard more checkpoints of it, or drop it from games")
            self._game_units.append((np.concatenate(rid), np.concatenate(uid), np.cumsum(np.concatenate(cnt))))
        self.valid_counts = [int(gu[2][-1]) for gu in self._game_units]

        # ---- cache geometry
        self.slot_rows = R = U + rf.PADDING_ROWS + n_step
        self.spares = int(prefetch_units)
        self.cache_bytes = int(default_cache_bytes(G) if cache_bytes is None else cache_bytes)
        self.slots_per_game = cache_slots(self.cache_bytes, G, U, n_step, spares=self.spares)
        if self.slots_per_game < 1:
            need = (G + self.spares) * slot_bytes(U, n_step)
            raise UsageError(f"cache_bytes={self.cache_bytes} holds no unit per game ({G} games, "
                                f"{slot_bytes(U, n_step)} bytes a unit)",
                                hint=f"set cache_bytes (`--cache-bytes` of pretrain and finetune-offline) to at least {need}")
        self.slots = K = self.slots_per_game * G
        P = K + self.spares
        self._frames = np.zeros((P * R, *rf.FRAME_SHAPE), dtype=np.uint8)
        self._actions = np.zeros((P, R), dtype=np.int32)
        self._rewards = np.zeros((P, R), dtype=np.float32)
        self._terminals = np.zeros((P, R), dtype=np.uint8)
        self._valid = np.zeros((P, U), dtype=np.int32)
        self._nvalid = np.zeros(P, dtype=np.int64)
        self._slot_run = np.zeros(P, dtype=np.int64)
        self._slot_start = np.zeros(P, dtype=np.int64)
        self._step = 0
        self._threads: list[threading.Thread] = []
        self._running = False
        self.last_keys: np.ndarray | None = None

    # ------------------------------------------------------------------------------ loading

    def _load(self, phys: int, run_id: int, unit: int) -> None:
        """Decompress one unit into physical slot `phys` and list its valid owned rows."""
        r, arrays = self._runs[run_id], self._arrays[run_id]
        lo = unit * self.unit_rows
        hi = min(r.rows, lo + self.slot_rows)
        n = hi - lo
        R = self.slot_rows
        # The four arrays are read at once (zarr itself fetches the chunks of each read concurrently): in
        # object storage a unit then costs about one round trip instead of four.
        small = {k: self._io_pool().submit(arrays[k].__getitem__, slice(lo, hi)) for k in ("actions", "rewards", "terminals")}
        self._frames[phys * R:phys * R + n] = arrays["frames"][lo:hi]
        self._actions[phys, :n] = small["actions"].result()
        self._rewards[phys, :n] = small["rewards"].result()
        terms = small["terminals"].result()
        self._terminals[phys, :n] = terms
        self._terminals[phys, n:] = 0
        mask = tr.valid_mask(terms, r.segments, self.n_step, offset=lo)
        own = np.flatnonzero(mask[rf.PADDING_ROWS:rf.PADDING_ROWS + self.unit_rows]) + rf.PADDING_ROWS
        if len(own) != r.unit_valid[unit]:  # the store changed under us
            raise DataError(f"{self.games[r.game_index].name}/{r.run}: unit {unit} has {len(own)} valid rows, "
                               f"counted {r.unit_valid[unit]} at start", hint="do not shard into a store while sampling it")
        self._valid[phys, :len(own)] = own
        self._nvalid[phys] = len(own)
        self._slot_run[phys] = run_id
        self._slot_start[phys] = lo

    def _io_pool(self) -> cf.ThreadPoolExecutor:
        """Threads for the small arrays' reads of concurrent unit loads (a bounded pool of requests)."""
        if getattr(self, "_io", None) is None:
            self._io = cf.ThreadPoolExecutor(3 * max(FILL_THREADS, self.spares), thread_name_prefix="sampler-io")
        return self._io

    def _start(self) -> None:
        """Fill the cache for the current step and start the loader threads and the producer thread."""
        t0 = self._step
        ev = self._events_before(t0)
        self._logical = np.arange(self.slots, dtype=np.int64)  # logical slot -> physical slot
        with cf.ThreadPoolExecutor(max(FILL_THREADS, self.spares)) as pool:
            list(pool.map(lambda s: self._load(s, *self._slot_unit_at(s, ev)), range(self.slots)))
        self._free: list[int] = list(range(self.slots, self.slots + self.spares))
        self._ready: dict[int, int] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._out: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        self._next_event = ev
        self._threads = [threading.Thread(target=self._loader, daemon=True, name=f"sampler-loader-{k}")
                         for k in range(self.spares)]
        self._threads.append(threading.Thread(target=self._producer, args=(t0, ev), daemon=True, name="sampler-producer"))
        self._running = True
        for th in self._threads:
            th.start()

    def _loader(self) -> None:
        """One of `prefetch_units` loaders: takes the next event and a free spare slot, loads its unit."""
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._free and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
                    phys = self._free.pop()
                    e = self._next_event
                    self._next_event += 1
                self._load(phys, *self._event_unit(e))
                with self._cond:
                    self._ready[e] = phys
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced by next_batch
            self._error = exc
            self._stop.set()

    def _producer(self, t: int, applied: int) -> None:
        try:
            while not self._stop.is_set():
                due = self._events_before(t)
                while applied < due:
                    with self._cond:
                        while applied not in self._ready and not self._stop.is_set():
                            self._cond.wait(0.1)
                        if self._stop.is_set():
                            return
                        phys = self._ready.pop(applied)
                        slot = applied % self.slots
                        self._free.append(int(self._logical[slot]))
                        self._logical[slot] = phys
                        self._cond.notify_all()
                    applied += 1
                item = (t, *self._batch(t))
                while not self._stop.is_set():
                    try:
                        self._out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                t += 1
        except BaseException as exc:  # noqa: BLE001 - surfaced by next_batch
            self._error = exc
            self._stop.set()

    # ------------------------------------------------------------------------------ batches

    def _batch(self, t: int) -> tuple[TransitionBatch, np.ndarray]:
        """Batch t from the current cache: (TransitionBatch, keys (B, 3) = game, run, store row)."""
        B, n = self.batch_size, self.n_step
        rng = self._rng(2, t)
        G = len(self.games)
        game = rng.choice(G, size=B, p=self.game_weights) if G > 1 else np.zeros(B, dtype=np.int64)
        slot = game * self.slots_per_game + rng.integers(0, self.slots_per_game, size=B)
        phys = self._logical[slot]
        nval = self._nvalid[phys]
        pick = np.minimum((rng.random(B) * nval).astype(np.int64), nval - 1)
        local = self._valid[phys, pick].astype(np.int64)
        flat = phys * self.slot_rows + local
        win = local[:, None] + np.arange(n)
        ret, done, steps = tr.n_step_window(self._rewards[phys[:, None], win], self._terminals[phys[:, None], win],
                                            self.gamma)
        state = self._frames[flat[:, None] + tr.STACK_OFFSETS]
        next_state = self._frames[(flat + steps)[:, None] + tr.STACK_OFFSETS]
        batch = TransitionBatch(
            game=game.astype(np.int32), state=state, action=self._actions[phys, local],
            reward=ret, done=done.astype(np.float32), steps=steps.astype(np.int32),
            next_state=next_state)
        runs = np.array([r.run for r in self._runs], dtype=np.int64)
        keys = np.stack([game, runs[self._slot_run[phys]], self._slot_start[phys] + local], axis=1)
        return batch, keys

    def next_batch_with_keys(self) -> tuple[TransitionBatch, np.ndarray]:
        """The next batch and its keys (B, 3) int64: game index, run number, store row of the index i."""
        if not self._running:
            self._start()
        while True:
            if self._error is not None:
                err, self._error = self._error, None
                self._stop_threads()
                raise err
            try:
                t, batch, keys = self._out.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        assert t == self._step, (t, self._step)
        self._step += 1
        self.last_keys = keys
        return batch, keys

    def next_batch(self) -> TransitionBatch:
        """The next TransitionBatch (frame-major (B, 4, 84, 84) uint8 states)."""
        return self.next_batch_with_keys()[0]

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------------------ state

    def _config(self) -> dict:
        return {"games": [g.name for g in self.games], "game_weights": [float(x) for x in self.game_weights],
                "batch_size": self.batch_size, "n_step": self.n_step, "gamma": self.gamma, "seed": self.seed,
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
            raise UsageError("not a replay sampler state", hint="pass what ReplaySampler.state_dict() returned")
        mine = self._config()
        for key, value in state["config"].items():
            if key == "process_index":
                continue  # a host may take over another's stream deliberately
            if mine.get(key) != value:
                raise UsageError(f"sampler state was saved with {key}={value}, this sampler has {mine.get(key)}",
                                 hint="build the sampler with the same store, games, batch size, seed and cache_bytes")
        self._stop_threads()
        self.process_index = int(state["config"]["process_index"])
        self._step = int(state["step"])

    def _stop_threads(self) -> None:
        if not self._running:
            return
        self._stop.set()
        for th in self._threads:
            th.join()
        self._threads = []
        self._running = False
        if getattr(self, "_io", None) is not None:
            self._io.shutdown(wait=True)
            self._io = None

    def close(self) -> None:
        """Stop the background threads (the sampler can be used again: it restarts at its step)."""
        self._stop_threads()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def uniformity_report(self) -> dict:
        """How far from i.i.d. uniform the cache makes batches: the numbers the docs discuss."""
        B = self.batch_size
        batches_resident = self.slots * self.reuse * self.unit_rows / B
        return {"slots_per_game": self.slots_per_game, "unit_rows": self.unit_rows,
                "units_replaced_per_batch": float(B / (self.reuse * self.unit_rows)),
                "batches_a_unit_stays": float(batches_resident),
                "rows_resident_per_game": self.slots_per_game * self.unit_rows,
                "valid_per_game": self.valid_counts,
                "marginal": "uniform over each game's valid indices (exact in expectation)"}


# ------------------------------------------------------------------------------------- reference







"""The data view between stores and samplers: a run set of runs, each with its segments and arrays.

Samplers read data only through this view; where the rows come from is the business of whoever builds
it (`open_run_set` for a Zarr replay store, or any other source that can hand out sliceable arrays):

- `RunView`: one run of one game: its arrays (`frames` (rows, 84, 84) uint8, `actions` int32, `rewards`
  float32, `terminals` uint8, each sliceable as `a[lo:hi]`; `frames` has `.chunks`), the number of rows
  that may be read, and its **segments** `((row_start, row_end, stream_start), ...)`: the row ranges
  with no lost stream position inside them. No stack or n-step window crosses a segment boundary.
- A **row selection** is a run whose segments list only the chosen rows (`RunView.select`): the arrays
  stay the store's own, nothing is copied, and the sampler's validity rule keeps every transition
  inside the selection.
- Reads of a store's arrays fail with one DataError naming game/run/array/chunk when a chunk is missing or
  corrupt, never with zeros (`store.checked_arrays`).
- `RunSet`: the games a source holds (in sorted order) and its runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlcli_core.data import store as st
from sqlcli_core.data.store.checked_arrays import (
    DAMAGED_HINT,
    checked_arrays,
    checked_root,
    describe,
    structure_problems,
)
from sqlcli_core.errors import DataError, UsageError

ARRAY_NAMES = ("frames", "actions", "rewards", "terminals")
Segment = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class RunView:
    """One run of one game, as samplers see it (see the module docstring)."""

    game: str
    run: int
    rows: int  # rows that may be read: the committed rows, or the end of the last selected segment
    segments: tuple[Segment, ...]  # ((row_start, row_end, stream_start), ...), in row order
    arrays: Mapping[str, Any]  # ARRAY_NAMES -> sliceable arrays (zarr.Array, numpy); empty when rows == 0
    checkpoints: tuple[dict, ...] = ()  # the store's completion records (docs/store-format.md), if any
    location: str = ""  # where the run lives, for messages

    @property
    def frame_chunk(self) -> int:
        """Rows per chunk of `frames` (1 for an unchunked array)."""
        chunks = getattr(self.arrays["frames"], "chunks", None)
        return int(chunks[0]) if chunks else 1

    def select(self, segments: Iterable[Sequence[int]]) -> RunView:
        """The same run restricted to `segments` (row ranges inside this run's own segments)."""
        segs = tuple((int(s), int(e), int(ss)) for s, e, ss, *_ in segments)
        return dataclasses.replace(self, segments=segs, rows=max((e for _, e, _ in segs), default=0))


@dataclasses.dataclass(frozen=True)
class RunSet:
    """The games a source holds (`games`, sorted, including games without rows) and its runs."""

    games: tuple[str, ...]
    runs: tuple[RunView, ...]
    location: str = ""

    def runs_of(self, game: str, runs: Iterable[int] | None = None) -> list[RunView]:
        """The runs of `game` (optionally only the run numbers `runs`), in run order."""
        wanted = None if runs is None else {int(r) for r in runs}
        return sorted((r for r in self.runs if r.game == game and (wanted is None or r.run in wanted)),
                      key=lambda r: r.run)

    def check_games(self, names: Sequence[str]) -> None:
        """UsageError naming the games of `names` that this set does not hold."""
        missing = [g for g in names if g not in self.games]
        if missing:
            raise UsageError(f"games {missing} are not in the store", hint=f"it holds {', '.join(self.games)}")


def open_run_set(source: Any, games: Iterable[str] | None = None, runs: Iterable[int] | None = None) -> RunSet:
    """The run set of a replay store: `source` is a RunSet (returned as is), a store's root group, a path or a
    URL (see `store.store_location`). `games` / `runs` keep only those runs (the set still lists every game)."""
    if isinstance(source, RunSet):
        return source
    root = source if hasattr(source, "attrs") else st.open_store(source, "r")
    location = str(getattr(root, "store_path", "") or (os.fspath(source) if not hasattr(source, "attrs") else ""))
    run_set = None if runs is None else {int(r) for r in runs}
    root = checked_root(root)  # damage reads as an error, never as zeros (store/checked_arrays.py)
    problems = structure_problems(root, games=None if games is None else set(games))
    if problems:
        raise DataError(f"{location}/{describe(problems[0])}", hint=DAMAGED_HINT)

    def view(game: str, run: int, group) -> RunView:
        meta = st.run_meta(group)
        rows = int(meta["rows"])
        arrays = checked_arrays(group, ARRAY_NAMES, f"{location}/{game}/{run}") if rows else {}
        return RunView(game, run, rows, tuple((int(s), int(e), int(ss)) for s, e, ss, *_ in meta["segments"]),
                       arrays, tuple(meta.get("checkpoints", [])), f"{location}/{game}/{run}")

    # Runs are opened concurrently: in object storage each array's metadata is a round trip.
    found = list(st.iter_runs(root, games=None if games is None else set(games), runs=run_set))
    with cf.ThreadPoolExecutor(min(16, max(1, len(found)))) as pool:
        views = list(pool.map(lambda item: view(*item), found))
    return RunSet(tuple(sorted(root.group_keys())), tuple(views), location)

"""`shard --verify`: re-read a store and check its structure, every chunk, and its rows against its own
completion records; never writes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

from sqlcli_core.data.store.checked_arrays import CheckedArray, checked_root, structure_problems
from sqlcli_core.data.store.schema import (
    ARRAY_DTYPES,
    file_order,
    iter_runs,
    open_store,
    run_meta,
    segments_of,
    store_location,
)
from sqlcli_core.data.store.stats import run_statistics
from sqlcli_core.errors import DataError, UsageError

# ------------------------------------------------------------------------------------------- verify


def verify(dst: str | os.PathLike, *, games: Sequence[str] | None = None, runs: set[int] | None = None,
           progress: Callable[[str, int], None] | None = None, on_plan: Callable[[dict[str, int]], None] | None = None) -> dict:
    """Re-read every run of a store; check its structure (no group or array has lost its metadata), array
    shapes, every chunk (present, decodable, its crc32c where the array has one), per-checkpoint content
    hashes, segments and counts.

    Returns {"runs": [{"game", "run", "ok", "problems": [...]}, ...], "ok": bool}. Never writes.
    """
    dst = store_location(dst)
    root = checked_root(open_store(dst, "r"))
    wanted = None if games is None else set(games)
    broken = [p for p in structure_problems(root, wanted) if p[1] is None or runs is None or p[1] in runs]
    selected = list(iter_runs(root, wanted, runs))
    if not selected and not broken:
        raise UsageError(f"{dst}: no runs selected", hint="check --games/--runs")
    if on_plan:
        on_plan({f"{g}/{r}": run_meta(grp)["rows"] for g, r, grp in selected})
    reports = []
    for game, run, group in selected:
        meta = run_meta(group)
        problems = [what for g, r, what in broken if (g, r) == (game, run)]
        try:
            _check_run(game, run, group, meta, problems, progress)
        except DataError as exc:  # a missing or corrupt chunk: named by CheckedArray
            problems.append(exc.message.split(": ", 1)[-1])
        reports.append({"game": game, "run": run, "rows": meta["rows"], "checkpoints": [r["checkpoint"] for r in meta["checkpoints"]],
                        "ok": not problems, "problems": problems})
    for game, run, what in broken:
        if not any((r["game"], r["run"]) == (game, run) for r in reports):
            reports.append({"game": game, "run": run, "rows": 0, "checkpoints": [], "ok": False, "problems": [what]})
    return {"store": str(dst), "runs": reports, "ok": all(r["ok"] for r in reports)}


def _check_run(game: str, run: int, group, meta: dict, problems: list[str], progress) -> None:
    rows = meta["rows"]
    arrays = {}
    for name, dtype in ARRAY_DTYPES.items():
        if rows and name not in group:
            problems.append(f"array {name} missing")
            continue
        if name not in group:
            continue
        arrays[name] = CheckedArray(group[name], f"{game}/{run}")
        if arrays[name].shape[0] != rows or str(arrays[name].dtype) != dtype:
            problems.append(f"array {name}: {arrays[name].dtype} {arrays[name].shape}, expected {dtype} with {rows} rows")
    recs = meta["checkpoints"]
    prev_end = 0
    for r in recs:
        if r["rows_start"] != prev_end:
            problems.append(f"checkpoint {r['checkpoint']}: rows start at {r['rows_start']}, previous ended at {prev_end}")
        prev_end = r["rows_end"]
    if prev_end != rows:
        problems.append(f"records end at row {prev_end} but rows = {rows}")
    if meta["segments"] != segments_of(recs):
        problems.append("segments do not match the checkpoint records")
    if problems:
        return
    for r in recs:
        for name in ARRAY_DTYPES:
            h = hashlib.sha256()
            arr = arrays[name]
            step = 8 * arr.chunks[0] if name == "frames" else 1 << 20
            for a, b in file_order(r["rows_start"], r["rows_end"], r["rotation"]):
                for lo in range(a, b, step):
                    h.update(np.ascontiguousarray(arr[lo:min(b, lo + step)]).tobytes())
            if h.hexdigest() != r["content_sha256"][name]:
                problems.append(f"checkpoint {r['checkpoint']}: {name} rows {r['rows_start']}-{r['rows_end']} "
                                "do not match their recorded sha256")
        if progress:
            progress(f"{game}/{run}", r["rows_end"] - r["rows_start"])
    summary = meta.get("summary")
    if summary is None:
        problems.append("no summary: the shard of this run did not finish (re-run `sql shard`)")
    else:
        fresh = run_statistics(arrays, meta, summary["n_step"])
        for key in ("sampleable_transitions", "episodes", "return_mean", "return_min", "return_max", "rows"):
            if fresh[key] != summary[key]:
                problems.append(f"{key}: recomputed {fresh[key]}, recorded {summary[key]}")

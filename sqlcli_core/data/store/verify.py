"""`shard --verify`: re-read a store and check it against its own completion records; never writes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

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
from sqlcli_core.errors import UsageError

# ------------------------------------------------------------------------------------------- verify


def verify(dst: str | os.PathLike, *, games: Sequence[str] | None = None, runs: set[int] | None = None,
           progress: Callable[[str, int], None] | None = None, on_plan: Callable[[dict[str, int]], None] | None = None) -> dict:
    """Re-read every run of a store; check array shapes, per-checkpoint content hashes, segments and counts.

    Returns {"runs": [{"game", "run", "ok", "problems": [...]}, ...], "ok": bool}. Never writes.
    """
    dst = store_location(dst)
    root = open_store(dst, "r")
    selected = list(iter_runs(root, games, runs))
    if not selected:
        raise UsageError(f"{dst}: no runs selected", hint="check --games/--runs")
    if on_plan:
        on_plan({f"{g}/{r}": run_meta(grp)["rows"] for g, r, grp in selected})
    reports = []
    for game, run, group in selected:
        meta = run_meta(group)
        problems = []
        rows = meta["rows"]
        for name, dtype in ARRAY_DTYPES.items():
            if rows and name not in group:
                problems.append(f"array {name} missing")
            elif name in group and (group[name].shape[0] != rows or str(group[name].dtype) != dtype):
                problems.append(f"array {name}: {group[name].dtype} {group[name].shape}, expected {dtype} with {rows} rows")
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
        if not problems:
            for r in recs:
                for name in ARRAY_DTYPES:
                    h = hashlib.sha256()
                    arr = group[name]
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
                fresh = run_statistics(group, meta, summary["n_step"])
                for key in ("sampleable_transitions", "episodes", "return_mean", "return_min", "return_max", "rows"):
                    if fresh[key] != summary[key]:
                        problems.append(f"{key}: recomputed {fresh[key]}, recorded {summary[key]}")
        reports.append({"game": game, "run": run, "rows": rows, "checkpoints": [r["checkpoint"] for r in recs],
                        "ok": not problems, "problems": problems})
    return {"store": str(dst), "runs": reports, "ok": all(r["ok"] for r in reports)}

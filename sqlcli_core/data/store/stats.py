"""The run summary of a store: sampleable transitions, complete episodes and their returns, disk use."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sqlcli_core.data.store import remote
from sqlcli_core.data.store.schema import FRAME_BYTES, disk_bytes, run_meta, store_location
from sqlcli_core.data.transitions import valid_mask

# ------------------------------------------------------------------------------------------- statistics


def episode_returns(terminals: np.ndarray, rewards: np.ndarray, segments: Sequence[Sequence[int]]) -> np.ndarray:
    """Clipped returns of the complete episodes: those whose start is seen inside the same segment.

    An episode's start is seen when the previous terminal lies in the same segment, or the segment
    starts at stream position 0 (the first episode of the run). Padding rows carry reward 0.
    """
    out = []
    csum = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    for s, e, stream_start in segments:
        ends = s + np.flatnonzero(terminals[s:e])
        if len(ends) == 0:
            continue
        starts = np.concatenate([[s], ends[:-1] + 1])
        rets = csum[ends + 1] - csum[starts]
        out.append(rets if stream_start == 0 else rets[1:])
    return np.concatenate(out) if out else np.zeros(0)


def run_statistics(group, meta: dict, n_step: int) -> dict:
    """Counts the summary reports, from the store's terminals and rewards (5 bytes per row in memory)."""
    rows = meta["rows"]
    terminals = group["terminals"][:rows]
    rewards = group["rewards"][:rows]
    segs = meta["segments"]
    rets = episode_returns(terminals, rewards, segs)
    return {
        "rows": rows, "n_step": n_step,
        "sampleable_transitions": int(valid_mask(terminals, segs, n_step).sum()),
        "episodes": int(len(rets)),
        "return_mean": float(rets.mean()) if len(rets) else None,
        "return_min": float(rets.min()) if len(rets) else None,
        "return_max": float(rets.max()) if len(rets) else None,
        "checkpoints": [r["checkpoint"] for r in meta["checkpoints"]],
        "segments": len(segs),
        "lost_stream_rows": int(sum(r["gap_before"] for r in meta["checkpoints"])),
    }


def run_report(dst: str | os.PathLike, game: str, run: int, group) -> dict:
    """The per-run --json entry: the stored summary plus bytes on disk and the frames compression ratio."""
    meta = run_meta(group)
    summary = dict(meta.get("summary") or {})
    where = store_location(dst)
    if isinstance(where, str):  # object storage: the sizes of the run group's objects
        prefix = group.store_path.path.strip("/")
        frames_bytes = remote.store_bytes(group.store, f"{prefix}/frames")
        total = remote.store_bytes(group.store, prefix)
    else:
        base = where / game / str(run)
        frames_bytes, total = disk_bytes(base / "frames"), disk_bytes(base)
    return {"game": game, "run": run, **summary, "bytes_on_disk": total,
            "frames_bytes_on_disk": frames_bytes,
            "compression_ratio": round(meta["rows"] * FRAME_BYTES / frames_bytes, 2) if frames_bytes else None}

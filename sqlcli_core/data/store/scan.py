"""Reading DQN-Replay checkpoints as a source of a store: scan what a directory holds, cheaply (headers
and add_count only), and place each checkpoint's new rows in the run's stream."""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import canonical_name

# ------------------------------------------------------------------------------------------- scanning


@dataclasses.dataclass(frozen=True)
class SourceCheckpoint:
    """One checkpoint's six files, with the facts that can be read without decompressing the frames."""

    game: str
    run: int
    checkpoint: int
    files: dict  # kind -> Path
    add_count: int  # the true count: stream positions [0, add_count) were written when it was saved
    capacity: int
    stored_add_count: int  # what its add_count file says (the ring position for a final buffer)
    final_buffer: bool = False  # written by log_final_buffer() (see replay_format.true_add_counts)


@dataclasses.dataclass(frozen=True)
class PlannedCheckpoint:
    """Where a checkpoint's new rows go: stream positions [first, add_count) -> store rows [rows_start, rows_end)."""

    source: SourceCheckpoint
    first: int
    gap: int
    rows_start: int
    rows_end: int
    rotation: int  # leading store rows that come last in the file (see content hashes)


def _read_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        with gzip.open(path, "rb") as f:
            return rf.read_npy_header(f)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})", hint="delete it and fetch it again") from exc
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy payload ({exc})", hint="this file is not DQN-Replay data") from exc


def scan_run(directory: Path, game: str, run: int, checkpoints: set[int] | None) -> list[SourceCheckpoint]:
    """The selected checkpoints of one `replay_logs` directory, checked cheaply, in suffix (= stream) order.

    Checks: all six files present; dtypes and shapes from the .npy headers; one capacity; the add_counts
    of all checkpoints present fit one run (`replay_format.true_add_counts`: each checkpoint's true count,
    the last one possibly a final buffer). Frames are not decompressed here.
    """
    by_ckpt: dict[int, dict[str, Path]] = {}
    for p in sorted(directory.iterdir()):
        parsed = rf.parse_file_name(p.name)
        if parsed is not None:
            by_ckpt.setdefault(parsed[1], {})[parsed[0]] = p
    selected = {}
    for ckpt, files in sorted(by_ckpt.items()):
        if checkpoints is not None and ckpt not in checkpoints:
            continue
        missing = [rf.file_name(k, ckpt) for k in rf.FILE_KINDS if k not in files]
        if missing:
            raise DataError(f"{directory}: checkpoint {ckpt} lacks {', '.join(missing)}",
                            hint=f"fetch it again, or remove checkpoint {ckpt}'s files to treat it as missing")
        dtype, shape = _read_header(files["observation"])
        fk = rf.FILE_KINDS["observation"]
        if dtype != fk.dtype or len(shape) != 3 or shape[1:] != rf.FRAME_SHAPE:
            raise DataError(f"{files['observation']}: {dtype} {shape}, expected uint8 (rows, 84, 84)")
        capacity = shape[0]
        for kind in ("action", "reward", "terminal"):
            d, s = _read_header(files[kind])
            if d != rf.FILE_KINDS[kind].dtype or s != (capacity,):
                raise DataError(f"{files[kind]}: {d} {s}, expected {rf.FILE_KINDS[kind].dtype} ({capacity},) "
                                f"like its observation file")
        if selected and capacity != next(iter(selected.values())):
            first = next(iter(selected))
            raise DataError(f"{files['observation']}: capacity {capacity} differs from checkpoint {first}'s "
                            f"{selected[first]}")
        selected[ckpt] = capacity
    if not selected:
        return []
    capacity = next(iter(selected.values()))
    # Every checkpoint present places the others (a final buffer's true count needs its predecessor's).
    counted = [(ckpt, int(rf.load_npy_gz(files["add_count"], "add_count")))
               for ckpt, files in sorted(by_ckpt.items()) if "add_count" in files]
    try:
        placed = dict(zip((c for c, _ in counted), rf.true_add_counts(counted, capacity)))
    except rf.PlacementError as exc:
        if exc.checkpoint <= max(selected):
            raise DataError(f"{by_ckpt[exc.checkpoint]['add_count']}: {exc}", hint=exc.hint) from None
        counted = [(c, n) for c, n in counted if c <= max(selected)]  # the trouble lies beyond the selection
        placed = dict(zip((c for c, _ in counted), rf.true_add_counts(counted, capacity)))
    out = []
    for ckpt in selected:
        true, final = placed[ckpt]
        files = by_ckpt[ckpt]
        if final and true % capacity == capacity - 1:
            _refuse_repeated_final_buffer(by_ckpt, ckpt)
        out.append(SourceCheckpoint(game, run, ckpt, dict(files), true, capacity, dict(counted)[ckpt], final))
    return out


def _refuse_repeated_final_buffer(by_ckpt: dict[int, dict[str, Path]], ckpt: int) -> None:
    """A final buffer saved at a full ring may repeat its predecessor (training ended right on a checkpoint):
    reading it as a whole new lap would invent rows, so refuse it when its small arrays equal the predecessor's."""
    before = by_ckpt.get(ckpt - 1, {})
    if all(k in before for k in ("action", "reward", "terminal")) and all(
            np.array_equal(rf.load_npy_gz(by_ckpt[ckpt][k], k), rf.load_npy_gz(before[k], k))
            for k in ("action", "reward", "terminal")):
        raise DataError(f"{by_ckpt[ckpt]['add_count']}: final buffer with the same rows as checkpoint {ckpt - 1} "
                        "(the run ended right on a checkpoint)", hint=f"leave checkpoint {ckpt} out (--checkpoints)")


def scan_source(src: str | os.PathLike, games: Sequence[str] | None = None, runs: set[int] | None = None,
                checkpoints: set[int] | None = None) -> tuple[dict[tuple[str, int], list[SourceCheckpoint]], list[str]]:
    """All selected (game, run) -> checkpoints under SRC/{Game}/{run}/replay_logs, and notes on what was skipped."""
    src = Path(src)
    if src.exists() and not src.is_dir():
        raise UsageError(f"source {src} is a file, not a directory", hint="pass the directory that holds {Game}/{run}/replay_logs")
    if not src.is_dir():
        raise UsageError(f"source directory {src} does not exist", hint="pass the directory that holds {Game}/{run}/replay_logs")
    notes: list[str] = []
    wanted = set(games) if games is not None else None
    found: dict[tuple[str, int], list[SourceCheckpoint]] = {}
    for game_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        try:
            game = canonical_name(game_dir.name)
        except UsageError:
            notes.append(f"skipped {game_dir}: not a known game name")
            continue
        if wanted is not None and game not in wanted:
            continue
        for run_dir in sorted((p for p in game_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
            run = int(run_dir.name)
            if runs is not None and run not in runs:
                continue
            logs = rf.replay_dir(src, game_dir.name, run)
            if not logs.is_dir():
                notes.append(f"skipped {run_dir}: no replay_logs directory")
                continue
            ckpts = scan_run(logs, game, run, checkpoints)
            if ckpts:
                found[(game, run)] = ckpts
            else:
                notes.append(f"skipped {logs}: no selected checkpoints")
    if wanted is not None:
        for g in sorted(wanted - {k[0] for k in found}):
            notes.append(f"{g}: not found under {src}")
    if not found:
        raise UsageError(f"no DQN-Replay checkpoints selected under {src}",
                         hint="expected SRC/{Game}/{run}/replay_logs/$store$_observation_ckpt.N.gz; check --games/--runs/--checkpoints")
    return found, notes


def plan_run(ckpts: Sequence[SourceCheckpoint]) -> list[PlannedCheckpoint]:
    """Place each checkpoint's new rows in the run's stream (ring order, gaps from missing checkpoints)."""
    plan = []
    have = 0  # stream positions [0, have) are covered (or lost in a gap)
    rows = 0
    for c in ckpts:
        first, gap, phys = rf.new_rows(c.add_count, c.capacity, have)
        if len(phys) == 0:
            raise DataError(f"{c.files['add_count']}: add_count {c.add_count} adds no rows after {have}")
        rotation = int(np.count_nonzero(phys >= phys[0])) if phys[-1] < phys[0] else 0
        plan.append(PlannedCheckpoint(c, first, gap, rows, rows + len(phys), rotation))
        have = c.add_count
        rows += len(phys)
    return plan

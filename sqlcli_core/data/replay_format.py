"""The DQN-Replay checkpoint format: file names, safe reading and writing, and ring-buffer order.

A checkpoint N of one game/run is six files, each a gzip stream around exactly one `.npy` payload.
Reading never unpickles (`allow_pickle=False`): the dataset is downloaded from the internet.
The format and its ring-buffer rules: docs/dqn-replay-format.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sqlcli_core.atomic import atomic_output
from sqlcli_core.errors import DataError

FRAME_SHAPE = (84, 84)
STACK_SIZE = 4
PADDING_ROWS = STACK_SIZE - 1  # zero rows written before every episode
BUCKET_CAPACITY = 1_000_000
INVALID_RANGE_LEN = 5


@dataclasses.dataclass(frozen=True)
class FileKind:
    """One of the six per-checkpoint files: its name stem, dtype and per-row shape (None: a scalar file)."""

    key: str
    stem: str
    dtype: np.dtype
    row_shape: tuple[int, ...] | None  # shape after the row axis; None for add_count/invalid_range


FILE_KINDS: dict[str, FileKind] = {
    k.key: k
    for k in (
        FileKind("observation", "$store$_observation", np.dtype("uint8"), FRAME_SHAPE),
        FileKind("action", "$store$_action", np.dtype("int32"), ()),
        FileKind("reward", "$store$_reward", np.dtype("float32"), ()),
        FileKind("terminal", "$store$_terminal", np.dtype("uint8"), ()),
        FileKind("add_count", "add_count", np.dtype("int64"), None),
        FileKind("invalid_range", "invalid_range", np.dtype("int64"), None),
    )
}
ROW_KINDS = ("observation", "action", "reward", "terminal")

_FILE_RE = re.compile(r"^(?P<stem>.+)_ckpt\.(?P<ckpt>\d+)\.gz$")


def file_name(kind: str, checkpoint: int) -> str:
    """`$store$_observation_ckpt.7.gz` and friends."""
    return f"{FILE_KINDS[kind].stem}_ckpt.{checkpoint}.gz"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(kind, checkpoint) for a DQN-Replay file name, or None for anything else (e.g. the pickle file)."""
    m = _FILE_RE.match(name)
    if not m:
        return None
    for kind in FILE_KINDS.values():
        if kind.stem == m["stem"]:
            return kind.key, int(m["ckpt"])
    return None


def replay_dir(root: str | os.PathLike, game: str, run: int) -> Path:
    """`ROOT/{Game}/{run}/replay_logs`, the bucket's own layout."""
    return Path(root) / game / str(run) / "replay_logs"


def expected_shape(kind: str, capacity: int) -> tuple[int, ...]:
    fk = FILE_KINDS[kind]
    if kind == "add_count":
        return ()
    if kind == "invalid_range":
        return (INVALID_RANGE_LEN,)
    return (capacity, *fk.row_shape)


# ---------------------------------------------------------------------------------------------- reading


def read_npy_header(stream: BinaryIO) -> tuple[np.dtype, tuple[int, ...]]:
    """Parse a .npy header from a stream positioned at its start. Refuses object (pickled) dtypes."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:  # pragma: no cover - numpy rejects unknown versions in read_magic already
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object dtype (would need unpickling)")
    if fortran:
        raise ValueError("Fortran-ordered array")
    return dtype, tuple(shape)


def load_npy_gz(path: str | os.PathLike, kind: str | None = None, capacity: int | None = None) -> np.ndarray:
    """Decompress and load one file; check dtype (and shape, when `capacity` is given) against `kind`.

    Raises DataError naming the file for a truncated or corrupt gzip stream, a pickled payload, or a
    dtype/shape that the format does not allow.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            payload = f.read()
        arr = np.load(io.BytesIO(payload), allow_pickle=False)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})", hint="delete it and fetch it again") from exc
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy payload ({exc})", hint="this file is not DQN-Replay data") from exc
    if kind is not None:
        check_array(path, kind, arr, capacity)
    return arr


def check_array(path: str | os.PathLike, kind: str, arr: np.ndarray, capacity: int | None = None) -> None:
    """Raise DataError if `arr` does not have the dtype and shape the format gives `kind`."""
    fk = FILE_KINDS[kind]
    if arr.dtype != fk.dtype:
        raise DataError(f"{path}: dtype {arr.dtype}, expected {fk.dtype} for {kind}")
    if fk.row_shape is None:
        want = expected_shape(kind, capacity or 0)
        if arr.shape != want:
            raise DataError(f"{path}: shape {arr.shape}, expected {want} for {kind}")
    else:
        if arr.ndim != 1 + len(fk.row_shape) or tuple(arr.shape[1:]) != fk.row_shape:
            raise DataError(f"{path}: shape {arr.shape}, expected (rows, {', '.join(map(str, fk.row_shape))}) for {kind}".replace(", )", ")"))
        if capacity is not None and arr.shape[0] != capacity:
            raise DataError(f"{path}: {arr.shape[0]} rows, expected capacity {capacity}")


# ---------------------------------------------------------------------------------------------- writing


def save_npy_gz(path: str | os.PathLike, arr: np.ndarray, compresslevel: int = 1) -> Path:
    """Write `arr` as a gzip-wrapped .npy (as Dopamine does), atomically."""
    with atomic_output(path, "wb") as raw:
        # filename="" and mtime=0 keep the bytes a function of the array alone (no temp name, no clock).
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            # np.ascontiguousarray would turn the 0-d add_count into shape (1,).
            np.save(gz, np.asarray(arr, order="C"), allow_pickle=False)
    return Path(path)


def invalid_range(cursor: int, capacity: int, stack_size: int = STACK_SIZE, update_horizon: int = 1) -> np.ndarray:
    """Rows around the write cursor that must not be sampled, as Dopamine computes them (5 for the defaults)."""
    return np.array([(cursor - update_horizon + i) % capacity for i in range(stack_size + update_horizon)], dtype=np.int64)


# ------------------------------------------------------------------------------------------ ring buffer


def stream_span(add_count: int, capacity: int) -> tuple[int, int]:
    """Stream positions [start, end) that a checkpoint with this add_count holds (the last `capacity` rows)."""
    return max(0, add_count - capacity), add_count


def new_rows(add_count: int, capacity: int, already_have: int) -> tuple[int, int, np.ndarray]:
    """Which rows of a checkpoint file extend a stream that already holds positions [0, already_have).

    Returns (first_position, gap, physical_rows): the stream position of the first new row, the number
    of positions lost between `already_have` and it (0 unless a checkpoint is missing), and the file's row
    indices of the new rows in temporal order (position p lives in row p % capacity).
    """
    start, end = stream_span(add_count, capacity)
    first = max(start, already_have)
    gap = max(0, start - already_have)
    positions = np.arange(first, end, dtype=np.int64)
    return first, gap, positions % capacity


class PlacementError(ValueError):
    """A run's checkpoints whose add_counts contradict each other; `.checkpoint` is the suffix to blame."""

    def __init__(self, checkpoint: int, message: str, hint: str):
        super().__init__(message)
        self.checkpoint, self.hint = checkpoint, hint


def true_add_counts(stored: Sequence[tuple[int, int]], capacity: int) -> list[tuple[int, bool]]:
    """(true add_count, is a final buffer) of each checkpoint (suffix, stored add_count), given in suffix order.

    A checkpoint saved during training stores its true count. The last checkpoint of a run is usually
    written by the logger's `log_final_buffer()`, which stores the ring position instead (true count mod
    capacity), so its stored count is not above its predecessor's `prev`: its true count is
    `(prev // capacity + 1) * capacity + stored`, and its new stream positions are ring row capacity - 1,
    then rows 0 .. stored - 1. Raises PlacementError for anything else that does not fit: a count that
    goes down before the last checkpoint, a final buffer whose predecessor (suffix - 1) is absent or was
    not saved at a full ring, a repeated count, or a count that adds no rows.
    """
    out: list[tuple[int, bool]] = []
    prev_suffix, prev = None, None
    for idx, (suffix, count) in enumerate(stored):
        if prev is None or count > prev:
            if count <= 0:
                raise PlacementError(suffix, f"add_count {count} must be positive",
                                     hint="this checkpoint holds no rows; remove its files")
            out.append((count, False))
        elif count == prev:
            raise PlacementError(suffix, f"same add_count as checkpoint {prev_suffix}",
                                 hint="one of the two is a copy; remove it")
        else:
            what = f"add_count {count} is below checkpoint {prev_suffix}'s {prev}"
            if idx != len(stored) - 1:
                raise PlacementError(suffix, f"{what}, and only a run's last checkpoint may be a final buffer",
                                     hint="the files are from different runs or were renamed; fetch them again")
            if suffix != prev_suffix + 1:
                raise PlacementError(suffix, f"{what}: a final buffer, but checkpoint {suffix - 1} before it is "
                                     "missing, so its true count is unknown",
                                     hint=f"fetch checkpoint {suffix - 1}, or leave checkpoint {suffix} out")
            if count >= capacity or prev % capacity != capacity - 1:
                raise PlacementError(suffix, f"{what}, but it is not a final buffer after a full ring (capacity "
                                     f"{capacity})", hint="the files are from different runs; fetch them again")
            out.append(((prev // capacity + 1) * capacity + count, True))
        prev_suffix, prev = suffix, out[-1][0]
    return out

"""Dopamine's circular replay store, as the DQN-Replay logger writes it to checkpoint files.

Row p of the stream lives at ring row p % capacity; `add_count` counts every row written. A checkpoint is
the whole ring plus its add_count and invalid_range files (`replay_format`).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import DataError

# ---------------------------------------------------------------------------------------- ring buffer


class RingBuffer:
    """Dopamine's circular store: row p of the stream lives at p % capacity; add_count counts every row."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        # np.zeros maps untouched pages lazily, so a mostly unwritten buffer costs little memory.
        self.arrays = {
            kind: np.zeros(rf.expected_shape(kind, capacity), dtype=rf.FILE_KINDS[kind].dtype)
            for kind in rf.ROW_KINDS
        }
        self.add_count = 0

    @property
    def cursor(self) -> int:
        """Next row to be written."""
        return self.add_count % self.capacity

    def add(self, frame: np.ndarray | None, action: int, reward: float, terminal: bool) -> None:
        """Write one row at the cursor; `frame` None writes a zero frame (a padding row)."""
        i = self.cursor
        obs = self.arrays["observation"]
        if frame is None:
            obs[i] = 0
        else:
            obs[i] = frame
        self.arrays["action"][i] = action
        self.arrays["reward"][i] = reward
        self.arrays["terminal"][i] = terminal
        self.add_count += 1

    @property
    def saved_add_count(self) -> int:
        """What a checkpoint saved now stores as its add_count: the true count on the logger's schedule (cursor
        capacity - 1), else the ring position, as the final buffer's `log_final_buffer()` does (the same
        number before the ring first wraps)."""
        return self.add_count if self.cursor == self.capacity - 1 else self.cursor

    def save(self, directory: Path, checkpoint: int) -> None:
        """Write checkpoint N's six files (each atomically; the scalars last)."""
        for kind in rf.ROW_KINDS:
            rf.save_npy_gz(directory / rf.file_name(kind, checkpoint), self.arrays[kind])
        rf.save_npy_gz(directory / rf.file_name("add_count", checkpoint), np.array(self.saved_add_count, dtype=np.int64))
        rf.save_npy_gz(directory / rf.file_name("invalid_range", checkpoint), rf.invalid_range(self.cursor, self.capacity))

    def load(self, directory: Path, checkpoint: int, add_count: int, hint: str) -> None:
        """Restore the buffer from checkpoint N saved at the true count `add_count`, reading each file straight
        into the existing arrays; DataError (with `hint`) if the files say otherwise."""
        for kind in rf.ROW_KINDS:
            _read_into(directory / rf.file_name(kind, checkpoint), kind, self.arrays[kind], hint)
        self.add_count = int(add_count)
        saved = int(rf.load_npy_gz(directory / rf.file_name("add_count", checkpoint), "add_count"))
        if saved != self.saved_add_count:
            raise DataError(f"{directory}: checkpoint {checkpoint} has add_count {saved}, expected "
                            f"{self.saved_add_count} for {add_count} rows", hint=hint)


def _read_into(path: Path, kind: str, out: np.ndarray, hint: str) -> None:
    """Decompress a gz .npy into `out` without a second copy in memory (7 GB frames at capacity 1M)."""
    try:
        with gzip.open(path, "rb") as f:
            dtype, shape = rf.read_npy_header(f)
            if dtype != out.dtype or shape != out.shape:
                raise DataError(f"{path}: {dtype}{shape}, expected {out.dtype}{out.shape} for {kind}",
                                hint=hint)
            view = memoryview(out.reshape(-1)).cast("B")
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise EOFError("payload ends early")
                done += n
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable ({exc})", hint=hint) from exc

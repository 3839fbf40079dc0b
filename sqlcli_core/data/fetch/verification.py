"""Verifying a downloaded file while streaming it: length, the source's md5 / CRC-32C, the gzip stream's own
CRC and length, the .npy header's dtype and shape, and the payload's byte count."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import zlib
from pathlib import Path

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.fetch.checksums import FAST_CRC32C, ObjectInfo, crc32c
from sqlcli_core.data.fetch.sources import Stopped
from sqlcli_core.errors import DataError

# ------------------------------------------------------------------------------------------ verification


class ChecksumMismatch(Exception):
    """The bytes differ from what the server's hash says: a damaged transfer, worth fetching again."""


class BadPayload(Exception):
    """The bytes are not a valid gzip-wrapped .npy of the expected kind."""


@dataclasses.dataclass(frozen=True)
class Verified:
    """What verification established about a file."""

    size: int
    md5: str  # hex
    dtype: str
    shape: tuple[int, ...]
    server_hash: str | None  # "md5", "crc32c", "md5+crc32c" or None when the server sent none


class _NpyGzChecker:
    """Fed the raw bytes of a `.npy.gz` file in order; inflates them and checks the .npy inside.

    zlib's gzip mode (wbits=31) checks each member's CRC-32 and length trailer itself. Output per
    zlib call is bounded, so an all-zero 7 GB payload never sits in memory.
    """

    _OUT_LIMIT = 1 << 24

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self._z = zlib.decompressobj(31)
        self._head = bytearray()
        self.dtype: np.dtype | None = None
        self.shape: tuple[int, ...] | None = None
        self._want = 0
        self._got = 0

    def feed(self, data: bytes) -> None:
        while data:
            if self._z.eof:  # another gzip member follows (gzip allows concatenated members)
                if not data.strip(b"\0"):
                    return  # zero padding after the last member, as gzip tolerates
                self._z = zlib.decompressobj(31)
            out = self._z.decompress(data, self._OUT_LIMIT)
            self._take(out)
            data = self._z.unconsumed_tail or self._z.unused_data
            if not self._z.eof and not self._z.unconsumed_tail:
                data = b""

    def _take(self, out: bytes) -> None:
        if self.dtype is not None:
            self._got += len(out)
            return
        self._head += out
        if len(self._head) < 12:
            return
        if bytes(self._head[:6]) != b"\x93NUMPY":
            raise BadPayload("not a .npy payload (no .npy magic after gunzip)")
        major = self._head[6]
        # .npy: magic (6), version (2), header length (2 bytes in v1, 4 in v2/v3), header
        if major == 1:
            hlen = 10 + int.from_bytes(self._head[8:10], "little")
        else:
            hlen = 12 + int.from_bytes(self._head[8:12], "little")
        if hlen > 1 << 20:  # real headers are < 1 KB; refuse to buffer an absurd one
            raise BadPayload(f".npy header claims {hlen} bytes")
        if len(self._head) < hlen:
            return
        try:
            self.dtype, self.shape = rf.read_npy_header(io.BytesIO(bytes(self._head[:hlen])))
        except ValueError as exc:
            raise BadPayload(f"not a plain .npy payload ({exc})") from None
        try:
            # A zero-stride stand-in lets replay_format check dtype and shape without the data.
            rf.check_array(self.name, self.kind, np.broadcast_to(np.zeros((), self.dtype), self.shape))
        except DataError as exc:
            raise BadPayload(exc.message.split(": ", 1)[-1]) from None
        self._want = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._got = len(self._head) - hlen
        self._head = bytearray()

    def finish(self) -> None:
        if not self._z.eof:
            self._take(self._z.flush())  # output zlib held back when the last call hit _OUT_LIMIT
        if not self._z.eof:
            raise BadPayload("corrupt or truncated gzip stream (it ends before its trailer)")
        if self.dtype is None:
            raise BadPayload("too short for a .npy header")
        if self._got != self._want:
            raise BadPayload(f".npy payload has {self._got} bytes, its header says {self._want}")


def verify_file(path: Path, kind: str, expected: ObjectInfo | None, chunk: int = 1 << 22,
                stop: threading.Event | None = None) -> Verified:
    """Verify one downloaded file in a single pass over its bytes; raise ChecksumMismatch / BadPayload.

    Checks: byte length == expected.size; md5 and crc32c == the server's (when given); the gzip stream
    is complete (its own CRC-32 and length trailer); the .npy header has the kind's dtype and row shape
    (via replay_format, pickled payloads refused); the payload is exactly prod(shape) * itemsize bytes.
    Memory use is O(chunk), whatever the file size. A hash mismatch wins over a payload error, because
    it says the bytes were damaged in transit (worth another download).
    """
    path = Path(path)
    size = path.stat().st_size
    if expected is not None and size != expected.size:
        raise ChecksumMismatch(f"{size} bytes, the source says {expected.size}")
    with_crc = expected is not None and expected.crc32c is not None and (FAST_CRC32C or expected.md5 is None)
    md5 = hashlib.md5()
    crc = 0
    checker = _NpyGzChecker(path.name, kind)
    payload_error: str | None = None
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                raise Stopped()
            md5.update(block)
            if with_crc:
                crc = crc32c(block, crc)
            if payload_error is None:
                try:
                    checker.feed(block)
                except BadPayload as exc:
                    payload_error = str(exc)
                except zlib.error as exc:
                    payload_error = f"corrupt gzip stream ({exc})"
    if payload_error is None:
        try:
            checker.finish()
        except BadPayload as exc:
            payload_error = str(exc)
    digest = md5.digest()
    checked = []
    if expected is not None and expected.md5 is not None:
        if digest != expected.md5:
            raise ChecksumMismatch(f"md5 {digest.hex()} differs from the server's {expected.md5.hex()}")
        checked.append("md5")
    if with_crc:
        if crc.to_bytes(4, "big") != expected.crc32c:
            raise ChecksumMismatch(f"crc32c {crc:08x} differs from the server's {expected.crc32c.hex()}")
        checked.append("crc32c")
    if payload_error is not None:
        raise BadPayload(payload_error)
    return Verified(size, digest.hex(), str(checker.dtype), tuple(int(x) for x in checker.shape),
                    "+".join(checked) or None)

"""The checksums a source reports (md5, CRC-32C from `x-goog-hash`) and what the source says about an object."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence

# ------------------------------------------------------------------------------------------ checksums

# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum GCS reports. google-crc32c (a zarr
# dependency) does it in C; the table-driven fallback is ~100x slower and only used when md5 is absent.
_CRC32C_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c_py(data: bytes, crc: int = 0) -> int:
    """CRC-32C of `data`, continuing from `crc` (pure Python)."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    import google_crc32c as _gcrc

    def crc32c(data: bytes, crc: int = 0) -> int:
        """CRC-32C of `data`, continuing from `crc` (google-crc32c)."""
        return _gcrc.extend(crc, data)

    FAST_CRC32C = True
except ImportError:  # pragma: no cover - zarr pulls it in
    crc32c = crc32c_py
    FAST_CRC32C = False


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What the source says about an object: its length and, where known, its md5 / crc32c (raw bytes)."""

    size: int
    md5: bytes | None = None
    crc32c: bytes | None = None


def parse_goog_hash(values: Sequence[str]) -> tuple[bytes | None, bytes | None]:
    """`x-goog-hash: crc32c=AAAAAA==, md5=...` (one header or several) -> (md5, crc32c) digests."""
    md5 = crc = None
    for value in values:
        for item in value.split(","):
            key, _, b64 = item.strip().partition("=")
            try:
                digest = base64.b64decode(b64.strip() + "==")  # tolerate stripped padding
            except ValueError:
                continue
            if key.strip().lower() == "md5" and len(digest) == 16:
                md5 = digest
            elif key.strip().lower() == "crc32c" and len(digest) == 4:
                crc = digest
    return md5, crc

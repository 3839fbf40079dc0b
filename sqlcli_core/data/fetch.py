"""Download DQN-Replay checkpoints into the bucket's own layout, resumably, verifying every file.

Sources (one `Source` interface): the public bucket or any mirror over HTTP(S) (`HttpSource`), a `gs://`
path through the optional gcsfs extra (`GcsSource`), or a local directory that already holds the layout
(`LocalSource`, copy or hard/symbolic link).

Every file goes through the same steps: bytes land in `.NAME.part` beside the target (resumed from its size
with an HTTP Range request after an interruption), then the part is verified (length; the server's md5 /
crc32c from `x-goog-hash` when it sends one; the gzip stream's own CRC and length; the .npy header's dtype
and shape via `replay_format`; the payload's byte count) and only then renamed to its final name. A final
name therefore always means a verified file. Verified files are recorded (size, mtime, md5) in
`fetch_manifest.json` in each replay_logs directory, so a re-run skips them without re-reading gigabytes;
a file whose size or mtime changed since is verified again.

HTTP uses only the standard library (`http.client`, one keep-alive connection per thread per host).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from sqlcli_core.atari.games import DQN_REPLAY60, resolve_games
from sqlcli_core.atomic import write_json
from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import DataError, ResourceError, SourceUnavailable, UsageError
from sqlcli_core.provenance import provenance
from sqlcli_core.ranges import parse_ranges

try:  # POSIX advisory locks keep two concurrent fetches from writing into the same part file.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

PUBLIC_BUCKET_URL = "https://storage.googleapis.com/atari-replay-datasets/dqn"
NUM_RUNS = 5
LAST_CHECKPOINT = 50
SUBSETS = {"sub-optimal": tuple(range(10)), "near-optimal": tuple(range(LAST_CHECKPOINT + 1))}
MANIFEST_NAME = "fetch_manifest.json"
CLOSED_BUCKET_HINT = (
    "the public bucket may be closed to anonymous reads; use --base-url MIRROR or --from DIR "
    "(a directory with the same layout, e.g. made by `gsutil -m cp -R`)"
)

# ------------------------------------------------------------------------------------------ selection


def parse_runs(spec: str) -> tuple[int, ...]:
    """`"1,2"`, `"1-3"` or `"all"` -> run numbers in 1..5 (the grammar of `sqlcli_core.ranges`)."""
    return parse_ranges(spec, "run", lo=1, hi=NUM_RUNS, example="1,2 or 1-3") or tuple(range(1, NUM_RUNS + 1))


def parse_checkpoints(spec: str) -> tuple[int, ...]:
    """`"0-9"`, `"0-9,20"` or `"all"` -> checkpoint suffixes in 0..50."""
    return (parse_ranges(spec, "checkpoint", lo=0, hi=LAST_CHECKPOINT, example="0-9 or 0-9,20")
            or tuple(range(LAST_CHECKPOINT + 1)))


def subset_checkpoints(name: str) -> tuple[int, ...]:
    """`sub-optimal` (checkpoints 0-9, a run's first 20%), `near-optimal` (0-50) or `last:N` (the last N)."""
    key = str(name).strip().lower()
    if key in SUBSETS:
        return SUBSETS[key]
    if key.startswith("last:"):
        try:
            n = int(key[5:])
        except ValueError:
            n = 0
        if not 1 <= n <= LAST_CHECKPOINT + 1:
            raise UsageError(f"bad subset '{name}'", hint=f"last:N needs N in 1-{LAST_CHECKPOINT + 1}")
        return tuple(range(LAST_CHECKPOINT + 1 - n, LAST_CHECKPOINT + 1))
    raise UsageError(f"unknown subset '{name}'", hint="use sub-optimal, near-optimal or last:N")


def select_games(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Resolve names and sets via the catalog; refuse games that DQN-Replay does not have."""
    names = tuple(g.name for g in resolve_games(spec))
    absent = [n for n in names if n not in DQN_REPLAY60]
    if absent:
        raise UsageError(
            f"DQN-Replay has no data for {', '.join(absent)}",
            hint="the bucket holds only the 60 games of the dqn-replay60 set (see `sql games dqn-replay60`)",
        )
    return names


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which checkpoints to fetch: every file kind of every (game, run, checkpoint)."""

    games: tuple[str, ...]
    runs: tuple[int, ...]
    checkpoints: tuple[int, ...]

    @property
    def num_files(self) -> int:
        return len(self.games) * len(self.runs) * len(self.checkpoints) * len(rf.FILE_KINDS)


@dataclasses.dataclass(frozen=True)
class FileTask:
    """One file to fetch: `rel` is its object name below the source root, `dest` its path under --out."""

    game: str
    run: int
    checkpoint: int
    kind: str
    rel: str
    dest: Path

    @property
    def part(self) -> Path:
        """Where its bytes accumulate until verified: `.NAME.part` beside the target."""
        return self.dest.with_name(f".{self.dest.name}.part")


def plan_files(selection: Selection, out: str | os.PathLike) -> list[FileTask]:
    """All files of the selection in (game, run, checkpoint, kind) order."""
    tasks = []
    for game in selection.games:
        for run in selection.runs:
            rel_dir = f"{game}/{run}/replay_logs"
            for ckpt in selection.checkpoints:
                for kind in rf.FILE_KINDS:
                    name = rf.file_name(kind, ckpt)
                    dest = rf.replay_dir(out, game, run) / name
                    tasks.append(FileTask(game, run, ckpt, kind, f"{rel_dir}/{name}", dest))
    return tasks


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


# ------------------------------------------------------------------------------------------ sources


class Missing(Exception):
    """The source has no such object (HTTP 404/410, no such file)."""


class Denied(Exception):
    """The source refuses to serve it (HTTP 401/403)."""


class Transient(Exception):
    """Worth another try: 5xx, 429, a dropped connection, a timeout."""


class Permanent(Exception):
    """This file cannot be fetched from this source (another 4xx, a size that changed, ...)."""


class Stopped(Exception):
    """The run is being interrupted (Ctrl-C): leave the part file as it is, for the next run to resume."""


class Stream(Protocol):
    start: int  # offset of the first byte it yields (0 when a server ignored the Range request)
    total: int | None  # the object's full size as this response states it

    def read(self, n: int) -> bytes: ...
    def close(self) -> None: ...


class Source(Protocol):
    """Where files come from. Object names (`rel`) are `{Game}/{run}/replay_logs/{file}`."""

    description: str

    def stat(self, rel: str) -> ObjectInfo: ...  # raises Missing / Denied / Transient / Permanent
    def open_from(self, rel: str, offset: int) -> Stream: ...


class _FileStream:
    def __init__(self, f: BinaryIO, start: int, total: int):
        self._f, self.start, self.total = f, start, total

    def read(self, n: int) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


class LocalSource:
    """A directory with the bucket layout; files are copied (resumably) or linked (`link` = hard|symlink)."""

    def __init__(self, root: str | os.PathLike, link: str | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UsageError(f"--from {root}: no such directory",
                             hint="give a directory holding {Game}/{run}/replay_logs/")
        if link not in (None, "hard", "symlink"):
            raise UsageError(f"--link {link}: unknown", hint="use --link hard or --link symlink")
        self.link = link
        self.description = str(self.root)

    def stat(self, rel: str) -> ObjectInfo:
        try:
            return ObjectInfo(size=(self.root / rel).stat().st_size)
        except FileNotFoundError:
            raise Missing(str(self.root / rel)) from None
        except PermissionError as exc:
            raise Denied(str(exc)) from None

    def open_from(self, rel: str, offset: int) -> Stream:
        path = self.root / rel
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise Missing(str(path)) from None
        f.seek(offset)
        return _FileStream(f, offset, os.fstat(f.fileno()).st_size)

    def make_link(self, rel: str, tmp: Path) -> None:
        """Create `tmp` as a hard or symbolic link to the source file."""
        src = (self.root / rel).resolve()
        if self.link == "hard":
            try:
                os.link(src, tmp)
            except OSError as exc:
                raise Permanent(f"cannot hard-link here ({exc.strerror}; e.g. across filesystems): "
                                "use --link symlink, or copy") from None
        else:
            os.symlink(src, tmp)


class _HttpStream:
    def __init__(self, source: HttpSource, conn, resp, start: int, total: int | None, length: int | None):
        self._source, self._conn, self._resp = source, conn, resp
        self.start, self.total, self._left = start, total, length

    def read(self, n: int) -> bytes:
        try:
            data = self._resp.read(n)
        except (OSError, http.client.HTTPException) as exc:
            self._source._drop(self._conn)
            raise Transient(f"connection dropped ({type(exc).__name__}: {exc})") from None
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        # A connection can carry the next request only if this body was read to its end.
        if self._left == 0 and not self._resp.will_close:
            self._resp.close()
        else:
            self._source._drop(self._conn)


class HttpSource:
    """Objects at `{base_url}/{Game}/{run}/replay_logs/{file}` with `$` percent-encoded, anonymous HTTP(S).

    One keep-alive connection per thread per host (the many small files of a selection would otherwise
    pay a TLS handshake each); redirects are followed; the environment's https_proxy / http_proxy /
    no_proxy are honoured.
    """

    user_agent = "sql-fetch-data (scaled-ql)"

    def __init__(self, base_url: str = PUBLIC_BUCKET_URL, timeout: float = 60.0):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--base-url {base_url}: not an http(s):// or gs:// URL", hint=f"e.g. {PUBLIC_BUCKET_URL}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.is_public_bucket = self.base_url == PUBLIC_BUCKET_URL
        self.description = self.base_url
        self._local = threading.local()

    def url_for(self, rel: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(rel, safe='/')}"

    # -- connections
    def _conns(self) -> dict:
        if not hasattr(self._local, "conns"):
            self._local.conns = {}
        return self._local.conns

    def _connect(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool, bool]:
        """(connection, reused, wants_absolute_url) for this thread and host."""
        key = (scheme, netloc)
        conns = self._conns()
        if key in conns:
            conn, absolute = conns[key]
            return conn, True, absolute
        host = urllib.parse.urlsplit(f"{scheme}://{netloc}").hostname
        proxy = urllib.request.getproxies().get(scheme)
        absolute = False
        if proxy and not urllib.request.proxy_bypass(host or ""):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if scheme == "https":  # CONNECT tunnel through the proxy, TLS to the real host
                conn = http.client.HTTPSConnection(p.hostname, p.port or 80, timeout=self.timeout)
                conn.set_tunnel(netloc)
            else:  # a plain-HTTP proxy takes the absolute URL
                conn = http.client.HTTPConnection(p.hostname, p.port or 80, timeout=self.timeout)
                absolute = True
        else:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.timeout)
        conns[key] = (conn, absolute)
        return conn, False, absolute

    def _drop(self, conn) -> None:
        conns = self._conns()
        for key, (c, _) in list(conns.items()):
            if c is conn:
                del conns[key]
        with contextlib.suppress(Exception):
            conn.close()

    def _request(self, method: str, url: str, headers: dict[str, str]):
        """Send one request (following up to 5 redirects); returns (conn, response, final_url)."""
        hc = http.client
        # Ask for the stored bytes: GCS would otherwise gunzip objects stored with Content-Encoding: gzip.
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip", **headers}
        for _ in range(6):
            parts = urllib.parse.urlsplit(url)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            for fresh_try in range(2):
                conn, reused, absolute = self._connect(parts.scheme, parts.netloc)
                try:
                    conn.request(method, url if absolute else target, headers=headers)
                    resp = conn.getresponse()
                    break
                except (hc.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                    self._drop(conn)
                    if reused and fresh_try == 0:
                        continue  # a keep-alive connection the server had already closed: not a failure
                    raise Transient(f"connection failed ({type(exc).__name__}: {exc})") from None
                except (OSError, hc.HTTPException) as exc:
                    self._drop(conn)
                    raise Transient(f"connection failed ({type(exc).__name__}: {exc})") from None
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                self._discard(conn, resp)
                url = urllib.parse.urljoin(url, resp.getheader("Location"))
                continue
            return conn, resp, url
        raise Permanent(f"too many redirects for {url}")

    def _discard(self, conn, resp) -> None:
        try:
            length = resp.getheader("Content-Length")
            if length is not None and int(length) <= 1 << 16:
                resp.read()
                if not resp.will_close:
                    return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        self._drop(conn)

    def _check_status(self, conn, resp, url: str) -> None:
        status = resp.status
        if status in (200, 206):
            return
        self._discard(conn, resp)
        if status in (404, 410):
            raise Missing(f"HTTP {status} for {url}")
        if status in (401, 403):
            raise Denied(f"HTTP {status} for {url}")
        if status >= 500 or status in (408, 429):
            raise Transient(f"HTTP {status} {resp.reason} for {url}")
        raise Permanent(f"HTTP {status} {resp.reason} for {url}")

    # -- Source
    def stat(self, rel: str) -> ObjectInfo:
        conn, resp, url = self._request("HEAD", self.url_for(rel), {})
        self._check_status(conn, resp, url)
        resp.read()
        if resp.will_close:
            self._drop(conn)
        length = resp.getheader("Content-Length")
        if length is None:
            raise Permanent(f"no Content-Length for {url}: cannot budget or verify it")
        md5, crc = parse_goog_hash(resp.headers.get_all("x-goog-hash") or [])
        return ObjectInfo(size=int(length), md5=md5, crc32c=crc)

    def open_from(self, rel: str, offset: int) -> Stream:
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        conn, resp, url = self._request("GET", self.url_for(rel), headers)
        if resp.status == 416:  # nothing at or after `offset`: the caller's part file is too long
            self._discard(conn, resp)
            raise Permanent(f"HTTP 416 for {url} at offset {offset}")
        self._check_status(conn, resp, url)
        length = resp.getheader("Content-Length")
        length = int(length) if length is not None else None
        start, total = 0, length
        if resp.status == 206:
            # Content-Range: bytes START-END/TOTAL
            rng = (resp.getheader("Content-Range") or "").replace("bytes", "").strip()
            try:
                span, _, tot = rng.partition("/")
                start = int(span.split("-")[0])
                total = int(tot) if tot.strip() != "*" else None
            except ValueError:
                self._drop(conn)
                raise Permanent(f"bad Content-Range '{rng}' from {url}") from None
        return _HttpStream(self, conn, resp, start, total, length)


class GcsSource:
    """A `gs://bucket/prefix` read with the caller's Google credentials through gcsfs (optional extra)."""

    def __init__(self, url: str):
        try:
            import gcsfs
        except ImportError:
            raise UsageError(
                f"reading {url} needs gcsfs, which is not installed", hint="pip install 'scaled-ql[gcs]'"
            ) from None
        self.prefix = url[len("gs://"):].rstrip("/")
        self.fs = gcsfs.GCSFileSystem()
        self.description = url.rstrip("/")

    def _error(self, exc: Exception, what: str) -> Exception:
        # gcsfs: 404 -> FileNotFoundError, 403 -> OSError("Forbidden: ..."), else HttpError(.code), after
        # its own retries.
        code = getattr(exc, "code", None)
        if isinstance(exc, FileNotFoundError) or code == 404:
            return Missing(what)
        if isinstance(exc, PermissionError) or code in (401, 403) or str(exc).startswith("Forbidden"):
            return Denied(f"{what}: {str(exc).splitlines()[0]}")
        return Transient(f"{what}: {type(exc).__name__}: {exc}")

    def stat(self, rel: str) -> ObjectInfo:
        what = f"{self.description}/{rel}"
        try:
            info = self.fs.info(f"{self.prefix}/{rel}")
        except Exception as exc:  # gcsfs raises several unrelated types; classified in _error
            raise self._error(exc, what) from None

        def digest(key, n):
            raw = info.get(key)
            d = base64.b64decode(raw) if raw else None
            return d if d and len(d) == n else None

        return ObjectInfo(size=int(info["size"]), md5=digest("md5Hash", 16), crc32c=digest("crc32c", 4))

    def open_from(self, rel: str, offset: int) -> Stream:
        try:
            f = self.fs.open(f"{self.prefix}/{rel}", "rb", block_size=8 << 20)
            f.seek(offset)
        except Exception as exc:
            raise self._error(exc, f"{self.description}/{rel}") from None
        return _GcsStream(f, offset, f.size, self)


class _GcsStream(_FileStream):
    def __init__(self, f, start: int, total: int, source: GcsSource):
        super().__init__(f, start, total)
        self._source = source

    def read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except Exception as exc:
            raise self._source._error(exc, self._source.description) from None


def open_source(base_url: str | None = None, from_dir: str | os.PathLike | None = None,
                link: str | None = None, timeout: float = 60.0) -> Source:
    """The source for the CLI's --base-url / --from / --link (the public bucket when neither is given)."""
    if base_url and from_dir:
        raise UsageError("--base-url and --from are mutually exclusive", hint="give one source")
    if link and not from_dir:
        raise UsageError("--link only applies to --from DIR", hint="drop --link or add --from DIR")
    if from_dir:
        return LocalSource(from_dir, link)
    base_url = base_url or PUBLIC_BUCKET_URL
    if base_url.startswith("gs://"):
        return GcsSource(base_url)
    return HttpSource(base_url, timeout=timeout)


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


# ------------------------------------------------------------------------------------------ manifest


class Manifests:
    """The per-replay_logs-directory records of verified files (`fetch_manifest.json`), thread-safe.

    An entry {size, mtime_ns, md5, dtype, shape, ...} says: this file, with this size and mtime, passed
    verification. It is a cache: a missing or unreadable manifest only costs a re-verification, so
    a directory's manifest is rewritten (atomically) at most every `flush_every` seconds, and by `flush()`.
    """

    def __init__(self, stamp: dict, flush_every: float = 1.0):
        self._stamp = stamp
        self._lock = threading.Lock()
        self._cache: dict[Path, dict] = {}
        self._dirty: set[Path] = set()
        self._last_write: dict[Path, float] = {}
        self._flush_every = flush_every

    def _load(self, directory: Path) -> dict:
        if directory not in self._cache:
            try:
                with open(directory / MANIFEST_NAME) as f:
                    files = json.load(f).get("files", {})
                if not isinstance(files, dict):
                    files = {}
            except (OSError, ValueError, AttributeError):
                files = {}
            self._cache[directory] = files
        return self._cache[directory]

    def is_verified(self, path: Path) -> bool:
        """True if `path` exists and matches its record's size and mtime."""
        with self._lock:
            entry = self._load(path.parent).get(path.name)
        if not isinstance(entry, dict):
            return False
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns

    def record(self, path: Path, verified: Verified, source: str) -> None:
        st = path.stat()
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": verified.md5, "dtype": verified.dtype,
                 "shape": list(verified.shape), "server_hash": verified.server_hash, "source": source,
                 "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._update(path, entry)

    def forget(self, path: Path) -> None:
        self._update(path, None)

    def _update(self, path: Path, entry: dict | None) -> None:
        with self._lock:
            files = self._load(path.parent)
            if entry is None and path.name not in files:
                return
            if entry is None:
                del files[path.name]
            else:
                files[path.name] = entry
            self._dirty.add(path.parent)
            if time.monotonic() - self._last_write.get(path.parent, 0.0) >= self._flush_every:
                self._write(path.parent)

    def _write(self, directory: Path) -> None:
        files = self._cache[directory]
        write_json(directory / MANIFEST_NAME, {"provenance": self._stamp, "files": dict(sorted(files.items()))})
        self._dirty.discard(directory)
        self._last_write[directory] = time.monotonic()

    def flush(self) -> None:
        """Write every manifest with unsaved entries."""
        with self._lock:
            for directory in sorted(self._dirty):
                self._write(directory)


# ------------------------------------------------------------------------------------------ fetching


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """How to fetch: parallelism, retry policy (seconds), chunk size (bytes), whether to only look."""

    jobs: int = 4
    retries: int = 5  # further tries per file after the first; a try that received bytes does not count
    backoff_base: float = 1.0  # seconds; the k-th consecutive failure waits ~ backoff_base * 2**k
    backoff_max: float = 60.0
    chunk_bytes: int = 1 << 20
    dry_run: bool = False
    check_disk: bool = True


@dataclasses.dataclass
class FileResult:
    """What happened to one file: status is fetched | skipped | failed | missing | planned (dry run)."""

    task: FileTask
    status: str
    size: int | None = None
    bytes_transferred: int = 0
    error: str | None = None
    content_error: bool = False  # failed verification (vs could not transfer)
    have_bytes: int = 0  # already on disk before this run (verified file or resumable part)
    note: str | None = None


@dataclasses.dataclass
class FetchReport:
    """The outcome of one fetch (or dry run), with a JSON-ready summary."""

    source: str
    out: Path
    results: list[FileResult]
    seconds: float
    dry_run: bool

    def by_status(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def bytes_transferred(self) -> int:
        return sum(r.bytes_transferred for r in self.results)

    @property
    def total_bytes(self) -> int:
        return sum(r.size or 0 for r in self.results)

    @property
    def bytes_to_fetch(self) -> int:
        return sum((r.size or 0) - r.have_bytes for r in self.results if r.status == "planned")

    @property
    def missing_checkpoints(self) -> list[tuple[str, int, int]]:
        return sorted({(r.task.game, r.task.run, r.task.checkpoint) for r in self.by_status("missing")})

    def summary(self) -> dict:
        mb_s = self.bytes_transferred / 1e6 / self.seconds if self.seconds > 0 else 0.0
        out = {
            "source": self.source,
            "out": str(self.out),
            "dry_run": self.dry_run,
            "files": {s: len(self.by_status(s)) for s in ("planned", "fetched", "skipped", "failed", "missing")},
            "total_bytes": self.total_bytes,
            "bytes_transferred": self.bytes_transferred,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(mb_s, 3),
            "missing_checkpoints": [{"game": g, "run": r, "checkpoint": c} for g, r, c in self.missing_checkpoints],
            "failures": [{"file": r.task.rel, "error": r.error, "content": r.content_error}
                         for r in self.by_status("failed")],
        }
        if self.dry_run:
            out["bytes_to_fetch"] = self.bytes_to_fetch
            out["planned"] = [{"file": r.task.rel, "bytes": r.size, "have_bytes": r.have_bytes, "note": r.note}
                              for r in self.by_status("planned")]
        return out


ProgressFn = Callable[[str, int], None]  # (event, amount): ("total", bytes) once, then ("bytes", n), ("file", 1)


def _sleep_backoff(cfg: FetchConfig, failures: int) -> None:
    delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** max(0, failures - 1))
    time.sleep(delay * (0.5 + random.random() / 2))  # jitter: parallel workers do not retry in lockstep


def _stat_with_retries(source: Source, rel: str, cfg: FetchConfig) -> ObjectInfo:
    failures = 0
    while True:
        try:
            return source.stat(rel)
        except Transient:
            failures += 1
            if failures > cfg.retries:
                raise
            _sleep_backoff(cfg, failures)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk_space(out: str | os.PathLike, need_bytes: int, what: str = "the selected files") -> None:
    """Raise ResourceError (with the numbers) if the filesystem under `out` has less than `need_bytes` free."""
    free = shutil.disk_usage(_existing_ancestor(Path(out))).free
    if need_bytes > free:
        raise ResourceError(
            f"{what} need {format_bytes(need_bytes)} ({need_bytes} bytes) under {out}, "
            f"but only {format_bytes(free)} ({free} bytes) is free",
            hint="free space, pick another --out, or fetch fewer games/runs/checkpoints (see --dry-run)",
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


class _PartLock:
    """An exclusive advisory lock on a part file, so two processes never interleave writes into it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        if fcntl is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise Permanent(f"{self.path} is being written by another fetch-data process") from None
        return self._f

    def __exit__(self, *exc):
        self._f.close()


def _download_part(task: FileTask, info: ObjectInfo, source: Source, cfg: FetchConfig,
                   progress: ProgressFn, part_file: BinaryIO, stop: threading.Event) -> int:
    """Bring `task.part` to `info.size` bytes, resuming from its current size. Returns bytes received.

    Raises Transient on a dropped connection (the part keeps what arrived, for the next try).
    """
    have = os.fstat(part_file.fileno()).st_size
    if have > info.size:
        part_file.truncate(0)
        progress("bytes", -have)
        have = 0
    if have == info.size:
        return 0
    stream = source.open_from(task.rel, have)
    received = 0
    try:
        if stream.total is not None and stream.total != info.size:
            raise Permanent(f"the source now says {stream.total} bytes, it said {info.size} before; re-run")
        if stream.start != have:
            if stream.start != 0:
                raise Permanent(f"asked for bytes from {have}, the source sent bytes from {stream.start}")
            part_file.truncate(0)  # the server ignored Range: start over from its first byte
            progress("bytes", -have)
            have = 0
        part_file.seek(have)
        while have + received < info.size:
            if stop.is_set():
                raise Stopped()
            block = stream.read(min(cfg.chunk_bytes, info.size - have - received))
            if not block:
                break
            part_file.write(block)
            received += len(block)
            progress("bytes", len(block))
    finally:
        part_file.flush()
        stream.close()
    if have + received < info.size:
        raise Transient(f"connection dropped after {have + received} of {info.size} bytes")
    os.fsync(part_file.fileno())
    return received


def _fetch_one(task: FileTask, info: ObjectInfo, source: Source, cfg: FetchConfig,
               manifests: Manifests, progress: ProgressFn, stop: threading.Event) -> FileResult:
    """Download (or link), verify, and atomically publish one file."""
    result = FileResult(task, "failed", size=info.size)
    if isinstance(source, LocalSource) and source.link:
        return _link_one(task, info, source, manifests, result, progress)
    failures = 0
    try:
        with _PartLock(task.part) as part_file:
            while True:
                before = os.fstat(part_file.fileno()).st_size
                try:
                    result.bytes_transferred += _download_part(task, info, source, cfg, progress, part_file, stop)
                    verified = verify_file(task.part, task.kind, info, stop=stop)
                    os.replace(task.part, task.dest)
                    manifests.record(task.dest, verified, source.description)
                    result.status = "fetched"
                    progress("file", 1)
                    return result
                except Transient as exc:
                    after = os.fstat(part_file.fileno()).st_size
                    result.bytes_transferred += max(0, after - before)
                    if after <= before:  # a try that brought bytes does not use up a retry
                        failures += 1
                    if failures > cfg.retries:
                        result.error = f"gave up after {failures} failed tries: {exc}"
                        return result
                    _sleep_backoff(cfg, max(failures, 1))
                except (ChecksumMismatch, BadPayload) as exc:
                    # Bytes that contradict the server's hash were damaged in transit: fetch again from
                    # byte 0. A bad payload whose bytes the server's hash (or a local source) vouches
                    # for is bad at the source, and another copy would be just as bad.
                    size = os.fstat(part_file.fileno()).st_size
                    part_file.truncate(0)
                    progress("bytes", -size)
                    vouched = isinstance(exc, BadPayload) and (
                        info.md5 is not None or info.crc32c is not None or isinstance(source, LocalSource))
                    failures += 1
                    if vouched or failures > cfg.retries:
                        result.error = f"verification failed: {exc}"
                        result.content_error = True
                        with contextlib.suppress(FileNotFoundError):
                            task.part.unlink()
                        return result
                    _sleep_backoff(cfg, failures)
    except Missing as exc:  # it was there a moment ago (HEAD): not a checkpoint missing at the source
        result.error = f"vanished from the source during the run ({exc})"
    except (Denied, Permanent) as exc:
        result.error = str(exc)
    return result


def _link_one(task: FileTask, info: ObjectInfo, source: LocalSource, manifests: Manifests,
              result: FileResult, progress: ProgressFn) -> FileResult:
    tmp = task.dest.with_name(f".{task.dest.name}.link")
    task.dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        source.make_link(task.rel, tmp)
        verified = verify_file(tmp, task.kind, info)
        os.replace(tmp, task.dest)
        manifests.record(task.dest, verified, source.description)
        result.status = "fetched"
    except (ChecksumMismatch, BadPayload) as exc:
        result.error, result.content_error = f"verification failed: {exc}", True
    except (Permanent, OSError) as exc:
        result.error = str(exc)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if result.status == "fetched":
        progress("file", 1)
    return result


def _verify_existing(task: FileTask, info: ObjectInfo, source: Source, manifests: Manifests) -> bool:
    """A final file without a matching record (placed by hand, or touched since): verify it again.

    Returns True (and records it) if it passes; otherwise removes it so that it is fetched again.
    """
    try:
        verified = verify_file(task.dest, task.kind, info)
    except (ChecksumMismatch, BadPayload):
        task.dest.unlink()
        manifests.forget(task.dest)
        return False
    manifests.record(task.dest, verified, source.description)
    return True


def fetch(selection: Selection, out: str | os.PathLike, source: Source, cfg: FetchConfig = FetchConfig(),
          progress: ProgressFn | None = None) -> FetchReport:
    """Fetch (or, with cfg.dry_run, survey) every file of `selection` from `source` into `out`.

    Steps: files already verified (manifest matches size and mtime) are skipped without touching the
    source; the rest are stat'ed in parallel (HEAD); a refusal (403) or a source holding none of them
    raises SourceUnavailable; the free disk space is checked against what remains to transfer; then
    `cfg.jobs` threads download, verify and publish. A checkpoint whose six files are all absent at
    the source is reported as missing (the spec: checkpoint 50 is missing for some runs); a
    checkpoint with only some files absent makes those files failures. Per-file failures do not stop
    the others; they are in the report.
    """
    out = Path(out)
    progress = progress or (lambda event, n: None)
    t0 = time.monotonic()
    cfg_dict = dataclasses.asdict(cfg)
    stamp = provenance("fetch-data", {"source": source.description, **cfg_dict,
                                      "selection": dataclasses.asdict(selection)}, None)
    manifests = Manifests(stamp)
    tasks = plan_files(selection, out)

    results: dict[FileTask, FileResult] = {}
    to_stat = []
    for task in tasks:
        if manifests.is_verified(task.dest):
            size = task.dest.stat().st_size
            results[task] = FileResult(task, "skipped", size=size, have_bytes=size, note="verified before")
        else:
            to_stat.append(task)

    infos: dict[FileTask, ObjectInfo] = {}

    def stat_one(task: FileTask):
        if task in infos:
            return task, infos[task], None
        try:
            return task, _stat_with_retries(source, task.rel, cfg), None
        except Missing as exc:
            return task, None, ("missing", str(exc))
        except (Transient, Permanent) as exc:
            return task, None, ("failed", f"could not stat: {exc}")

    denied: Denied | None = None
    if to_stat:
        # One probe first: an unreachable or refusing source fails once, not once per file.
        try:
            infos[to_stat[0]] = _stat_with_retries(source, to_stat[0].rel, cfg)
        except Denied as exc:
            denied = exc
        except Transient as exc:
            raise SourceUnavailable(f"cannot reach {source.description} ({exc})",
                                    hint="check the address and the network, then re-run") from None
        except (Missing, Permanent):
            pass
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs), thread_name_prefix="sql-stat") as pool:
        futures = [] if denied else [pool.submit(stat_one, t) for t in to_stat]
        for fut in futures:
            try:
                task, info, err = fut.result()
            except Denied as exc:
                denied = denied or exc
                pool.shutdown(wait=False, cancel_futures=True)
                continue
            if info is not None:
                infos[task] = info
            else:
                results[task] = FileResult(task, err[0], error=err[1])
    if denied is not None:
        raise SourceUnavailable(
            f"{source.description} refused to serve the data ({denied})",
            hint=CLOSED_BUCKET_HINT if getattr(source, "is_public_bucket", False)
            else "check the address and your access rights, or use --from DIR",
        )
    if to_stat and not infos and all(results[t].status == "missing" for t in to_stat) and \
            not any(r.status == "skipped" for r in results.values()):
        first = results[to_stat[0]].error
        raise SourceUnavailable(
            f"none of the {len(to_stat)} requested files exist at {source.description} (e.g. {first})",
            hint=CLOSED_BUCKET_HINT if getattr(source, "is_public_bucket", False)
            else "check that it holds {Game}/{run}/replay_logs/ and the games/runs/checkpoints asked for",
        )

    # A checkpoint missing only some of its six files is broken at the source, not just absent.
    missing_by_ckpt: dict[tuple, int] = defaultdict(int)
    for t, r in results.items():
        if r.status == "missing":
            missing_by_ckpt[(t.game, t.run, t.checkpoint)] += 1
    for t, r in results.items():
        if r.status == "missing" and missing_by_ckpt[(t.game, t.run, t.checkpoint)] < len(rf.FILE_KINDS):
            r.status = "failed"
            r.error = f"missing at the source while other files of checkpoint {t.checkpoint} exist ({r.error})"

    linking = isinstance(source, LocalSource) and source.link is not None
    pending = []
    for task, info in infos.items():
        have = 0
        note = None
        if task.dest.exists():
            note = "present, not verified yet"
        elif not linking and task.part.exists():
            have = min(task.part.stat().st_size, info.size)
            note = f"resumes a partial download ({have} bytes)"
        results[task] = FileResult(task, "planned", size=info.size, have_bytes=have, note=note)
        pending.append(task)

    need = 0 if linking else sum(results[t].size - results[t].have_bytes for t in pending if not t.dest.exists())
    if cfg.dry_run:
        ordered = [results[t] for t in tasks]
        return FetchReport(source.description, out, ordered, time.monotonic() - t0, True)
    if cfg.check_disk and need > 0:
        check_disk_space(out, need)

    resumed = sum(results[t].have_bytes for t in pending if not t.dest.exists())
    progress("total", need + resumed)
    if resumed:
        progress("bytes", resumed)

    stop = threading.Event()

    def work(task: FileTask) -> FileResult:
        if stop.is_set():
            raise Stopped()
        info = infos[task]
        if task.dest.exists():
            if _verify_existing(task, info, source, manifests):
                return FileResult(task, "skipped", size=info.size, have_bytes=info.size, note="verified existing file")
            progress("total_add", info.size)
        return _fetch_one(task, info, source, cfg, manifests, progress, stop)

    pool = ThreadPoolExecutor(max_workers=max(1, cfg.jobs), thread_name_prefix="sql-fetch")
    try:
        for res in pool.map(work, pending):
            results[res.task] = res
    except BaseException:
        # Ctrl-C: workers stop at their next chunk; part files stay for the next run to resume.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        manifests.flush()
    pool.shutdown(wait=True)
    # Stale parts of files that are now final (e.g. published by a concurrent run) are garbage.
    for task in tasks:
        if results[task].status in ("fetched", "skipped") and task.part.exists():
            with contextlib.suppress(FileNotFoundError):
                task.part.unlink()
    ordered = [results[t] for t in tasks]
    return FetchReport(source.description, out, ordered, time.monotonic() - t0, False)

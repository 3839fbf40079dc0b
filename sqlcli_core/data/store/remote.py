"""Stores in object storage (`s3://`, `gs://`, `https://`): zarr's own FsspecStore, plus what a replay store
needs on top of it.

- **Which client.** zarr 3 reads and writes object storage through fsspec; this module only picks the
  fsspec backend for a URL and names the extra to install when it is missing (`REMOTE_SCHEMES`).
  Credentials and endpoints come from each backend's standard places (`AWS_*`, `AWS_ENDPOINT_URL`,
  `~/.aws`; Google application-default credentials); nothing here reads them.
- **Retries and one-line errors.** `RemoteStore` wraps the FsspecStore: every request that fails for a
  reason other than "no such object" is retried with exponential backoff (`RetryPolicy`), on top of the
  backend's own retries; one that still fails is a `SourceUnavailable` (exit 4) naming the object's URL.
- **Create once.** `set_if_not_exists` is a conditional write (S3 `If-None-Match: *`, GCS
  `ifGenerationMatch=0`, fsspec's `mode="create"`), so group metadata written by two hosts at once is
  written once; zarr's default (check, then write) would race.
- **One writer per run group.** Object stores have no locks; `WriterLease` is a lease built from the same
  conditional create plus a heartbeat (docs/store-format.md, "Writing to object storage").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from sqlcli_core.errors import SourceUnavailable, SqlError, UsageError

# scheme -> (fsspec backend module, the `scaled-ql[...]` extra that installs it)
REMOTE_SCHEMES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
                  "https": ("aiohttp", "http"), "http": ("aiohttp", "http")}
READ_ONLY_SCHEMES = ("https", "http")
# Backend options of our own (never credentials or endpoints). s3fs splits a download into concurrent
# ranged GETs when max_concurrency > 1, and asks the object's size first (one HEAD per chunk read): chunks
# are small (about 35 KB of frames), so one plain GET each halves the requests.
STORAGE_OPTIONS = {"s3": {"max_concurrency": 1}}
# Failures that another try cannot fix (botocore's and google-auth's names for them).
NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError")
CREDENTIALS_HINT = {"s3": "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (and AWS_ENDPOINT_URL for a "
                          "non-AWS server)",
                    "gs": "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
                    "gcs": "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"}
LEASE_DIR = ".sql-writer"
LEASE_SECONDS = 60.0  # default lease time of a writer (shard's --lease-seconds)


def scheme_of(store: str | os.PathLike) -> str | None:
    """The lower-case URL scheme of a store (None for a plain path)."""
    text = os.fspath(store)
    scheme, sep, _ = text.partition("://")
    return scheme.lower() if sep else None


def is_remote(store) -> bool:
    """True for a store in object storage (any URL but file://)."""
    return not hasattr(store, "attrs") and isinstance(store, str | os.PathLike) and scheme_of(store) not in (None, "file")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How `RemoteStore` retries a failed request (on top of the backend's own retries)."""

    attempts: int = 4  # tries per request before SourceUnavailable
    first_delay: float = 0.25  # seconds before the 2nd try; doubles every try
    max_delay: float = 4.0  # cap of one wait


# --------------------------------------------------------------------------------------------- store


def _zarr_store_classes():
    from zarr.storage import FsspecStore, WrapperStore

    return FsspecStore, WrapperStore


def open_remote(url: str, *, read_only: bool, retry: RetryPolicy = RetryPolicy()):
    """A `RemoteStore` over zarr's FsspecStore for `url`; one-line errors for a missing extra or bad URL."""
    scheme = scheme_of(url)
    if scheme not in REMOTE_SCHEMES:
        raise UsageError(f"{url}: {scheme}:// stores are not supported",
                         hint="use a path, file://, s3://, gs:// or https:// (read-only)")
    if scheme in READ_ONLY_SCHEMES and not read_only:
        raise UsageError(f"{url}: {scheme}:// stores are read-only", hint="write to s3://, gs:// or a directory")
    module, extra = REMOTE_SCHEMES[scheme]
    try:
        __import__(module)
    except ImportError:
        raise UsageError(f"{url}: {scheme}:// stores need the {module} package",
                         hint=f"pip install 'scaled-ql[{extra}]'") from None
    FsspecStore, _ = _zarr_store_classes()
    try:
        inner = FsspecStore.from_url(url.rstrip("/"), storage_options=STORAGE_OPTIONS.get(scheme), read_only=read_only)
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"{url}: not a usable store URL ({exc})", hint="write s3://BUCKET/PATH or gs://BUCKET/PATH") from None
    return _remote_store_class()(inner, url.rstrip("/"), retry)


def require_bucket(store) -> None:
    """Name a missing bucket: a UsageError (exit 2) when the bucket of `store` (a RemoteStore) does not exist.

    Called where a store turned out absent or is about to be created, so that "not a Zarr store" or a write
    error does not hide the cause. A bucket that cannot be reached (network, endpoint, credentials) is the
    retried request's SourceUnavailable (exit 4), naming the URL. https:// stores have no bucket."""
    scheme = scheme_of(store.url)
    if scheme in READ_ONLY_SCHEMES:
        return
    bucket = store.url.split("://", 1)[1].split("/", 1)[0]
    try:
        run_sync(store._call("", lambda: store.fs._info(bucket)))
    except FileNotFoundError:
        raise UsageError(f"the bucket {bucket} of {store.url} does not exist",
                         hint="create the bucket or check its name" + ("; a non-AWS server needs AWS_ENDPOINT_URL"
                                                                       if scheme == "s3" else "")) from None


_REMOTE_CLASS = None


def _remote_store_class():
    """RemoteStore, built on first use so that importing this module does not import zarr."""
    global _REMOTE_CLASS
    if _REMOTE_CLASS is not None:
        return _REMOTE_CLASS
    _, WrapperStore = _zarr_store_classes()

    class RemoteStore(WrapperStore):
        """zarr's FsspecStore with retries, one-line errors naming the object, and a true conditional create."""

        def __init__(self, store, url: str, retry: RetryPolicy = RetryPolicy()):
            super().__init__(store)
            self.url = url
            self.retry = retry

        def _with_store(self, store):
            return type(self)(store, self.url, self.retry)

        def object_url(self, key: str) -> str:
            return f"{self.url}/{key}" if key else self.url

        def fs_path(self, key: str) -> str:
            return f"{self._store.path.rstrip('/')}/{key}"

        @property
        def fs(self):
            return self._store.fs

        async def _call(self, key: str, make):
            """Run `make()` (a coroutine factory), retrying transient failures; SourceUnavailable naming the object."""
            policy = self.retry
            for attempt in range(policy.attempts):
                try:
                    return await make()
                except (SqlError, FileNotFoundError, FileExistsError, NotImplementedError, TypeError, ValueError):
                    raise
                except PermissionError as exc:
                    raise SourceUnavailable(f"{self.object_url(key)}: access denied ({_reason(exc)})",
                                            hint="check the credentials of this machine for the bucket") from None
                except Exception as exc:  # noqa: BLE001 - any other failure of a request is worth another try
                    if type(exc).__name__ in NO_CREDENTIALS:
                        raise SourceUnavailable(f"{self.object_url(key)}: no credentials ({_reason(exc)})",
                                                hint=CREDENTIALS_HINT.get(scheme_of(self.url), "set up credentials")) from None
                    if attempt + 1 >= policy.attempts:
                        raise SourceUnavailable(
                            f"{self.object_url(key)}: {_reason(exc)} ({policy.attempts} tries)",
                            hint="check the network and the bucket; re-running resumes where it stopped") from None
                    await asyncio.sleep(min(policy.max_delay, policy.first_delay * 2 ** attempt))

        async def get(self, key, prototype, byte_range=None):
            return await self._call(key, lambda: self._store.get(key, prototype, byte_range))

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            first = key_ranges[0][0] if key_ranges else ""
            return await self._call(first, lambda: self._store.get_partial_values(prototype, key_ranges))

        async def exists(self, key):
            return await self._call(key, lambda: self._store.exists(key))

        async def set(self, key, value):
            return await self._call(key, lambda: self._store.set(key, value))

        async def set_if_not_exists(self, key, value):
            """Write `key` only if no object has that name, atomically on the server (conditional write)."""
            self._check_writable()
            path = self.fs_path(key)
            try:
                await self._call(key, lambda: self.fs._pipe_file(path, value.to_bytes(), mode="create"))
            except FileExistsError:
                pass

        async def create(self, key: str, data: bytes) -> bool:
            """Write `key` if absent: True if this call created it, False if it existed."""
            path = self.fs_path(key)
            try:
                await self._call(key, lambda: self.fs._pipe_file(path, data, mode="create"))
            except FileExistsError:
                return False
            return True

        async def delete(self, key):
            return await self._call(key, lambda: self._store.delete(key))

        async def _listed(self, key, it):
            async def collect():
                return [k async for k in it()]

            for k in await self._call(key, collect):
                yield k

        def list(self):
            return self._listed("", self._store.list)

        def list_prefix(self, prefix):
            return self._listed(prefix, lambda: self._store.list_prefix(prefix))

        def list_dir(self, prefix):
            return self._listed(prefix, lambda: self._store.list_dir(prefix))

        async def du(self, prefix: str) -> int:
            return int(await self._call(prefix, lambda: self.fs._du(self.fs_path(prefix), total=True)))

        def __repr__(self) -> str:
            return f"RemoteStore({self.url})"

        def __str__(self) -> str:
            return self.url

    _REMOTE_CLASS = RemoteStore
    return RemoteStore


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def run_sync(coro):
    """Run a coroutine on zarr's event loop (where the fsspec backend's sessions live)."""
    from zarr.core.sync import sync

    return sync(coro)


def store_bytes(store, prefix: str) -> int:
    """Bytes of all objects under `prefix` of a RemoteStore."""
    return run_sync(store.du(prefix))


# --------------------------------------------------------------------------------------------- lease


def _holder_record(token: str, seconds: float) -> dict:
    return {"owner": token, "pid": os.getpid(), "host": socket.gethostname(), "seconds": seconds,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300]}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another writer"
    return f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {holder.get('since')})"


class WriterLease:
    """One writer at a time for a prefix of an object store, without locks (see docs/store-format.md).

    Objects under PREFIX/.sql-writer/: `lease-N` (created with a conditional create: of two writers
    racing for N, exactly one succeeds), `heartbeat-N` (rewritten by N's holder every seconds/4) and
    `released-N` (written by N's holder when it is done). The holder of the highest N owns the prefix.

    Taking over: a free prefix (no lease, or the highest is released) is taken at once. Otherwise the
    newcomer watches the holder's heartbeat for `seconds` (its own monotonic clock, so clocks of different
    hosts need not agree): if it changes, the holder is alive and the newcomer is refused (one line naming
    it); if not, the newcomer creates lease N+1 and then waits seconds/2 before writing. The holder stops
    writing (`check()` raises) once its last successful heartbeat started seconds/2 ago, or once lease N+1
    exists. So a holder that lost contact stops before a newcomer starts, as long as one write takes less
    than `seconds` to land.
    """

    def __init__(self, store, prefix: str, *, what: str, seconds: float = LEASE_SECONDS,
                 poll: float | None = None):
        if seconds <= 0:
            raise UsageError(f"lease time {seconds} must be positive")
        self.store, self.prefix, self.what, self.seconds = store, prefix.strip("/"), what, float(seconds)
        self.poll = poll if poll is not None else min(1.0, self.seconds / 8)
        self.token = uuid.uuid4().hex
        self.number: int | None = None
        self._beats = 0
        self._last_ok = 0.0
        self._lost: str | None = None
        self._last_error = "no answer"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _key(self, kind: str, n: int) -> str:
        return f"{self.prefix}/{LEASE_DIR}/{kind}-{n:08d}"

    def _read(self, key: str):
        from zarr.core.buffer import default_buffer_prototype

        buf = run_sync(self.store.get(key, default_buffer_prototype()))
        if buf is None:
            return None
        try:
            return json.loads(buf.to_bytes())
        except ValueError:
            return {}

    def _put(self, key: str, record: dict) -> None:
        from zarr.core.buffer import default_buffer_prototype

        run_sync(self.store.set(key, default_buffer_prototype().buffer.from_bytes(json.dumps(record).encode())))

    def _numbers(self) -> list[int]:
        async def names():
            return [k async for k in self.store.list_dir(f"{self.prefix}/{LEASE_DIR}")]

        out = []
        for name in run_sync(names()):
            kind, _, num = name.rpartition("-")
            if kind == "lease" and num.isdigit():
                out.append(int(num))
        return sorted(out)

    def acquire(self) -> WriterLease:
        while True:
            numbers = self._numbers()
            top = numbers[-1] if numbers else -1
            stale = 0.0
            if top >= 0 and self._read(self._key("released", top)) is None:
                stale = self._watch(top)  # returns only if the holder was silent for its lease time; raises if alive
            if run_sync(self.store.create(self._key("lease", top + 1),
                                          json.dumps(_holder_record(self.token, self.seconds)).encode())):
                break
            # Another writer took top + 1 first: it is alive by construction; look again (it will be refused).
        self.number = top + 1
        self._beat()
        if self._lost:
            raise SourceUnavailable(f"{self.what}: cannot write the writer lease ({self._lost})")
        if stale:
            time.sleep(stale / 2)  # let a holder that lost contact notice and stop first
            self._beat()
        for n in numbers:
            if n < top:
                for kind in ("lease", "heartbeat", "released"):
                    with contextlib.suppress(SqlError, OSError):
                        run_sync(self.store.delete(self._key(kind, n)))
        self._thread = threading.Thread(target=self._heartbeats, daemon=True, name="sql-writer-lease")
        self._thread.start()
        return self

    def _watch(self, n: int) -> float:
        holder = self._read(self._key("lease", n)) or {}
        seconds = max(self.seconds, float(holder.get("seconds") or 0))  # the holder beats at its own pace
        first = self._read(self._key("heartbeat", n))
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(self.poll)
            if self._read(self._key("released", n)) is not None:
                return 0.0
            if self._read(self._key("heartbeat", n)) != first:
                raise UsageError(f"{self.what} is being written by {_describe(holder)}",
                                 hint="shard other games/runs from this host, or wait until it finishes")
        return seconds

    def _beat(self) -> None:
        started = time.monotonic()
        try:
            self._beats += 1
            self._put(self._key("heartbeat", self.number), {"owner": self.token, "beat": self._beats})
            if run_sync(self.store.exists(self._key("lease", self.number + 1))):
                self._lost = "another writer took the lease over"
                return
        except SqlError as exc:
            self._last_error = exc.one_line()
            return
        self._last_ok = started

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            self._beat()
            if self._lost:
                return

    def check(self) -> None:
        """Raise if this writer may no longer write (lease lost or heartbeats failing for too long)."""
        if self._lost:
            raise UsageError(f"{self.what}: {self._lost}; stopped before writing more",
                             hint="only one shard may write a run group at a time")
        if time.monotonic() - self._last_ok >= self.seconds / 2:
            raise SourceUnavailable(f"{self.what}: the writer lease could not be renewed for {self.seconds / 2:.0f}s "
                                    f"({self._last_error}); stopped before writing more",
                                    hint="check the network; re-running resumes at the last completed checkpoint")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.number is not None and not self._lost:
            with contextlib.suppress(SqlError, OSError):
                self._put(self._key("released", self.number), {"owner": self.token})


def lease_store(url: str):
    """(store, prefix) where the writer leases of the store at `url` live: beside it, never inside it
    (s3://BUCKET/PATH/NAME -> s3://BUCKET/PATH/.NAME.sql-locks/), so that zarr lists the store's run groups
    without warnings and the store's byte counts are data only. A store at a bucket's root has no beside:
    its leases stay in its run groups (under .sql-writer/)."""
    scheme, rest = url.split("://", 1)
    bucket, _, path = rest.strip("/").partition("/")
    if not path:
        return open_remote(url, read_only=False), ""
    parent, _, name = path.rpartition("/")
    return open_remote(f"{scheme}://{bucket}/{parent + '/' if parent else ''}.{name}.sql-locks", read_only=False), ""


@contextlib.contextmanager
def writer_lease(store, prefix: str, *, what: str, seconds: float = LEASE_SECONDS) -> Iterator[WriterLease]:
    """Hold the `WriterLease` of `prefix` for the block; released at its end (also on errors)."""
    lease = WriterLease(store, prefix, what=what, seconds=seconds).acquire()
    try:
        yield lease
    finally:
        lease.release()

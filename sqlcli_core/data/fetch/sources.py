"""Where files come from (one `Source` interface): HTTP(S) (the public bucket or a mirror), `gs://` through
the optional gcsfs extra, or a local directory with the same layout (copy or link)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlcli_core.data.fetch.checksums import ObjectInfo, parse_goog_hash
from sqlcli_core.errors import UsageError

PUBLIC_BUCKET_URL = "https://storage.googleapis.com/atari-replay-datasets/dqn"
CLOSED_BUCKET_HINT = (
    "the public bucket may be closed to anonymous reads; use --base-url MIRROR or --from DIR "
    "(a directory with the same layout, e.g. made by `gsutil -m cp -R`)"
)

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

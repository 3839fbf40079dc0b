"""A real HTTP server on 127.0.0.1 serving a DQN-Replay tree, with injectable faults (tests and benchmarks).

It speaks HTTP/1.1 with keep-alive, answers HEAD and `Range: bytes=N-`, sends GCS-style
`x-goog-hash: crc32c=..., md5=...` headers when asked, and can misbehave per object:

one-shot faults (consumed by successive GETs of that object, in order):
  "500"      answer 500 Internal Server Error
  "cut"      send the headers for the whole range, half the body, then drop the connection
  "corrupt"  send the right length with one byte flipped (the x-goog-hash still describes the true bytes)
persistent faults (every request, HEAD included):
  "403" / "404"     refuse / deny existence
  "bad_md5"         x-goog-hash md5 that matches no body
  "no_range"        ignore Range headers (answer 200 with the whole object, as some servers do)
  "truncated_gzip"  serve the first half of the file as if it were the whole object (consistent length;
                    its x-goog-hash, if any, describes the truncated bytes)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from sqlcli_core.atomic import atomic_output
from sqlcli_core.data import replay_format as rf


def make_tree(root: Path, games=("Pong",), runs=(1, 2), checkpoints=(0, 1, 2), capacity: int = 50,
              seed: int = 0) -> list[Path]:
    """Write real DQN-Replay-format checkpoints (ring semantics of the spec) under `root`; return the files."""
    rng = np.random.default_rng(seed)
    files = []
    for game in games:
        for run in runs:
            d = rf.replay_dir(root, game, run)
            for n in checkpoints:
                add_count = (n + 1) * capacity - 1
                cursor = add_count % capacity
                arrays = {
                    "observation": rng.integers(0, 16, (capacity, 84, 84), dtype=np.uint8),
                    "action": rng.integers(0, 6, capacity, dtype=np.int32),
                    "reward": rng.choice(np.array([-1, 0, 1], np.float32), capacity),
                    "terminal": (rng.random(capacity) < 0.05).astype(np.uint8),
                    "add_count": np.array(add_count, dtype=np.int64),
                    "invalid_range": rf.invalid_range(cursor, capacity),
                }
                for kind, arr in arrays.items():
                    save = rf.save_npy_gz if arr.ndim else _save_0d_npy_gz
                    files.append(save(d / rf.file_name(kind, n), arr))
    return files


def _save_0d_npy_gz(path: Path, arr: np.ndarray) -> Path:
    """Like rf.save_npy_gz, but keeps a 0-d array 0-d (add_count has shape () in the bucket, as Dopamine
    saves it). rf.save_npy_gz's np.ascontiguousarray turns it into shape (1,)."""
    with atomic_output(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            np.save(gz, arr, allow_pickle=False)
    return Path(path)


def goog_hash_header(data: bytes) -> str:
    import google_crc32c

    crc = google_crc32c.value(data).to_bytes(4, "big")
    return f"crc32c={base64.b64encode(crc).decode()}, md5={base64.b64encode(hashlib.md5(data).digest()).decode()}"


class ReplayServer:
    """`with ReplayServer(root) as srv:` serves `root` at `srv.url`; `srv.faults`, `srv.persistent`, `srv.log`."""

    def __init__(self, root: Path, goog_hash: bool = True):
        self.root = Path(root)
        self.send_hash = goog_hash
        self.faults: dict[str, list[str]] = {}
        self.persistent: dict[str, str] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, rel, Range header)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # http.server writes headers and body separately; with Nagle on, each keep-alive response
            # stalls ~40 ms on the client's delayed ACK. Production servers (GCS, nginx) do not.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _status(self, code: int):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, head: bool):
                rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
                rng = self.headers.get("Range")
                with server._lock:
                    server.log.append(("HEAD" if head else "GET", rel, rng))
                    persistent = server.persistent.get(rel)
                    fault = None if head or not server.faults.get(rel) else server.faults[rel].pop(0)
                path = server.root / rel
                if persistent in ("403", "404"):
                    return self._status(int(persistent))
                if not path.is_file():
                    return self._status(404)
                data = path.read_bytes()
                if persistent == "truncated_gzip":
                    data = data[: len(data) // 2]
                if fault == "500":
                    return self._status(500)
                start = 0
                if persistent == "no_range":
                    rng = None
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        return self._status(416)
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if server.send_hash:
                    h = goog_hash_header(data)
                    if persistent == "bad_md5":
                        h = goog_hash_header(data + b"x")
                    self.send_header("x-goog-hash", h)
                self.end_headers()
                if head:
                    return
                if fault == "corrupt":
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                    body = bytes(body)
                if fault == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def gets(self, rel: str | None = None) -> list[tuple[str, str, str | None]]:
        with self._lock:
            return [e for e in self.log if e[0] == "GET" and (rel is None or e[1] == rel)]

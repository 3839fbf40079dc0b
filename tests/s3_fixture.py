"""A real S3-compatible server on 127.0.0.1 (moto's server mode) and a fault-injecting HTTP proxy in front
of it, for the object-storage tests and benchmarks/bench_remote_store.py. Nothing here touches a network
beyond the loopback interface.

`S3Server` starts moto on a free port; `env()` is what a process needs to use it through the standard AWS
variables (AWS_ENDPOINT_URL and dummy credentials). `FaultProxy` forwards every request to a target
server and, deterministically by request number, adds latency, answers 503 SlowDown, or drops the
connection without an answer; `fail_keys` makes every request for matching object keys fail (a persistent
error). Faults are bounded (`max_faults`) so that retries always end.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import threading
import time
import urllib.parse


class S3Server:
    """moto's ThreadedMotoServer on 127.0.0.1, a free port."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.port = port

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for boto/s3fs to talk to this server (or to `endpoint`, e.g. a proxy in front)."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def create_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("PUT", f"/{name}")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status not in (200, 409):
            raise RuntimeError(f"create bucket {name}: HTTP {resp.status}")

    def stop(self) -> None:
        self._server.stop()


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that forwards to `target` ("http://host:port") with injected faults.

    latency: seconds added before forwarding each request.
    fail_every: every n-th request (by arrival count) gets a 503 SlowDown answer; drop_every: every n-th
    request has its connection closed without an answer. At most `max_faults` of both in total.
    fail_keys: substrings of the request path whose requests always get HTTP 500 (a persistent error).
    """

    def __init__(self, target: str, *, latency: float = 0.0, fail_every: int = 0, drop_every: int = 0,
                 max_faults: int = 0, fail_keys: tuple[str, ...] = ()):
        parsed = urllib.parse.urlparse(target)
        self.target = (parsed.hostname, parsed.port)
        self.latency, self.fail_every, self.drop_every = latency, fail_every, drop_every
        self.max_faults, self.fail_keys = max_faults, fail_keys
        self.requests = 0
        self.faults = 0
        self.failed_keys = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                proxy._forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")
        self._thread.start()

    def _fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            n = self.requests
            if self.faults >= self.max_faults:
                return None
            if self.drop_every and n % self.drop_every == 0:
                self.faults += 1
                return "drop"
            if self.fail_every and n % self.fail_every == 0:
                self.faults += 1
                return "503"
        return None

    def _forward(self, handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if self.latency:
            time.sleep(self.latency)
        if any(k in handler.path for k in self.fail_keys):
            with self._lock:
                self.failed_keys += 1
            self._answer(handler, 500, b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
            return
        fault = self._fault()
        if fault == "drop":
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "503":
            self._answer(handler, 503, b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>")
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
        conn = http.client.HTTPConnection(*self.target, timeout=60)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            handler.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                    handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            conn.close()

    @staticmethod
    def _answer(handler, status: int, body: bytes) -> None:
        handler.send_response_only(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

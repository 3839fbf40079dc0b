"""`fetch_manifest.json` in each replay_logs directory: what fetch-data verified (size, mtime, md5), so a
re-run skips verified files without re-reading them."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from sqlcli_core.atomic import write_json
from sqlcli_core.data.fetch.verification import Verified

MANIFEST_NAME = "fetch_manifest.json"

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

    def recorded(self, path: Path) -> dict | None:
        """The manifest's entry for `path` (size, mtime_ns, md5, ...), or None."""
        with self._lock:
            entry = self._load(path.parent).get(path.name)
        return entry if isinstance(entry, dict) else None

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

"""One writer per output: exclusive locks that a killed holder cannot leave behind.

Every command that writes a shared output (a store's run group, a run directory, a fetch folder) takes
`writer_lock(...)` on a lock file next to what it writes. The lock is a kernel `flock` on that file, so it
is released by the kernel when its holder exits for any reason, SIGKILL and power-off of the process
included: there is no stale lock to detect or break by hand. The file also records who holds it (pid, host,
command, start time) so that a second writer is refused with one line that names the holder.

Why flock and not a pid file: a pid file outlives a killed holder and then needs guessing ("is pid 1234
still ours?"), which fails across hosts and after pid reuse; flock needs no guessing on local file systems
and on NFSv4 (where the server releases a dead client's locks when its lease lapses). Object stores have no
locks at all; the remote-store code uses conditional writes instead (docs/failure-behaviour.md).

The lock file is never deleted: deleting it while another process waits on the old inode would let two
processes hold "the" lock at once. A holder also checks, after locking, that the path still names the
inode it locked, for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sqlcli_core.atomic import make_directories
from sqlcli_core.errors import UsageError, from_os_error

LOCK_NAME = ".sql-writer.lock"


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:300]}


def read_holder(lock_path: str | os.PathLike) -> dict | None:
    """The holder record written by the current (or last) holder of `lock_path`, or None if unreadable."""
    try:
        return json.loads(Path(lock_path).read_text() or "null")
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (`{holder.get('command')}`, since {holder.get('since')})"


@contextlib.contextmanager
def writer_lock(lock_path: str | os.PathLike, *, what: str, hint: str) -> Iterator[Path]:
    """Hold an exclusive lock on `lock_path` for the duration of the block, or raise UsageError (exit 2).

    `what` names the output in the refusal ("the run directory runs/a"); `hint` says what to do instead.
    The parent directory is created if missing. Locks taken twice in one process conflict too: each call
    opens the file anew.
    """
    path = Path(lock_path)
    created = []
    try:
        created = make_directories(path.parent)  # undone if the lock file cannot be made: no empty folders left
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise from_os_error(exc, f"creating the lock file {path}") from None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"{what} is being written by {_describe(read_holder(path))}", hint=hint) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            # Someone replaced the file between our open and our lock: lock the file that is there now.
            os.close(fd)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        record = json.dumps(_holder_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def directory_lock(directory: str | os.PathLike, *, what: str, hint: str) -> contextlib.AbstractContextManager:
    """`writer_lock` on DIRECTORY/.sql-writer.lock: one writer per directory (a file there is refused, exit 2)."""
    if Path(directory).is_file():
        raise UsageError(f"{what} is a file, not a directory", hint="choose a directory path")
    return writer_lock(Path(directory) / LOCK_NAME, what=what, hint=hint)


@contextlib.contextmanager
def directory_flock(directory: str | os.PathLike) -> Iterator[Path]:
    """A *blocking* exclusive flock on DIRECTORY itself (created if missing), for a short section that must
    run in one process at a time, the others waiting (creating a store's root and groups once when two
    writers start together). It leaves no file behind, so it can guard a directory whose listing others
    read (a Zarr group). Released by the kernel when the holder dies, like `writer_lock`."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise from_os_error(exc, f"creating the directory {path}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            # Some network file systems cannot lock a directory (NFS emulates flock with byte-range locks,
            # which need a file open for writing): go on unlocked; this only guards a short, idempotent
            # creation, and each writer still takes its `writer_lock`.
            if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise from_os_error(exc, f"locking the directory {path}") from None
        yield path
    finally:
        os.close(fd)

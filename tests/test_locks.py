"""One writer per output (sqlcli_core.locks) and one-line OS errors (sqlcli_core.errors.from_os_error).

Real processes: a holder in a subprocess, killed with SIGKILL, must not leave a lock behind.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sqlcli_core.errors import ResourceError, SqlError, UsageError, from_os_error
from sqlcli_core.locks import LOCK_NAME, directory_lock, read_holder, writer_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from sqlcli_core.locks import directory_lock
    with directory_lock(sys.argv[1], what="the test dir", hint="wait"):
        print("locked", flush=True)
        time.sleep(600)
""")


def _start_holder(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_naming_the_holder_then_admitted_after_a_kill(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(UsageError) as info:
            with directory_lock(tmp_path, what="the run directory X", hint="wait for it"):
                pass
        message = str(info.value)
        assert message.startswith("the run directory X is being written by pid ")
        assert str(holder.pid) in message and "(wait for it)" in message
        assert info.value.exit_code == 2
        assert read_holder(tmp_path / LOCK_NAME)["pid"] == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's lock: no stale lock to break.
    with directory_lock(tmp_path, what="x", hint="y"):
        assert read_holder(tmp_path / LOCK_NAME)["pid"] == os.getpid()


def test_two_locks_in_one_process_conflict_and_release_on_exit(tmp_path):
    path = tmp_path / "sub" / "w.lock"
    with writer_lock(path, what="the store", hint="h"):
        with pytest.raises(UsageError):
            with writer_lock(path, what="the store", hint="h"):
                pass
    with writer_lock(path, what="the store", hint="h"):  # released by the first block
        pass
    assert path.exists()  # never deleted (see the module docstring)


def test_lock_file_replaced_while_waiting_is_relocked(tmp_path):
    path = tmp_path / "w.lock"
    with writer_lock(path, what="a", hint="b"):
        os.replace(tmp_path / "w.lock", tmp_path / "old.lock")
        start = time.perf_counter()
        with writer_lock(path, what="a", hint="b"):  # a new file: not the one held above
            pass
        assert time.perf_counter() - start < 5


def _flush_full():
    with open("/dev/full", "w") as f:
        f.write("x")
        f.flush()


@pytest.mark.parametrize("make_error, cls, code, words", [
    (lambda tmp: _flush_full(), ResourceError, 5, "no space left"),
    (lambda tmp: (tmp / ("n" * 300)).write_text("x"), UsageError, 2, "too long"),
    (lambda tmp: ((tmp / "f").write_text("x"), (tmp / "f" / "g").write_text("x")), UsageError, 2, "is a file"),
    (lambda tmp: open("/proc/no-such/x", "w"), UsageError, 2, "no such file"),
])
def test_os_errors_become_one_line_with_the_documented_exit_code(tmp_path, make_error, cls, code, words):
    with pytest.raises(OSError) as info:
        make_error(tmp_path)
    err = from_os_error(info.value, "writing the test file")
    assert isinstance(err, cls) and err.exit_code == code
    line = err.one_line()
    assert words in line and "while writing the test file" in line and "\n" not in line


def test_unknown_errno_is_still_one_line():
    err = from_os_error(OSError(errno.ECONNRESET, "Connection reset by peer"), "reading")
    assert isinstance(err, SqlError) and err.one_line().startswith("Connection reset by peer while reading")

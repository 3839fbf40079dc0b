"""fetch-data and collect never silently wrong: one writer per game/run directory, `--verify-existing`,
and OS errors (full disk, read-only file system, a file or /proc as --out, a too long name) as one line
with the documented exit code, leaving nothing half-written that looks valid (docs/failure-behaviour.md).

Real processes (two CLI processes at once, a lock holder killed with SIGKILL), real tmpfs mounts (skipped,
with the reason, where mounting is not permitted). References: the source files themselves (byte for
byte) and a run collected uninterrupted with the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sqlcli_core.acting.collect_runs import run_dir
from sqlcli_core.data import fetch as F
from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import ResourceError
from sqlcli_core.locks import LOCK_NAME
from tests.replay_http_server import make_tree
from tests.test_store_safety import HOLD_LOCK, one_error_line, sql, tmpfs

FAST = F.FetchConfig(jobs=2, retries=1, backoff_base=0.001, backoff_max=0.01)
PONG_1 = F.Selection(("Pong",), (1,), (0, 1, 2))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bucket")
    make_tree(root, games=("Pong",), runs=(1, 2), checkpoints=(0, 1, 2))
    return root


def fetch_cli(src: Path, out: Path, *extra: str, runs: str = "1") -> list[str]:
    return ["fetch-data", "--games", "Pong", "--runs", runs, "--checkpoints", "0-2", "--out", str(out), "--from", str(src),
            *extra]


def assert_fetched(out: Path, src: Path, selection: F.Selection) -> None:
    """Every file is the source's bytes and has its manifest entry (none lost to a concurrent writer)."""
    for t in F.plan_files(selection, out):
        data = t.dest.read_bytes()
        assert data == (src / t.rel).read_bytes(), t.rel
        manifest = json.loads((t.dest.parent / F.MANIFEST_NAME).read_text())["files"]
        assert manifest[t.dest.name]["md5"] == hashlib.md5(data).hexdigest(), t.rel
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp", ".link"))]


# ------------------------------------------------------------------------------------- fetch-data


def test_second_fetch_of_a_run_directory_is_refused_then_admitted_after_sigkill(src, tmp_path):
    out = tmp_path / "out"
    lock = rf.replay_dir(out, "Pong", 1) / LOCK_NAME
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = sql(*fetch_cli(src, out))
        assert refused.returncode == 2
        line = one_error_line(refused)
        assert f"Pong/1 under {out} is being written by pid {holder.pid}" in line
        assert sorted(p.name for p in lock.parent.iterdir()) == [LOCK_NAME]  # nothing fetched
        # another run of the same game into the same folder is not held up
        other = sql(*fetch_cli(src, out, runs="2"))
        assert other.returncode == 0, other.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = sql(*fetch_cli(src, out))
    assert again.returncode == 0, again.stderr
    assert_fetched(out, src, F.Selection(("Pong",), (1, 2), (0, 1, 2)))


def test_two_fetches_into_one_folder_at_once_lose_no_manifest_entry(src, tmp_path):
    out = tmp_path / "out"
    cmds = [[sys.executable, "-m", "sqlcli.main", *fetch_cli(src, out, "--jobs", "1", runs=r)] for r in ("1-2", "1-2", "2")]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    assert all(code in (0, 2) for code, _ in results) and any(code == 0 for code, _ in results), results
    for code, err in results:
        if code == 2:
            assert "is being written by pid" in err and err.count("error: ") == 1
    rerun = sql(*fetch_cli(src, out, runs="1-2"))  # completes what a refused one left; skips the rest
    assert rerun.returncode == 0, rerun.stderr
    assert_fetched(out, src, F.Selection(("Pong",), (1, 2), (0, 1, 2)))


def test_verify_existing_rehashes_what_size_and_mtime_cannot_see(src, tmp_path):
    out = tmp_path / "out"
    assert F.fetch(PONG_1, out, F.open_source(from_dir=src), FAST).summary()["files"]["fetched"] == 18
    victim = rf.replay_dir(out, "Pong", 1) / rf.file_name("action", 1)
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[12] ^= 0x01  # inside the gzip header's mtime field: gzip's own CRC does not cover it
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    # the fast path trusts size and mtime (documented): the damaged file is skipped
    fast = F.fetch(PONG_1, out, F.open_source(from_dir=src), FAST).summary()
    assert fast["files"]["skipped"] == 18 and fast["damaged_existing"] == []
    out_json = sql(*fetch_cli(src, out, "--verify-existing", "--json"))
    assert out_json.returncode == 0, out_json.stderr
    summary = json.loads(out_json.stdout)
    assert summary["damaged_existing"] == [f"Pong/1/replay_logs/{victim.name}"] and summary["reverified"] == 17
    assert summary["files"]["fetched"] == 1 and "1 damaged and fetched again" in out_json.stderr
    assert_fetched(out, src, PONG_1)


@pytest.mark.parametrize("make_out, words", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "--out {} is a file, not a directory"),
    (lambda tmp: Path("/proc/sql-fetch"), "--out {} is not writable (no such file or directory)"),
    (lambda tmp: tmp / ("n" * 300), "is not writable (file name too long)"),
])
def test_fetch_bad_out_is_one_line(src, tmp_path, make_out, words):
    out = make_out(tmp_path)
    res = sql(*fetch_cli(src, out))
    assert res.returncode == 2, res.stderr
    line = one_error_line(res)
    assert words.format(out) in line and "free" not in line


def test_fetch_onto_a_read_only_file_system(src, tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        res = sql(*fetch_cli(src, mnt / "out"))
        assert res.returncode == 2
        assert "is not writable (read-only file system)" in one_error_line(res)


def test_fetch_full_disk_is_one_line_publishes_nothing_unverified_and_resumes(src, tmp_path):
    with tmpfs(tmp_path / "mnt", "300k") as mnt:
        out = mnt / "out"
        # past the up-front space check (which the CLI always runs: exit 5 with the numbers), the disk
        # fills while writing: one ResourceError naming the part file
        with pytest.raises(ResourceError, match=r"no space left on the device while writing .*\.part"):
            F.fetch(PONG_1, out, F.open_source(from_dir=src), F.FetchConfig(jobs=1, retries=0, check_disk=False))
        finals = [t for t in F.plan_files(PONG_1, out) if t.dest.exists()]
        assert len(finals) < 18
        for t in finals:  # every file with its final name is complete and verified
            assert t.dest.read_bytes() == (src / t.rel).read_bytes()
        cli = sql(*fetch_cli(src, out))
        assert cli.returncode == 5 and "need" in one_error_line(cli) and "free" in one_error_line(cli)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = sql(*fetch_cli(src, out))
        assert again.returncode == 0, again.stderr
        assert_fetched(out, src, PONG_1)


# ------------------------------------------------------------------------------------- collect

COLLECT = ["--games", "breakout", "--transitions", "150", "--capacity", "16", "--seed", "3"]


def collected(root: Path) -> dict[str, np.ndarray]:
    logs = rf.replay_dir(root, "Breakout", 1)
    return {p.name: rf.load_npy_gz(p, rf.parse_file_name(p.name)[0]) for p in sorted(logs.iterdir())}


@pytest.fixture(scope="module")
def reference_collect(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    res = sql("collect", *COLLECT, "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_collect_lock_holder_killed_then_rerun_equals_uninterrupted(reference_collect, tmp_path):
    out = tmp_path / "out"
    (out / "Breakout").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / "Breakout" / ".1.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = sql("collect", *COLLECT, "--out", str(out))
        assert refused.returncode == 2
        assert f"Breakout/1 under {out} is being written by pid {holder.pid}" in one_error_line(refused)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = sql("collect", *COLLECT, "--out", str(out))
    assert res.returncode == 0, res.stderr
    got, want = collected(out), collected(reference_collect)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_collect_full_disk_is_one_line_and_resumes_to_identical_files(reference_collect, tmp_path):
    with tmpfs(tmp_path / "mnt", "256k") as mnt:  # fills up after the first checkpoint
        out = mnt / "out"
        res = sql("collect", *COLLECT, "--out", str(out))
        assert res.returncode == 5, res.stderr
        line = one_error_line(res)
        assert "no space left on the device while writing" in line and ".1.partial" in line
        assert not run_dir(out, "Breakout", 1).exists()  # the final name only ever holds a finished run
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = sql("collect", *COLLECT, "--out", str(out), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["runs"][0]["status"] == "resumed"
        got, want = collected(out), collected(reference_collect)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("make_out, words", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is a file, not a directory"),
    (lambda tmp: Path("/proc/sql-collect"), "is not writable (no such file or directory)"),
    (lambda tmp: tmp / ("n" * 300), "is not writable (file name too long)"),
])
def test_collect_bad_out_is_one_line(tmp_path, make_out, words):
    res = sql("collect", *COLLECT, "--out", str(make_out(tmp_path)))
    assert res.returncode == 2, res.stderr
    assert words in one_error_line(res)


def test_collect_onto_a_read_only_file_system(tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        res = sql("collect", *COLLECT, "--out", str(mnt / "out"))
        assert res.returncode == 2
        assert "is not writable (read-only file system)" in one_error_line(res)

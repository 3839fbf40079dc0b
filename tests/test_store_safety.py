"""The store never silently wrong: one writer per run group, damage read as an error (never as zeros),
`shard --verify` catching lost metadata and chunks, and OS errors as one line (docs/failure-behaviour.md).

Real processes (two `sql shard` at once, a lock holder killed with SIGKILL), real Zarr stores on disk,
real tmpfs mounts for a full and a read-only disk (skipped, with the reason, where mounting is not
permitted). References: a store sharded once, uninterrupted, by the same code (byte-identity), and the
fixture's own stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sqlcli_core.data import store as st
from sqlcli_core.data.reference_sampler import ReferenceSampler
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.data.store.ingest import run_group_lock
from sqlcli_core.errors import DataError
from sqlcli_core.locks import LOCK_NAME
from tests.replay_fixture import write_run
from tests.test_store import tree_bytes

CHUNK = 64
CONFIG = st.ShardConfig(frame_chunk=CHUNK)


def sql(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlcli.main", *args], capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    write_run(root, "Pong", 1, capacity=300, total=4200, num_actions=6, seed=7)
    write_run(root, "Breakout", 1, capacity=300, total=2500, num_actions=4, seed=8)
    return root


@pytest.fixture(scope="module")
def whole(source, tmp_path_factory):
    """The reference: each game sharded alone, uninterrupted."""
    out = {}
    for game in ("Pong", "Breakout"):
        dst = tmp_path_factory.mktemp("whole") / game
        st.shard(source, dst, games=[game], config=CONFIG)
        out[game] = dst
    return out


def game_tree(dst: Path, game: str) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(dst).items() if k.startswith(f"{game}/")}


# ------------------------------------------------------------------------------------- one writer

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from sqlcli_core.locks import writer_lock
    with writer_lock(sys.argv[1], what="x", hint="y"):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_second_writer_of_a_run_group_is_refused_then_admitted_after_sigkill(source, whole, tmp_path):
    dst = tmp_path / "store"
    assert sql("shard", str(source), str(dst), "--games", "Pong", "--checkpoints", "0-3", "--frame-chunk", "64").returncode == 0
    before = tree_bytes(dst)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_group_lock(dst, "Pong", 1))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64")
        assert refused.returncode == 2
        line = one_error_line(refused)
        assert "Pong/1 is being written by pid" in line and str(holder.pid) in line
        assert tree_bytes(dst) == before  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the killed holder's lock: the same command now resumes to the uninterrupted result
    again = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64")
    assert again.returncode == 0, again.stderr
    assert tree_bytes(dst) == tree_bytes(whole["Pong"])


def test_store_locks_live_outside_the_store_which_lists_without_warnings(source, tmp_path):
    """The run groups' writer locks are next to the store, not in it: zarr and xarray list the store without a
    warning, and bytes_on_disk counts the data only (the same number on every run; it used to include a lock
    file whose holder record changed size from run to run). A lock file an earlier version left inside a run
    group is removed by the next shard."""
    import warnings

    import xarray as xr
    import zarr

    dst = tmp_path / "store"
    first = sql("shard", str(source), str(dst), "--games", "Pong", "--checkpoints", "0-3", "--frame-chunk", "64",
                "--json")
    assert first.returncode == 0, first.stderr
    legacy = dst / "Pong" / "1" / LOCK_NAME
    legacy.write_text('{"pid": 1, "command": "an earlier sql"}')
    again = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64", "--json")
    assert again.returncode == 0, again.stderr
    assert not legacy.exists()
    lock = run_group_lock(dst, "Pong", 1)
    assert lock.exists() and dst.resolve() not in lock.parents
    # every file of the store is zarr metadata or an array chunk
    for p in dst.rglob("*"):
        assert p.is_dir() or p.name == "zarr.json" or "c" in p.relative_to(dst).parts, p
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(dst, mode="r").members(max_depth=None))
        tree = xr.open_datatree(dst, engine="zarr", consolidated=False)
    assert {"Pong", "Pong/1", "Pong/1/frames"} <= set(members) and tree["Pong/1"].sizes["row"] > 0
    reported = json.loads(again.stdout)["runs"][0]["bytes_on_disk"]
    assert reported == sum(p.stat().st_size for p in (dst / "Pong" / "1").rglob("*") if p.is_file())
    third = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64", "--json")
    assert json.loads(third.stdout)["runs"][0]["bytes_on_disk"] == reported


def test_two_shards_of_one_store_at_once_never_both_write_a_run(source, whole, tmp_path):
    dst = tmp_path / "store"
    cmd = [sys.executable, "-m", "sqlcli.main", "shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64",
           "--jobs", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "is being written by pid" in err and err.count("error: ") == 1
    assert tree_bytes(dst) == tree_bytes(whole["Pong"])
    assert st.verify(dst)["ok"]


def test_two_shards_of_different_games_start_together_into_a_new_store(source, whole, tmp_path):
    dst = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-m", "sqlcli.main", "shard", str(source), str(dst), "--games", game,
                               "--frame-chunk", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for game in ("Pong", "Breakout")]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    root = st.open_store(dst)
    assert sorted(root.group_keys()) == ["Breakout", "Pong"]
    for game in ("Pong", "Breakout"):
        assert game_tree(dst, game) == game_tree(whole[game], game)
    assert st.verify(dst)["ok"]


# ------------------------------------------------------------------------------------- damage


@pytest.fixture
def store_copy(whole, tmp_path):
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(whole["Pong"], dst)
    return dst


def chunk_file(dst: Path, array: str, index: int) -> Path:
    tail = "/0/0" if array == "frames" else ""
    return dst / "Pong" / "1" / array / "c" / f"{index}{tail}"


def test_new_arrays_carry_a_crc32c_of_every_chunk(store_copy):
    meta = json.loads((store_copy / "Pong" / "1" / "frames" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "zstd", "crc32c"]


@pytest.mark.parametrize("damage, words", [
    ("delete", "chunk 5 of frames (rows 320-384) is missing"),
    ("flip", "chunk 5 of frames (rows 320-384) checksum mismatch"),
])
def test_damaged_chunk_fails_the_sampler_and_verify_naming_it(store_copy, damage, words):
    path = chunk_file(store_copy, "frames", 5)
    if damage == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    # the read path: every unit of the run is loaded by a sampler whose cache holds the whole run
    with pytest.raises(DataError, match=r"Pong/1: " + words.replace("(", r"\(").replace(")", r"\)")):
        with ReplaySampler(store_copy, batch_size=8, seed=0, cache_bytes=256 << 20, unit_chunks=1) as s:
            s.next_batch()
    with pytest.raises(DataError, match="chunk 5 of frames"):
        ReferenceSampler(store_copy)
    out = sql("shard", "--verify", str(store_copy))
    assert out.returncode == 3
    line = one_error_line(out)
    assert "Pong/1 failed verification" in line and "chunk 5 of frames" in line


def test_missing_scalar_chunk_is_not_read_as_zero_rewards(store_copy):
    chunk_file(store_copy, "rewards", 0).unlink()
    with pytest.raises(DataError, match=r"Pong/1: chunk 0 of rewards .* is missing"):
        with ReplaySampler(store_copy, batch_size=8, seed=0, cache_bytes=256 << 20) as s:
            s.next_batch()


@pytest.mark.parametrize("victim, words", [
    ("Pong/1/zarr.json", "Pong/1: its zarr.json (the run group's metadata and completion records) is missing"),
    ("Pong/1/frames/zarr.json", "Pong/1: frames/zarr.json (the array's metadata) is missing"),
    ("Pong/zarr.json", "Pong: its zarr.json (the game group's metadata) is missing"),
])
def test_lost_metadata_fails_verify_and_the_reader(store_copy, victim, words):
    (store_copy / victim).unlink()
    out = sql("shard", "--verify", str(store_copy))
    assert out.returncode == 3, out.stderr
    assert words.split(": ", 1)[1] in one_error_line(out)
    with pytest.raises(DataError, match=words.split(": ", 1)[1].replace("(", r"\(").replace(")", r"\)")):
        ReplaySampler(store_copy, batch_size=8)


def test_store_without_checksums_is_checked_for_structure(source, tmp_path):
    """Stores written before the crc32c codec: a missing chunk is still an error where it is read, and a
    flipped byte that still decodes is caught by `--verify` (its sha256 of every checkpoint's rows)."""
    dst = tmp_path / "old"
    st.shard(source, dst, games=["Pong"], config=st.ShardConfig(frame_chunk=CHUNK, checksum=False))
    meta = json.loads((dst / "Pong" / "1" / "frames" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "zstd"]
    ref = ReferenceSampler(dst)
    assert len(ref.valid_indices(0, 1)) > 1000
    chunk_file(dst, "frames", 3).unlink()
    with pytest.raises(DataError, match="chunk 3 of frames .* is missing"):
        ReferenceSampler(dst)
    assert not st.verify(dst)["ok"]


# ------------------------------------------------------------------------------------- OS errors


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or 'mount failed'}): needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_is_one_line_leaves_the_committed_rows_and_resumes(source, whole, tmp_path):
    with tmpfs(tmp_path / "mnt", "400k") as mnt:
        dst = mnt / "store"
        out = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64")
        assert out.returncode == 5, out.stderr
        line = one_error_line(out)
        assert "no space left on the device while writing" in line and "Pong/1" in line
        meta = st.run_meta(st.open_store(dst)["Pong"]["1"])
        assert 0 < meta["rows"] and "summary" not in meta  # committed rows only, and marked unfinished
        report = st.verify(dst)
        assert not report["ok"] and any("did not finish" in p or "expected" in p for p in report["runs"][0]["problems"])
        # a reader never sees beyond the committed rows: they equal the uninterrupted store's first rows
        ref = st.open_store(whole["Pong"])["Pong"]["1"]
        got = st.open_store(dst)["Pong"]["1"]
        np.testing.assert_array_equal(got["frames"][:meta["rows"]], ref["frames"][:meta["rows"]])
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = sql("shard", str(source), str(dst), "--games", "Pong", "--frame-chunk", "64")
        assert again.returncode == 0, again.stderr
        assert tree_bytes(dst) == tree_bytes(whole["Pong"])


def test_read_only_file_system_is_refused_before_writing(source, tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        out = sql("shard", str(source), str(mnt / "store"), "--games", "Pong")
        assert out.returncode == 2
        assert "is not writable (read-only file system)" in one_error_line(out)


@pytest.mark.parametrize("make_dst, code, words", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", 2, "is a file, not a directory"),
    (lambda tmp: Path("/proc/sql-store"), 2, "is not writable (no such file or directory)"),
    (lambda tmp: tmp / ("n" * 300), 2, "is not writable (file name too long)"),
])
def test_bad_destinations_are_one_line(source, tmp_path, make_dst, code, words):
    dst = make_dst(tmp_path)
    out = sql("shard", str(source), str(dst), "--games", "Pong")
    assert out.returncode == code, out.stderr
    assert words in one_error_line(out)


def test_source_that_is_a_file_says_so(tmp_path):
    (tmp_path / "src").write_text("x")
    out = sql("shard", str(tmp_path / "src"), str(tmp_path / "dst"))
    assert out.returncode == 2
    assert "is a file, not a directory" in one_error_line(out)
    assert not (tmp_path / "dst").exists()


def test_flipped_byte_in_a_gzip_stream_is_a_crc_error_naming_the_file(source, tmp_path):
    import shutil

    from sqlcli_core.data import replay_format as rf

    src = tmp_path / "src"
    shutil.copytree(source / "Pong", src / "Pong")
    obs = rf.replay_dir(src, "Pong", 1) / rf.file_name("observation", 2)
    data = bytearray(obs.read_bytes())
    data[len(data) // 2] ^= 0x01
    obs.write_bytes(bytes(data))
    out = sql("shard", str(src), str(tmp_path / "dst"), "--frame-chunk", "64")
    assert out.returncode == 3
    line = one_error_line(out)
    assert "observation_ckpt.2.gz: corrupt gzip stream: its CRC-32 does not match" in line and "data after" not in line
    assert os.path.exists(tmp_path / "dst")


def test_cache_too_small_names_the_real_option_and_its_minimum(store_copy):
    from sqlcli_core.errors import UsageError  # a setting too small for the data: exit 2, as docs/pretrain.md says

    # by hand: units of 4 chunks of 64 rows; a slot holds U + 3 padding + n rows of frames (7056 B) and
    # action/reward/terminal (9 B), plus U int32 valid indices; 1 game + 2 spare slots
    U = 4 * CHUNK
    need = (1 + 2) * ((U + 3 + 3) * (84 * 84 + 9) + U * 4)
    with pytest.raises(UsageError) as info:
        ReplaySampler(store_copy, batch_size=8, cache_bytes=10)
    assert f"set cache_bytes (`--cache-bytes` of pretrain and finetune-offline) to at least {need}" in str(info.value)
    with ReplaySampler(store_copy, batch_size=8, cache_bytes=need) as s:
        assert s.next_batch().state.shape == (8, 4, 84, 84)


def test_pretrain_on_a_store_with_a_deleted_chunk_stops_with_one_line(store_copy, tmp_path):
    """The issue's case: a deleted chunk used to train as zero frames. The default cache holds this whole
    small store, so the first batch loads every unit."""
    chunk_file(store_copy, "frames", 3).unlink()
    out = sql("pretrain", "--data", str(store_copy), "--run-dir", str(tmp_path / "run"), "--games", "pong",
              "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8", "--steps", "4", timeout=600)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "Pong/1: chunk 3 of frames (rows 192-256) is missing" in one_error_line(out)


def test_directory_flock_waits_for_its_holder_and_a_killed_holder_releases_it(tmp_path):
    import threading

    from sqlcli_core.locks import directory_flock

    hold = textwrap.dedent("""
        import sys, time
        from sqlcli_core.locks import directory_flock
        with directory_flock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    got = threading.Event()

    def wait_for_it():
        with directory_flock(tmp_path / "store"):
            got.set()

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    try:
        assert not got.wait(1.0)  # blocked while the holder lives
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert got.wait(30)
    waiter.join()
    assert list((tmp_path / "store").iterdir()) == []  # leaves no file

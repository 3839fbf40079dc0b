"""`sql shard`: ring reassembly, gaps, counts, resumability (with SIGKILL), bad input, --verify.

References are independent of store.py: the fixture generator's own stream and episode log
(tests/replay_fixture.py) and the one-index-at-a-time validity rule of the spec.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data import store as st
from sqlcli_core.data.reference_sampler import reference_is_valid
from sqlcli_core.errors import DataError
from tests.replay_fixture import complete_episodes, covered_segments, stored_positions, write_run

CAP, TOTAL = 200, 1150
CONFIG = st.ShardConfig(frame_chunk=64, scalar_chunk=256, block_chunks=2)
RUNS = {  # (game, run): (num_actions, seed, missing checkpoints)
    ("Pong", 1): (6, 1, ()),
    ("Pong", 2): (6, 2, (0,)),  # the stream starts mid-run
    ("Breakout", 1): (4, 3, (2,)),  # a gap in the middle
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    logs = {}
    for (game, run), (na, seed, missing) in RUNS.items():
        log = write_run(root, game, run, capacity=CAP, total=TOTAL, num_actions=na, seed=seed, missing=missing)
        logs[(game, run)] = (log, [c for c in log.checkpoints if c not in missing])
    return root, logs


@pytest.fixture(scope="module")
def sharded(source, tmp_path_factory):
    root, logs = source
    dst = tmp_path_factory.mktemp("dst") / "store"
    result = st.shard(root, dst, config=CONFIG)
    return dst, result


def tree_bytes(path: Path, skip_root_json: bool = True) -> dict[str, bytes]:
    """Every file of a store (relative path -> bytes), without the root zarr.json (provenance timestamps). The
    writer locks live outside the store (ingest.run_group_lock), so every file here is data."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_file() and not (skip_root_json and rel == "zarr.json"):
            out[rel] = p.read_bytes()
    return out


def test_store_holds_the_stream_in_temporal_order_with_gaps(source, sharded):
    _, logs = source
    dst, result = sharded
    root = st.open_store(dst)
    for (game, run), (log, present) in logs.items():
        g = root[game][str(run)]
        pos = stored_positions(log, present)
        meta = st.run_meta(g)
        assert meta["rows"] == len(pos)
        np.testing.assert_array_equal(g["frames"][:], log.stream["frames"][pos])
        for name, key in (("actions", "actions"), ("rewards", "rewards"), ("terminals", "terminals")):
            np.testing.assert_array_equal(g[name][:], log.stream[key][pos])
        # segment boundaries in rows and stream positions equal the covered intervals
        segs = covered_segments(log, present)
        assert [(s[2], s[2] + s[1] - s[0]) for s in meta["segments"]] == segs
        # the spec's frame encodes its own position: spot-check a few real frames
        real = np.flatnonzero(g["frames"][:, 0, 0] | g["frames"][:, 0, 1])[:5]
        for r in real:
            assert np.frombuffer(g["frames"][int(r)].reshape(-1)[:8].tobytes(), np.int64)[0] == pos[r]


def test_a_run_group_opens_as_an_xarray_dataset(source, sharded):
    xr = pytest.importorskip("xarray")
    _, logs = source
    dst, _ = sharded
    log, present = logs[("Breakout", 1)]
    pos = stored_positions(log, present)
    ds = xr.open_zarr(dst, group="Breakout/1", consolidated=False)
    assert dict(ds.sizes) == {"row": len(pos), "y": 84, "x": 84}
    assert ds["frames"].dims == ("row", "y", "x") and ds["actions"].dims == ("row",)
    k = len(pos) // 2  # one frame, and the scalars, as the generator wrote them
    np.testing.assert_array_equal(ds["frames"][k].values, log.stream["frames"][pos[k]])
    for name in ("actions", "rewards", "terminals"):
        np.testing.assert_array_equal(ds[name].values, log.stream[name][pos])


def test_summary_counts_equal_the_generator_log(source, sharded):
    _, logs = source
    dst, result = sharded
    by_key = {(r["game"], r["run"]): r for r in result["runs"]}
    assert set(by_key) == set(logs)
    root = st.open_store(dst)
    for key, (log, present) in logs.items():
        want = complete_episodes(log, present)
        got = by_key[key]
        assert got["episodes"] == len(want) > 5
        rets = [e["return"] for e in want]
        assert got["return_mean"] == pytest.approx(np.mean(rets))
        assert (got["return_min"], got["return_max"]) == (min(rets), max(rets))
        g = root[key[0]][str(key[1])]
        terms = g["terminals"][:]
        segs = st.run_meta(g)["segments"]
        n_valid = sum(reference_is_valid(terms, segs, i, 3) for i in range(len(terms)))
        assert got["sampleable_transitions"] == n_valid
        assert got["segments"] == len(covered_segments(log, present))
        assert got["compression_ratio"] > 5 and got["bytes_on_disk"] > 0


def test_valid_mask_hand_case_and_reference_rule():
    #        row: 0  1  2  3  4  5  6  7  8  9 10 11 12 13
    t = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], np.uint8)
    segs = [[0, 10, 0], [10, 14, 20]]
    m = st.valid_mask(t, segs, n_step=2)
    # seg 0: i in [3, 8); 6, 7 have the terminal at 5 among i-3..i-1 (8 would too); seg 1: 13+2 > 13
    assert np.flatnonzero(m).tolist() == [3, 4, 5]
    rng = np.random.default_rng(0)
    t = (rng.random(500) < 0.08).astype(np.uint8)
    segs = [[0, 200, 0], [200, 350, 400], [350, 500, 900]]
    for n in (1, 3, 5):
        want = [reference_is_valid(t, segs, i, n) for i in range(500)]
        assert st.valid_mask(t, segs, n).tolist() == want
        off = 123  # a slice decides everything but its first 3 rows
        np.testing.assert_array_equal(st.valid_mask(t[off:], segs, n, offset=off)[3:], want[off + 3:])


def test_cli_json_rerun_is_a_noop_and_verify_catches_corruption(source, sharded, tmp_path):
    root, logs = source
    dst = tmp_path / "cli_store"
    cmd = [sys.executable, "-m", "sqlcli.main", "shard", str(root), str(dst), "--json", "--jobs", "2", "--frame-chunk", "64"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["appended"] == sum(len(p) for _, p in logs.values())
    ref = {(r["game"], r["run"]): r for r in sharded[1]["runs"]}
    for r in summary["runs"]:
        for k in ("rows", "episodes", "return_mean", "return_min", "return_max", "sampleable_transitions"):
            assert r[k] == ref[(r["game"], r["run"])][k]
    def mtimes():  # every file of the store (the writer locks, rewritten by each run, live outside it)
        return {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}

    before = mtimes()
    again = st.shard(root, dst, config=st.ShardConfig(frame_chunk=64))
    assert again["appended"] == 0
    assert mtimes() == before
    assert st.verify(dst)["ok"]
    # swap two frame chunks of Pong/1: still valid zstd, wrong content
    chunks = sorted((dst / "Pong" / "1" / "frames" / "c").rglob("*"))
    chunks = [c for c in chunks if c.is_file()]
    a, b = chunks[1].read_bytes(), chunks[2].read_bytes()
    chunks[1].write_bytes(b)
    chunks[2].write_bytes(a)
    bad = subprocess.run([sys.executable, "-m", "sqlcli.main", "shard", "--verify", str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3
    assert "Pong/1 failed verification" in bad.stderr and "frames" in bad.stderr


def _records(dst: Path, game: str, run: int) -> int:
    try:
        meta = json.loads((dst / game / str(run) / "zarr.json").read_text())
        return len(meta["attributes"]["sql_run"]["checkpoints"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path):
    src = tmp_path / "src"
    log = write_run(src, "Pong", 1, capacity=300, total=4200, num_actions=6, seed=7)
    n_ckpt = len(log.checkpoints)
    whole = tmp_path / "whole"
    st.shard(src, whole, config=st.ShardConfig(frame_chunk=64))  # what the CLI below does
    dst = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sqlcli.main", "shard", str(src), str(dst), "--jobs", "1", "--frame-chunk", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _records(dst, "Pong", 1) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _records(dst, "Pong", 1)
    assert 1 <= done < n_ckpt, f"kill landed after {done} of {n_ckpt} checkpoints"
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["appended"] == n_ckpt - done
    assert tree_bytes(dst) == tree_bytes(whole)


def test_crash_leftovers_and_late_checkpoint_are_repaired(source, sharded, tmp_path):
    root, logs = source
    dst = tmp_path / "partial"
    # first only checkpoints 0-1, then simulate a crash in the middle of checkpoint 3's append
    st.shard(root, dst, games=["Breakout"], checkpoints={0, 1}, config=CONFIG)
    g = st.open_store(dst, "a")["Breakout"]["1"]
    rows = st.run_meta(g)["rows"]
    for name in st.ARRAY_DTYPES:
        g[name].resize((rows + 150, *g[name].shape[1:]))
    g["frames"][rows:rows + 150] = 99
    g["terminals"][rows:rows + 150] = 1
    (dst / "Breakout" / "1" / "frames" / "c" / "junk.partial").write_bytes(b"x")
    result = st.shard(root, dst, games=["Breakout"], config=CONFIG)
    assert result["appended"] == 3
    fresh = tmp_path / "fresh"
    st.shard(root, fresh, games=["Breakout"], config=CONFIG)
    assert tree_bytes(dst) == tree_bytes(fresh)

    # the missing checkpoint 2 shows up later (e.g. a fetch finished): the run is rebuilt from there
    full_src = tmp_path / "full_src"
    write_run(full_src, "Breakout", 1, capacity=CAP, total=TOTAL, num_actions=4, seed=3)
    logs_dir = rf.replay_dir(root, "Breakout", 1)
    late = tmp_path / "late_src"
    shutil.copytree(root / "Breakout", late / "Breakout")
    for kind in rf.FILE_KINDS:
        shutil.copy(rf.replay_dir(full_src, "Breakout", 1) / rf.file_name(kind, 2), rf.replay_dir(late, "Breakout", 1))
    assert logs_dir.exists()
    st.shard(late, dst, config=CONFIG)
    full = tmp_path / "full"
    st.shard(late, full, config=CONFIG)
    assert tree_bytes(dst) == tree_bytes(full)


def test_bad_input_is_named_and_nothing_is_half_written(source, tmp_path):
    root, logs = source
    src = tmp_path / "src"
    shutil.copytree(root / "Pong", src / "Pong")
    d = rf.replay_dir(src, "Pong", 1)
    # a truncated observation file of checkpoint 3: found while streaming, after 0-2 are done
    obs = d / rf.file_name("observation", 3)
    data = obs.read_bytes()
    obs.write_bytes(data[: len(data) * 2 // 3])
    dst = tmp_path / "dst"
    with pytest.raises(DataError, match=r"observation_ckpt\.3\.gz: corrupt or truncated"):
        st.shard(src, dst, runs={1}, config=CONFIG)
    g = st.open_store(dst)["Pong"]["1"]
    meta = st.run_meta(g)
    assert [r["checkpoint"] for r in meta["checkpoints"]] == [0, 1, 2]
    assert all(g[n].shape[0] == meta["rows"] for n in st.ARRAY_DTYPES)
    assert not list(dst.rglob("*.partial"))
    obs.write_bytes(data)

    # the CLI: one line naming the file, exit code 3
    rf.save_npy_gz(d / rf.file_name("invalid_range", 4), np.array([1, 2, 3, 4, 5], np.int64))
    out = subprocess.run([sys.executable, "-m", "sqlcli.main", "shard", str(src), str(dst), "--runs", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    assert "invalid_range_ckpt.4.gz" in out.stderr and "does not match add_count" in out.stderr
    meta = st.run_meta(st.open_store(dst)["Pong"]["1"])
    assert [r["checkpoint"] for r in meta["checkpoints"]] == [0, 1, 2, 3]

    # a wrong dtype is caught by the scan, before the store is even created
    rf.save_npy_gz(d / rf.file_name("reward", 1), np.zeros(CAP, np.float64))
    fresh = tmp_path / "never"
    with pytest.raises(DataError, match=r"reward_ckpt\.1\.gz: float64"):
        st.shard(src, fresh, runs={1}, config=CONFIG)
    assert not fresh.exists()
    # actions outside the minimal action set
    src2 = tmp_path / "src2"
    write_run(src2, "Breakout", 1, capacity=CAP, total=450, num_actions=9, seed=5)
    with pytest.raises(DataError, match=r"action_ckpt\.\d\.gz: actions outside \[0, 4\)"):
        st.shard(src2, tmp_path / "dst2", config=CONFIG)
    # DST must be empty or an sql store
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a Zarr store"):
        st.shard(root, tmp_path / "other", config=CONFIG)


def rebuild_from_ring_files(logs: Path, capacity: int) -> dict:
    """The stream straight from the ring files, by the spec: checkpoints by suffix; checkpoint 0's written rows,
    then each later file rolled by -cursor, only its new rows; a count that goes down is the final buffer
    (log_final_buffer stores the ring position), whose true count is (prev // capacity + 1) * capacity + saved."""
    suffixes = sorted(int(p.name.split(".")[-2]) for p in logs.glob("add_count_ckpt.*.gz"))
    parts = {k: [] for k in rf.ROW_KINDS}
    have = 0
    for n in suffixes:
        count = int(rf.load_npy_gz(logs / rf.file_name("add_count", n)))
        if count <= have:
            count = (have // capacity + 1) * capacity + count
        for kind in rf.ROW_KINDS:
            data = rf.load_npy_gz(logs / rf.file_name(kind, n))
            ordered = data[:count] if count < capacity else np.roll(data, -(count % capacity), axis=0)
            parts[kind].append(ordered[len(ordered) - (count - have):])
        have = count
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_final_buffers_full_and_partial_shard_into_the_true_stream(tmp_path):
    from sqlcli_core.data.reference_sampler import reference_transition
    from sqlcli_core.data.sampler import ReplaySampler

    src, cap = tmp_path / "src", 200
    logs = {("Pong", 1): write_run(src, "Pong", 1, capacity=cap, total=1199, num_actions=6, seed=21, full_final=True),
            ("Pong", 2): write_run(src, "Pong", 2, capacity=cap, total=1130, num_actions=6, seed=22),
            ("Breakout", 1): write_run(src, "Breakout", 1, capacity=cap, total=1000, num_actions=4, seed=23)}
    dst = tmp_path / "store"
    out = subprocess.run([sys.executable, "-m", "sqlcli.main", "shard", str(src), str(dst), "--json", "--frame-chunk", "64"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["transitions_selected"] == 1199 + 1130 + 1000
    root = st.open_store(dst)
    streams = {}
    for (game, run), log in logs.items():
        d = rf.replay_dir(src, game, run)
        last = max(log.checkpoints)
        total = log.checkpoints[last]
        assert int(rf.load_npy_gz(d / rf.file_name("add_count", last))) == total % cap  # a final buffer
        rebuilt = rebuild_from_ring_files(d, cap)
        np.testing.assert_array_equal(rebuilt["observation"], log.stream["frames"])  # the rebuild is right
        g = root[game][str(run)]
        meta = st.run_meta(g)
        assert meta["rows"] == total and meta["segments"] == [[0, total, 0]]
        assert meta["checkpoints"][-1]["final_buffer"] and not meta["checkpoints"][0]["final_buffer"]
        assert meta["checkpoints"][-1]["stream_end"] == total
        for name, kind in (("frames", "observation"), ("actions", "action"), ("rewards", "reward"), ("terminals", "terminal")):
            np.testing.assert_array_equal(g[name][:], rebuilt[kind])
        streams[(game, run)] = {"frames": rebuilt["observation"], "actions": rebuilt["action"],
                                "rewards": rebuilt["reward"], "terminals": rebuilt["terminal"]}
    assert st.verify(dst)["ok"]
    names = ["Breakout", "Pong"]
    with ReplaySampler(dst, games=names, batch_size=128, seed=2, cache_bytes=64 << 20, unit_chunks=1) as s:
        late = 0
        for _ in range(6):
            batch, keys = s.next_batch_with_keys()
            for b, (g, run, i) in enumerate(keys):
                t = reference_transition(streams[(names[g], int(run))], int(i), 3, 0.99)
                np.testing.assert_array_equal(batch.state[b], t["state"])
                np.testing.assert_array_equal(batch.next_state[b], t["next_state"])
                assert (batch.action[b], batch.reward[b], batch.done[b], batch.steps[b]) == (
                    t["action"], t["reward"], t["done"], t["steps"])
                late += int(i) >= 1000 - 3  # inside the final buffers' rows
        assert late > 0


def test_inconsistent_add_counts_are_refused_with_one_line(tmp_path):
    src, cap = tmp_path / "src", 200
    write_run(src, "Pong", 1, capacity=cap, total=1130, num_actions=6, seed=22, missing=(4,))
    out = subprocess.run([sys.executable, "-m", "sqlcli.main", "shard", str(src), str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "add_count_ckpt.5.gz" in out.stderr and "checkpoint 4 before it is missing" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    # leaving the final buffer out is fine
    st.shard(src, tmp_path / "b", checkpoints={0, 1, 2, 3}, config=CONFIG)
    # a full final buffer that repeats its predecessor (the run ended right on a checkpoint) is refused
    src2 = tmp_path / "src2"
    write_run(src2, "Pong", 1, capacity=cap, total=999, num_actions=6, seed=5)  # checkpoint 4 at 999, regular
    d = rf.replay_dir(src2, "Pong", 1)
    for kind in rf.FILE_KINDS:
        shutil.copy(d / rf.file_name(kind, 4), d / rf.file_name(kind, 5))
    rf.save_npy_gz(d / rf.file_name("add_count", 5), np.array(cap - 1, np.int64))
    with pytest.raises(DataError, match="add_count_ckpt.5.gz: final buffer with the same rows as checkpoint 4"):
        st.shard(src2, tmp_path / "c", config=CONFIG)
    # a count that goes down before the last checkpoint
    rf.save_npy_gz(d / rf.file_name("add_count", 2), np.array(5, np.int64))
    with pytest.raises(DataError, match="add_count_ckpt.2.gz: add_count 5 is below checkpoint 1's 399"):
        st.shard(src2, tmp_path / "d", config=CONFIG)

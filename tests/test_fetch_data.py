"""`sql fetch-data` against a real HTTP server on 127.0.0.1 that misbehaves on purpose.

The reference for every fetched file is the source file itself (byte for byte); the fault server is in
tests/replay_http_server.py.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.data import fetch as F
from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import ResourceError, SourceUnavailable, UsageError
from tests.replay_http_server import ReplayServer, make_tree

FAST = F.FetchConfig(jobs=3, retries=3, backoff_base=0.001, backoff_max=0.01)
PONG_0_2 = F.Selection(("Pong",), (1, 2), (0, 1, 2))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bucket")
    make_tree(root, games=("Pong",), runs=(1, 2), checkpoints=(0, 1, 2))
    make_tree(root, games=("Breakout",), runs=(1,), checkpoints=(0, 1), seed=1)  # checkpoint 2 "missing"
    return root


@pytest.fixture()
def server(src):
    with ReplayServer(src) as srv:
        yield srv


def rel(game, run, kind, ckpt) -> str:
    return f"{game}/{run}/replay_logs/{rf.file_name(kind, ckpt)}"


def assert_identical(out: Path, src: Path, selection: F.Selection, skip=()) -> None:
    """Every selected file exists under `out` with the source's exact bytes; no part files are left."""
    for t in F.plan_files(selection, out):
        if t.rel in skip:
            continue
        assert t.dest.read_bytes() == (src / t.rel).read_bytes(), t.rel
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp", ".link"))]


# ---------------------------------------------------------------------------------------- selection


def test_selection_parsing():
    assert F.parse_checkpoints("0-9") == tuple(range(10))
    assert F.parse_checkpoints("0-9,20, 5") == (*range(10), 20)
    assert F.parse_checkpoints("all") == tuple(range(51))
    assert F.parse_runs("1,2") == (1, 2) and F.parse_runs("1-3") == (1, 2, 3) and F.parse_runs("all") == (1, 2, 3, 4, 5)
    assert F.subset_checkpoints("sub-optimal") == tuple(range(10))  # first 20% of 50
    assert F.subset_checkpoints("near-optimal") == tuple(range(51))
    assert F.subset_checkpoints("last:3") == (48, 49, 50)
    assert F.subset_checkpoints("last:51") == tuple(range(51))
    for bad, fn in [("0-51", F.parse_checkpoints), ("9-3", F.parse_checkpoints), ("x", F.parse_checkpoints),
                    ("6", F.parse_runs), ("0", F.parse_runs), ("last:0", F.subset_checkpoints),
                    ("last:52", F.subset_checkpoints), ("optimal", F.subset_checkpoints)]:
        with pytest.raises(UsageError):
            fn(bad)


def test_games_outside_dqn_replay_are_refused():
    assert F.select_games("pong,ALE/Breakout-v5") == ("Pong", "Breakout")
    assert len(F.select_games("dqn-replay60")) == 60
    with pytest.raises(UsageError, match="DQN-Replay has no data for Defender, Surround"):
        F.select_games("atari57")
    with pytest.raises(UsageError, match="unknown game"):
        F.select_games("pongg")


def test_plan_uses_bucket_names_and_percent_encoding(tmp_path):
    tasks = F.plan_files(F.Selection(("MsPacman",), (3,), (7,)), tmp_path)
    assert [t.dest.name for t in tasks] == [rf.file_name(k, 7) for k in rf.FILE_KINDS]
    assert tasks[0].dest == tmp_path / "MsPacman/3/replay_logs/$store$_observation_ckpt.7.gz"
    assert F.HttpSource().url_for(tasks[0].rel) == (
        "https://storage.googleapis.com/atari-replay-datasets/dqn/MsPacman/3/replay_logs/"
        "%24store%24_observation_ckpt.7.gz")


# ---------------------------------------------------------------------------------------- checksums


def test_crc32c_rfc3720_vectors():
    # RFC 3720 appendix B.4: 32 bytes of zeros, of ones, ascending and descending.
    vectors = [(bytes(32), 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43),
               (bytes(range(32)), 0x46DD794E), (bytes(range(31, -1, -1)), 0x113FDB5C)]
    for data, want in vectors:
        assert F.crc32c_py(data) == want
        assert F.crc32c(data) == want
    blob = random.Random(0).randbytes(5000)
    assert F.crc32c_py(blob[3000:], F.crc32c_py(blob[:3000])) == F.crc32c(blob)


def test_parse_goog_hash():
    md5, crc = F.parse_goog_hash(["crc32c=n03x6A==", "md5=Ojk9c3dhfxgoKVVHYwFbHQ=="])
    assert crc == bytes.fromhex("9f4df1e8") and md5.hex() == "3a393d7377617f182829554763015b1d"
    assert F.parse_goog_hash(["crc32c=n03x6A==,md5=Ojk9c3dhfxgoKVVHYwFbHQ=="]) == (md5, crc)


# ---------------------------------------------------------------------------------------- HTTP


def test_clean_fetch_is_byte_identical_and_rerun_skips(server, src, tmp_path):
    out = tmp_path / "out"
    report = F.fetch(PONG_0_2, out, F.HttpSource(server.url), FAST)
    s = report.summary()
    assert s["files"]["fetched"] == 36 and s["files"]["failed"] == 0
    sizes = sum((src / t.rel).stat().st_size for t in F.plan_files(PONG_0_2, out))
    assert s["bytes_transferred"] == sizes
    assert_identical(out, src, PONG_0_2)
    manifest = json.loads((rf.replay_dir(out, "Pong", 1) / F.MANIFEST_NAME).read_text())
    entry = manifest["files"][rf.file_name("observation", 1)]
    assert entry["shape"] == [50, 84, 84] and entry["dtype"] == "uint8" and entry["server_hash"] == "md5+crc32c"
    import hashlib
    assert entry["md5"] == hashlib.md5((src / rel("Pong", 1, "observation", 1)).read_bytes()).hexdigest()
    assert manifest["provenance"]["command"] == "fetch-data"

    # Re-run: nothing is requested at all, everything is skipped.
    n_requests = len(server.log)
    again = F.fetch(PONG_0_2, out, F.HttpSource(server.url), FAST)
    assert again.summary()["files"]["skipped"] == 36 and len(server.log) == n_requests

    # A file touched since verification is verified again (no download); a damaged one is fetched again.
    touched = out / rel("Pong", 1, "reward", 0)
    os.utime(touched, ns=(1, 1))
    damaged = out / rel("Pong", 2, "action", 2)
    damaged.write_bytes(damaged.read_bytes()[:-10])
    third = F.fetch(PONG_0_2, out, F.HttpSource(server.url), FAST)
    assert third.summary()["files"] == {"planned": 0, "fetched": 1, "skipped": 35, "failed": 0, "missing": 0}
    assert [g[1] for g in server.log[n_requests:] if g[0] == "GET"] == [rel("Pong", 2, "action", 2)]
    assert_identical(out, src, PONG_0_2)


def test_survives_cut_500_and_corruption(server, src, tmp_path):
    out = tmp_path / "out"
    obs = rel("Pong", 1, "observation", 1)
    server.faults = {
        obs: ["cut", "cut"],  # two connection drops mid-body: resumed with Range each time
        rel("Pong", 1, "action", 0): ["500", "500"],
        rel("Pong", 2, "observation", 2): ["corrupt"],  # md5 mismatch once, then clean
        rel("Pong", 2, "reward", 1): ["500", "cut"],
    }
    report = F.fetch(PONG_0_2, out, F.HttpSource(server.url), FAST)
    assert report.summary()["files"]["fetched"] == 36, report.summary()["failures"]
    assert_identical(out, src, PONG_0_2)
    size = (src / obs).stat().st_size
    ranges = [g[2] for g in server.gets(obs)]
    assert ranges == [None, f"bytes={size // 2}-", f"bytes={size // 2 + (size - size // 2) // 2}-"]
    assert [g[2] for g in server.gets(rel("Pong", 2, "observation", 2))] == [None, None]  # restarted at 0


def test_resumes_a_part_file_left_by_an_interrupted_run(server, src, tmp_path):
    out = tmp_path / "out"
    sel = F.Selection(("Pong",), (1,), (0,))
    target = rel("Pong", 1, "observation", 0)
    data = (src / target).read_bytes()
    part = (out / target).with_name(f".{Path(target).name}.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    report = F.fetch(sel, out, F.HttpSource(server.url), FAST)
    res = {r.task.rel: r for r in report.results}[target]
    assert res.status == "fetched" and res.bytes_transferred == len(data) - 1000
    assert server.gets(target) == [("GET", target, "bytes=1000-")]
    assert_identical(out, src, sel)


def test_server_ignoring_range_restarts_from_zero(server, src, tmp_path):
    out = tmp_path / "out"
    sel = F.Selection(("Pong",), (1,), (0,))
    target = rel("Pong", 1, "observation", 0)
    data = (src / target).read_bytes()
    part = (out / target).with_name(f".{Path(target).name}.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # junk: would corrupt the file if the 200 body were appended to it
    server.persistent = {target: "no_range"}
    report = F.fetch(sel, out, F.HttpSource(server.url), FAST)
    res = {r.task.rel: r for r in report.results}[target]
    assert res.status == "fetched" and res.bytes_transferred == len(data)
    assert server.gets(target) == [("GET", target, "bytes=1000-")]
    assert_identical(out, src, sel)


def test_interrupted_download_leaves_no_final_file_then_resumes(server, src, tmp_path):
    out = tmp_path / "out"
    sel = F.Selection(("Pong",), (1,), (0,))
    obs = rel("Pong", 1, "observation", 0)
    server.faults = {obs: ["cut", "500"]}
    cfg = F.FetchConfig(jobs=2, retries=0, backoff_base=0.001)
    first = F.fetch(sel, out, F.HttpSource(server.url), cfg)
    assert {r.task.rel: r.status for r in first.results}[obs] == "failed"
    assert not (out / obs).exists() and (out / obs).with_name(f".{Path(obs).name}.part").stat().st_size > 0
    second = F.fetch(sel, out, F.HttpSource(server.url), FAST)  # one 500, then a Range request
    assert second.summary()["files"]["fetched"] == 1 and second.summary()["files"]["skipped"] == 5
    assert server.gets(obs)[-1][2] is not None
    assert_identical(out, src, sel)


@pytest.mark.parametrize("fault, hashes", [("bad_md5", True), ("truncated_gzip", False), ("truncated_gzip", True)])
def test_bad_files_are_never_published(server, src, tmp_path, fault, hashes):
    out = tmp_path / "out"
    server.send_hash = hashes
    bad = rel("Pong", 1, "observation", 2)
    server.persistent = {bad: fault}
    report = F.fetch(PONG_0_2, out, F.HttpSource(server.url), FAST)
    failed = report.by_status("failed")
    assert [r.task.rel for r in failed] == [bad] and failed[0].content_error
    assert not (out / bad).exists()
    assert "md5" in failed[0].error if fault == "bad_md5" else "gzip" in failed[0].error
    # A truncated file whose hash the server vouches for is bad at the source: one download, no retries.
    assert len(server.gets(bad)) == (1 if (fault == "truncated_gzip" and hashes) else FAST.retries + 1)
    assert_identical(out, src, PONG_0_2, skip={bad})
    manifest = json.loads((rf.replay_dir(out, "Pong", 1) / F.MANIFEST_NAME).read_text())
    assert Path(bad).name not in manifest["files"]


def test_npy_header_of_wrong_kind_is_caught(tmp_path):
    path = rf.save_npy_gz(tmp_path / "x.gz", np.zeros(50, np.float32))
    with pytest.raises(F.BadPayload, match="dtype float32, expected int32"):
        F.verify_file(path, "action", F.ObjectInfo(size=path.stat().st_size))
    path = rf.save_npy_gz(tmp_path / "y.gz", np.zeros((50, 84, 83), np.uint8))
    with pytest.raises(F.BadPayload, match="expected \\(rows, 84, 84\\)"):
        F.verify_file(path, "observation", None)
    # A gzip stream that is complete but whose .npy payload is shorter than its header says.
    buf = gzip.compress(np.lib.format.header_data_from_array_1_0(np.zeros(50, np.int32)) and
                        _npy_bytes(np.zeros(50, np.int32))[:-4])
    (tmp_path / "z.gz").write_bytes(buf)
    with pytest.raises(F.BadPayload, match="payload has 196 bytes, its header says 200"):
        F.verify_file(tmp_path / "z.gz", "action", None)
    (tmp_path / "t.gz").write_bytes(gzip.compress(b"not numpy at all" * 100))
    with pytest.raises(F.BadPayload, match="no .npy magic"):
        F.verify_file(tmp_path / "t.gz", "action", None)
    # A pickled (object) payload is refused from its header, never unpickled.
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{1, 2}], dtype=object), allow_pickle=True)
    (tmp_path / "p.gz").write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(F.BadPayload, match="object dtype"):
        F.verify_file(tmp_path / "p.gz", "action", None)


def _npy_bytes(arr) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


def test_403_from_public_style_source_is_one_clear_error(server, tmp_path):
    server.persistent = {t.rel: "403" for t in F.plan_files(PONG_0_2, tmp_path)}
    source = F.HttpSource(server.url)
    source.is_public_bucket = True  # the message the real bucket gets
    with pytest.raises(SourceUnavailable) as err:
        F.fetch(PONG_0_2, tmp_path / "out", source, FAST)
    line = err.value.one_line()
    assert "HTTP 403" in line and "--base-url MIRROR" in line and "--from DIR" in line
    assert len(server.log) == 1  # one probe, not one refusal per file
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_reported_not_fatal(server, src, tmp_path):
    out = tmp_path / "out"
    sel = F.Selection(("Breakout",), (1,), (0, 1, 2))  # checkpoint 2 does not exist at the source
    report = F.fetch(sel, out, F.HttpSource(server.url), FAST)
    s = report.summary()
    assert s["files"]["fetched"] == 12 and s["files"]["missing"] == 6 and s["files"]["failed"] == 0
    assert s["missing_checkpoints"] == [{"game": "Breakout", "run": 1, "checkpoint": 2}]
    # A checkpoint with only some files absent is broken, not missing.
    server.persistent = {rel("Breakout", 1, "terminal", 1): "404"}
    (out / rel("Breakout", 1, "terminal", 1)).unlink()
    report = F.fetch(sel, out, F.HttpSource(server.url), FAST)
    assert [r.task.rel for r in report.by_status("failed")] == [rel("Breakout", 1, "terminal", 1)]
    # Nothing at all at the source: one error, not 18 missing files.
    with pytest.raises(SourceUnavailable, match="none of the 6 requested files exist"):
        F.fetch(F.Selection(("Breakout",), (3,), (0,)), out, F.HttpSource(server.url), FAST)


def test_dry_run_totals_and_writes_nothing(server, src, tmp_path):
    out = tmp_path / "out"
    part_target = out / rel("Pong", 2, "observation", 0)
    part_target.parent.mkdir(parents=True)
    part = part_target.with_name(f".{part_target.name}.part")
    part.write_bytes((src / rel("Pong", 2, "observation", 0)).read_bytes()[:777])
    report = F.fetch(PONG_0_2, out, F.HttpSource(server.url), F.FetchConfig(dry_run=True))
    want = sum((src / t.rel).stat().st_size for t in F.plan_files(PONG_0_2, out))
    s = report.summary()
    assert s["total_bytes"] == want and s["bytes_to_fetch"] == want - 777 and s["files"]["planned"] == 36
    assert server.gets() == [] and sorted(p.name for p in out.rglob("*") if p.is_file()) == [part.name]


def test_disk_space_check_names_the_numbers(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    F.check_disk_space(tmp_path / "not" / "yet", 1)
    with pytest.raises(ResourceError, match=f"only .* \\({free // 10**6}\\d{{6}} bytes\\) is free"):
        F.check_disk_space(tmp_path / "not" / "yet", free + 10**12)


# ---------------------------------------------------------------------------------------- --from DIR


def test_from_dir_copy_and_hardlink(src, tmp_path):
    copy_out, link_out = tmp_path / "copy", tmp_path / "link"
    report = F.fetch(PONG_0_2, copy_out, F.open_source(from_dir=src), FAST)
    assert report.summary()["files"]["fetched"] == 36
    assert_identical(copy_out, src, PONG_0_2)
    t = F.plan_files(PONG_0_2, copy_out)[0]
    assert os.stat(t.dest).st_ino != os.stat(src / t.rel).st_ino
    report = F.fetch(PONG_0_2, link_out, F.open_source(from_dir=src, link="hard"), FAST)
    assert report.summary()["files"]["fetched"] == 36 and report.bytes_transferred == 0
    assert_identical(link_out, src, PONG_0_2)
    t = F.plan_files(PONG_0_2, link_out)[0]
    assert os.stat(t.dest).st_ino == os.stat(src / t.rel).st_ino
    sym_out = tmp_path / "sym"
    sel = F.Selection(("Pong",), (2,), (1,))
    assert F.fetch(sel, sym_out, F.open_source(from_dir=src, link="symlink"), FAST).summary()["files"]["fetched"] == 6
    t = F.plan_files(sel, sym_out)[0]
    assert t.dest.is_symlink() and t.dest.resolve() == (src / t.rel).resolve()
    assert_identical(sym_out, src, sel)
    # --dry-run with --from uses stat.
    dry = F.fetch(F.Selection(("Breakout",), (1,), (0, 1, 2)), tmp_path / "d", F.open_source(from_dir=src),
                  F.FetchConfig(dry_run=True))
    assert dry.summary()["files"] == {"planned": 12, "fetched": 0, "skipped": 0, "failed": 0, "missing": 6}


# ---------------------------------------------------------------------------------------- CLI


def test_cli_json_summary_and_exit_codes(server, src, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["fetch-data", "--games", "pong", "--runs", "1", "--checkpoints", "0-1", "--out", str(out),
            "--base-url", server.url, "--backoff-base", "0.001", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["files"]["fetched"] == 12 and summary["selection"]["checkpoints"] == [0, 1]
    assert_identical(out, src, F.Selection(("Pong",), (1,), (0, 1)))

    server.persistent = {rel("Pong", 1, "reward", 2): "bad_md5"}
    res = runner.invoke(app, ["fetch-data", "--games", "pong", "--runs", "1", "--subset", "last:49",
                              "--out", str(out), "--base-url", server.url, "--backoff-base", "0", "--retries", "1",
                              "--json"])
    # checkpoints 2..50: 2 exists (with one bad file), 3..50 are missing
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["files"]["failed"] == 1 and summary["failures"][0]["file"] == rel("Pong", 1, "reward", 2)
    assert len(summary["missing_checkpoints"]) == 48
    assert "error: 1 of" in res.stderr and not (out / rel("Pong", 1, "reward", 2)).exists()

    res = runner.invoke(app, ["fetch-data", "--games", "defender", "--checkpoints", "0", "--out", str(out)])
    assert res.exit_code == 2 and "DQN-Replay has no data for Defender" in res.stderr
    res = runner.invoke(app, ["fetch-data", "--games", "pong", "--out", str(out)])
    assert res.exit_code == 2 and "exactly one of --checkpoints and --subset" in res.stderr
    res = runner.invoke(app, ["fetch-data", "--games", "pong", "--checkpoints", "0", "--out", str(out), "--link", "hard"])
    assert res.exit_code == 2 and "--link only applies to --from DIR" in res.stderr
    res = runner.invoke(app, ["fetch-data", "--games", "pong", "--runs", "6", "--checkpoints", "0", "--out", str(out)])
    assert res.exit_code == 2 and "run '6' is outside 1-5" in res.stderr


def test_cli_subprocess_dry_run_and_403(server, src, tmp_path):
    def sql(*args):
        env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        return subprocess.run([sys.executable, "-m", "sqlcli.main", "fetch-data", *args], capture_output=True,
                              text=True, env=env, timeout=60)

    res = sql("--games", "Pong", "--runs", "1-2", "--checkpoints", "0-2", "--out", str(tmp_path / "o"),
              "--base-url", server.url, "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    want = sum((src / t.rel).stat().st_size for t in F.plan_files(PONG_0_2, tmp_path))
    assert json.loads(res.stdout)["total_bytes"] == want and "to fetch" in res.stderr
    server.persistent = {rel("Pong", 1, "observation", 0): "403"}
    res = sql("--games", "Pong", "--runs", "1", "--checkpoints", "0", "--out", str(tmp_path / "o"),
              "--base-url", server.url)
    assert res.returncode == 4 and res.stderr.count("error:") == 1 and "HTTP 403" in res.stderr
    assert not (tmp_path / "o").exists()
    res = sql("--games", "Pong", "--checkpoints", "0", "--out", str(tmp_path / "o"), "--base-url", "gs://x/y")
    # (rich wraps long error lines at 80 columns when stderr is not a terminal)
    assert res.returncode == 2 and "pip install 'scaled-ql[gcs]'" in " ".join(res.stderr.split())


def test_sub_optimal_is_one_run_per_game_400m_over_atari40(tmp_path):
    """The paper's 400M transitions (abstract) = checkpoints 0-9 of ONE run of each of its 40 games; the
    selection count comes from the layout, so a dry run reports it even when the source is unreachable."""
    assert F.subset_runs("sub-optimal") == (1,) and F.subset_runs("near-optimal") == (1, 2, 3, 4, 5)
    assert F.subset_runs("last:3") == (1, 2, 3, 4, 5)
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    base = [sys.executable, "-m", "sqlcli.main", "fetch-data", "--games", "atari40", "--subset", "sub-optimal",
            "--out", str(tmp_path / "o"), "--dry-run", "--json", "--retries", "0", "--base-url", "http://127.0.0.1:9"]
    res = subprocess.run(base, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 4 and res.stderr.count("error:") == 1 and "cannot reach" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["transitions_selected"] == 400_000_000 == 40 * 10 * 1_000_000
    assert summary["selection"]["runs"] == [1] and summary["selection"]["checkpoints"] == list(range(10))
    assert len(summary["selection"]["games"]) == 40 and "400M transitions" in res.stderr
    res = subprocess.run(base + ["--runs", "1-5"], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(res.stdout)["transitions_selected"] == 2_000_000_000  # the 5-run variant, on request
    assert not (tmp_path / "o").exists()

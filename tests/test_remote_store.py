"""Replay stores in object storage, against a real S3 server on 127.0.0.1 (moto's server mode).

`sql shard` into s3:// and the sampler reading it back must give exactly what the same commands give on a
local directory: the same objects byte for byte, the same batches for the same seed, and the same first
metrics of a tiny `sql pretrain`. Also: SIGKILL mid-write then re-run, two hosts sharding different games
into one store at once, a second writer of one run group refused, transient faults (503s and dropped
connections from a proxy) that change nothing, and a persistent error that is one line naming the object.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from sqlcli_core.data import store as st  # noqa: E402
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.errors import SourceUnavailable  # noqa: E402
from tests.replay_fixture import write_run  # noqa: E402
from tests.s3_fixture import FaultProxy, S3Server  # noqa: E402

BUCKET = "replay"
CHUNK = 32
CONFIG = st.ShardConfig(frame_chunk=CHUNK)  # what the CLI below does
SHARD_FLAGS = ["--frame-chunk", str(CHUNK), "--jobs", "1"]
UNIT_BYTES = (CHUNK + 3 + 3) * (st.FRAME_BYTES + 9) + CHUNK * 4


@pytest.fixture(scope="module")
def server():
    srv = S3Server()
    srv.create_bucket(BUCKET)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in srv.env().items():
            mp.setenv(k, v)
        use_endpoint(srv.endpoint)
        yield srv
        use_endpoint(srv.endpoint)
    srv.stop()


def use_endpoint(endpoint: str) -> None:
    """Point this process's S3 clients at `endpoint` (fsspec caches clients per argument set, not per env)."""
    import s3fs

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    s3fs.S3FileSystem.clear_instance_cache()


def sql(args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlcli.main", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=600, **kw)


def s3_client(server):
    import boto3

    return boto3.client("s3", endpoint_url=server.endpoint)


def s3_tree(server, prefix: str) -> dict[str, bytes]:
    """Every object under prefix (relative key -> bytes), without the root zarr.json and the writer leases."""
    client = s3_client(server)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1:]
            if rel == "zarr.json" or f"/{st.remote.LEASE_DIR}/" in f"/{rel}":
                continue
            out[rel] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def local_tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and str(p.relative_to(path)) != "zarr.json" and not p.name.startswith(".sql-")}


def run_records(server, prefix: str, game: str, run: int) -> int:
    try:
        body = s3_client(server).get_object(Bucket=BUCKET, Key=f"{prefix}/{game}/{run}/zarr.json")["Body"].read()
        return len(json.loads(body)["attributes"]["sql_run"]["checkpoints"])
    except Exception:  # noqa: BLE001 - not written yet
        return 0


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    write_run(root, "Pong", 1, capacity=150, total=700, num_actions=6, seed=11, mean_episode=25)
    write_run(root, "Pong", 2, capacity=150, total=400, num_actions=6, seed=12, mean_episode=25, missing=(1,),
              final_buffer=False)
    write_run(root, "Breakout", 1, capacity=150, total=500, num_actions=4, seed=13, mean_episode=25)
    local = tmp_path_factory.mktemp("dst") / "store"
    st.shard(root, local, config=CONFIG)
    return root, local


@pytest.fixture(scope="module")
def s3_store(server, source):
    """`sql shard SRC s3://replay/store`, a real subprocess, as a user would run it."""
    root, _ = source
    out = sql(["shard", str(root), f"s3://{BUCKET}/store", *SHARD_FLAGS, "--json"])
    assert out.returncode == 0, out.stderr
    return f"s3://{BUCKET}/store", json.loads(out.stdout)


def sampler(store, **kw):
    args = dict(games=["Breakout", "Pong"], batch_size=64, cache_bytes=(3 * 2 + 2) * UNIT_BYTES, unit_chunks=1,
                seed=5, reuse=1.0)
    return ReplaySampler(store, **{**args, **kw})


def assert_same_batches(a, b, n: int) -> None:
    for _ in range(n):
        (x, kx), (y, ky) = a.next_batch_with_keys(), b.next_batch_with_keys()
        np.testing.assert_array_equal(kx, ky)
        for field in x._fields:
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def test_shard_to_s3_writes_the_local_store_byte_for_byte(server, source, s3_store):
    root, local = source
    url, summary = s3_store
    assert summary["store"] == url and summary["appended"] == sum(len(r["checkpoints"]) for r in summary["runs"])
    assert s3_tree(server, "store") == local_tree(local)  # every chunk object and every group's metadata
    reports = {(r["game"], r["run"]): r for r in summary["runs"]}
    assert reports[("Pong", 1)]["frames_bytes_on_disk"] > 0 and reports[("Pong", 1)]["rows"] == 700
    verify = sql(["shard", "--verify", url, "--json"])
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
    from sqlcli_core.analysis.scale_report import composition_from_store

    held = composition_from_store(url, None)  # scale-report's lookup of a run's data composition
    assert held is not None and held == composition_from_store(str(local), None)
    again = sql(["shard", str(root), url, *SHARD_FLAGS, "--json"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["appended"] == 0


def test_sampler_on_s3_gives_the_batches_of_the_local_store(server, source, s3_store):
    _, local = source
    url, _ = s3_store
    with sampler(local) as a, sampler(url) as b, sampler(url, prefetch_units=5, cache_bytes=(3 * 2 + 5) * UNIT_BYTES) as c:
        assert a.slots_per_game == b.slots_per_game == c.slots_per_game == 3
        assert_same_batches(a, b, 30)
        with sampler(local) as a2:
            assert_same_batches(a2, c, 30)  # more units in flight: same batches


def test_transient_faults_change_no_batch(server, source, s3_store):
    _, local = source
    url, _ = s3_store
    proxy = FaultProxy(server.endpoint, fail_every=5, drop_every=7, max_faults=30)
    use_endpoint(proxy.endpoint)
    try:
        with sampler(local) as a, sampler(url) as b:
            assert_same_batches(a, b, 30)
    finally:
        use_endpoint(server.endpoint)
        proxy.stop()
    assert proxy.faults == 30 and proxy.requests > 60  # the faults did happen, and were all absorbed


def test_persistent_error_is_one_line_naming_the_object(server, source, s3_store, monkeypatch):
    url, _ = s3_store
    bad = "store/Pong/1/frames/c/5/0/0"
    proxy = FaultProxy(server.endpoint, fail_keys=(bad,))
    try:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2"}
        out = sql(["shard", "--verify", url], env)
        assert out.returncode == 4, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]  # the rest: progress bars
        assert len(errors) == 1 and f"s3://{BUCKET}/{bad}" in errors[0], out.stderr
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        use_endpoint(proxy.endpoint)
        with pytest.raises(SourceUnavailable, match=f"s3://{BUCKET}/store/Pong/1/frames/c/"):
            with sampler(url, games=["Pong"], runs=[1], cache_bytes=(20 + 2) * UNIT_BYTES) as s:
                for _ in range(20):
                    s.next_batch()
    finally:
        use_endpoint(server.endpoint)
        proxy.stop()
    assert proxy.failed_keys >= 2


@pytest.fixture(scope="module")
def long_source(tmp_path_factory):
    """Two runs long enough for a kill mid-write: many checkpoints of a small ring."""
    root = tmp_path_factory.mktemp("long")
    logs = {g: write_run(root, g, 1, capacity=300, total=4200, num_actions=na, seed=s)
            for g, na, s in (("Pong", 6, 7), ("Breakout", 4, 8))}
    local = tmp_path_factory.mktemp("long-dst") / "store"
    st.shard(root, local, config=CONFIG)
    return root, local, logs


def test_sigkill_mid_write_then_rerun_gives_the_same_store(server, long_source):
    root, local, logs = long_source
    n_ckpt = len(logs["Pong"].checkpoints)
    url = f"s3://{BUCKET}/killed"
    cmd = [sys.executable, "-m", "sqlcli.main", "shard", str(root), url, "--games", "Pong", *SHARD_FLAGS,
           "--lease-seconds", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while run_records(server, "killed", "Pong", 1) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run_records(server, "killed", "Pong", 1)
    assert 2 <= done < n_ckpt, f"kill landed after {done} of {n_ckpt} checkpoints"
    started = time.monotonic()
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["appended"] == n_ckpt - done
    assert time.monotonic() - started >= 3  # it waited out the dead writer's lease before writing
    want = {k: v for k, v in local_tree(local).items() if k.startswith("Pong/")}
    assert s3_tree(server, "killed") == want


def test_two_hosts_shard_different_games_into_one_store_at_once(server, long_source):
    root, local, _ = long_source
    url = f"s3://{BUCKET}/shared"
    procs = [subprocess.Popen([sys.executable, "-m", "sqlcli.main", "shard", str(root), url, "--games", game,
                               *SHARD_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for game in ("Pong", "Breakout")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    verify = sql(["shard", "--verify", url, "--json"])
    assert verify.returncode == 0, verify.stderr
    assert [(r["game"], r["ok"]) for r in json.loads(verify.stdout)["runs"]] == [("Breakout", True), ("Pong", True)]
    assert s3_tree(server, "shared") == local_tree(local)
    root_meta = json.loads(s3_client(server).get_object(Bucket=BUCKET, Key="shared/zarr.json")["Body"].read())
    assert root_meta["attributes"]["sql_store"]["format"] == st.STORE_FORMAT  # written once, by one of them


def test_second_writer_of_a_run_group_is_refused(server, long_source):
    root, _, _ = long_source
    url = f"s3://{BUCKET}/busy"
    # A lease long enough that the slowed first writer's renewals (given up after half of it without an answer)
    # survive a busy machine: this test is about the second writer's refusal, not about expiry.
    cmd = ["shard", str(root), url, "--games", "Pong", *SHARD_FLAGS, "--lease-seconds", "10"]
    # The first writer talks through a proxy that delays every request, so that it is surely still writing
    # when the second one (direct, and slowed by nothing) starts, however fast or busy the machine is.
    slow = FaultProxy(server.endpoint, latency=0.05)
    try:
        first = subprocess.Popen([sys.executable, "-m", "sqlcli.main", *cmd], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "AWS_ENDPOINT_URL": slow.endpoint})
        deadline = time.time() + 300
        while run_records(server, "busy", "Pong", 1) < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        second = sql(cmd)
        first_err = first.communicate(timeout=600)[1]
    finally:
        slow.stop()
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert f"{url}/Pong/1 is being written by pid {first.pid}" in second.stderr
    assert len([line for line in second.stderr.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.slow
def test_pretrain_from_s3_logs_what_it_logs_from_a_directory(server, source, s3_store, tmp_path):
    _, local = source
    url, _ = s3_store
    args = ["--games", "pong,breakout", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8",
            "--steps", "4", "--checkpoint-every", "4", "--log-every", "2", "--seed", "3", "--cache-bytes", "8000000"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    records = []
    for name, data in (("local", str(local)), ("s3", url)):
        out = sql(["pretrain", "--data", data, "--run-dir", str(tmp_path / name), *args, "--json"], env)
        assert out.returncode == 0, out.stderr
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records.append([{k: v for k, v in json.loads(line).items() if not any(t in k for t in ("per_s", "time", "wall"))}
                        for line in lines])
    assert len(records[0]) >= 2 and all("cql_loss" in r and np.isfinite(r["cql_loss"]) for r in records[0])
    assert records[0] == records[1]
    run = json.loads((tmp_path / "s3" / "run.json").read_text())
    assert url in json.dumps(run)


def test_https_store_is_read_only_and_reads_like_the_directory(source):
    """An http(s):// store (here python's own file server on 127.0.0.1, which lists directories)."""
    import functools
    import http.server
    import threading

    root, local = source

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(local.parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{local.name}"
    try:
        with sampler(local) as a, sampler(url) as b:
            assert_same_batches(a, b, 10)
        assert st.verify(url)["ok"] is True
        out = sql(["shard", str(root), url])
        assert out.returncode == 2 and "http:// stores are read-only" in out.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_missing_bucket_is_named_by_every_command(server, source, tmp_path):
    """shard, pretrain and finetune-offline: exit 2 naming the bucket (not exit 5, not "not a Zarr store");
    an endpoint that cannot be reached: exit 4 naming the URL. scale-report, which reads the store only to
    name the data composition, warns naming the bucket and reports the composition as unknown."""
    root, _ = source
    (tmp_path / "none").mkdir()  # --from: the data is checked before the pre-trained run is read
    missing = "the bucket nobucket of s3://nobucket/st does not exist"
    for args in (["shard", str(root), "s3://nobucket/st", *SHARD_FLAGS],
                 ["pretrain", "--data", "s3://nobucket/st", "--run-dir", str(tmp_path / "r"), "--arch", "dqn",
                  "--games", "pong", "--steps", "2"],
                 ["finetune-offline", "--from", str(tmp_path / "none"), "--game", "Pong", "--data", "s3://nobucket/st",
                  "--run-dir", str(tmp_path / "f"), "--steps", "2"]):
        out = sql(args)
        assert out.returncode == 2, (args[0], out.stderr)
        assert out.stderr.startswith(f"error: {missing}") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "f").exists()
    existing = sql(["pretrain", "--data", f"s3://{BUCKET}/nostore", "--run-dir", str(tmp_path / "r"), "--arch", "dqn",
                    "--games", "pong"])
    assert existing.returncode == 3 and f"s3://{BUCKET}/nostore is not a Zarr store" in existing.stderr

    unreachable = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    out = sql(["pretrain", "--data", "s3://nobucket/st", "--run-dir", str(tmp_path / "r"), "--arch", "dqn"], unreachable)
    assert out.returncode == 4 and out.stderr.startswith("error: s3://nobucket/st/zarr.json: "), out.stderr

    from tests.test_scale_report import make_run

    runs = [make_run(tmp_path / "runs", f"r{i}", 10 ** (6 + i), 0.1 * 2 ** i) for i in range(3)]
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        record["config"]["data"] = "s3://nobucket/st"
        (run / "run.json").write_text(json.dumps(record))
    report = sql(["scale-report", *map(str, runs), "--out", str(tmp_path / "report")])
    assert report.returncode == 0, report.stderr
    assert f"warning: data composition unknown: {missing}" in " ".join(report.stderr.split())


def test_writer_leases_live_beside_the_store_which_lists_without_warnings(server, s3_store):
    """The leases of `shard` into s3://replay/store are under s3://replay/.store.sql-locks/, not in the store:
    zarr lists the store's groups without a warning and its bytes are data only."""
    import warnings

    url, summary = s3_store
    client = s3_client(server)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    assert any(k.startswith(".store.sql-locks/Pong/1/.sql-writer/lease-") for k in keys)
    assert not [k for k in keys if k.startswith("store/") and "/.sql-writer/" in k]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(st.open_store(url).members(max_depth=None))
    assert {"Pong/1/frames", "Pong/2/frames", "Breakout/1/frames"} <= set(members)
    for run in summary["runs"]:
        prefix = f"store/{run['game']}/{run['run']}/"
        assert run["bytes_on_disk"] == sum(o["Size"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix) for o in page.get("Contents", []))

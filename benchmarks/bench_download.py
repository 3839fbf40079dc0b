"""fetch-data's throughput against a plain single-stream urllib copy of the same files, over loopback.

Serves a few tens of MB of real DQN-Replay-format checkpoints from a local HTTP server (the test server,
tests/replay_http_server.py) and times, in the same process, alternately:
  baseline   : urllib.request.urlopen + read(1 MiB) in one loop, file after file, no verification
  baseline+v : the same, then the same checks fetch-data makes (verify_file), serially
  fetch-data : sqlcli_core.data.fetch.fetch(jobs=N): HEAD for sizes, parallel GETs into part files,
               md5 + gzip + .npy verification, atomic rename, manifest

    python -m benchmarks.bench_download [--mb 48] [--jobs 4] [--repeats 3]

Loopback has no latency or bandwidth limit, so this measures the client's overhead (and the cost of
verifying), not the gain of parallel streams over a real WAN link, where --jobs matters most.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlcli_core.data import fetch as F
from tests.replay_http_server import ReplayServer, make_tree


def baseline_copy(base_url: str, rels: list[str], out: Path) -> int:
    """Plain single-stream copy: one GET per file, read in 1 MiB blocks into a file. Returns bytes."""
    total = 0
    for rel in rels:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f"{base_url}/{urllib.request.quote(rel)}") as resp, open(dest, "wb") as f:
            while block := resp.read(1 << 20):
                f.write(block)
                total += len(block)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=48, help="approximate MB to serve (default 48)")
    ap.add_argument("--jobs", type=int, default=4, help="fetch-data --jobs (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds of each (default 3; the median is printed)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_download_"))
    try:
        n_ckpt = 8
        capacity = max(50, int(args.mb * 1e6 / n_ckpt / (84 * 84 * 0.58)))  # obs compress to ~58% at level 1
        src = work / "src"
        make_tree(src, games=("Pong",), runs=(1,), checkpoints=tuple(range(n_ckpt)), capacity=capacity)
        selection = F.Selection(("Pong",), (1,), tuple(range(n_ckpt)))
        rels = [t.rel for t in F.plan_files(selection, src)]
        nbytes = sum((src / r).stat().st_size for r in rels)
        print(f"serving {len(rels)} files, {nbytes / 1e6:.1f} MB ({n_ckpt} checkpoints of {capacity} rows) "
              f"from 127.0.0.1", flush=True)
        base, base_v, verify_only, fetched = [], [], [], {1: [], args.jobs: []}
        kinds = {t.rel: t.kind for t in F.plan_files(selection, src)}
        with ReplayServer(src, goog_hash=False) as server:
            for i in range(args.repeats):
                out = work / f"base{i}"
                t0 = time.perf_counter()
                assert baseline_copy(server.url, rels, out) == nbytes
                t1 = time.perf_counter()
                for r in rels:
                    F.verify_file(out / r, kinds[r], None)
                t2 = time.perf_counter()
                base.append(nbytes / 1e6 / (t1 - t0))
                base_v.append(nbytes / 1e6 / (t2 - t0))
                verify_only.append(nbytes / 1e6 / (t2 - t1))
                for jobs in fetched:
                    out = work / f"fetch{jobs}_{i}"
                    t0 = time.perf_counter()
                    report = F.fetch(selection, out, F.HttpSource(server.url), F.FetchConfig(jobs=jobs))
                    dt = time.perf_counter() - t0
                    assert report.summary()["files"]["fetched"] == len(rels), report.summary()
                    fetched[jobs].append(nbytes / 1e6 / dt)
                shutil.rmtree(work / f"base{i}")
        def line(label: str, xs: list[float]) -> None:
            print(f"{label:<58}: {statistics.median(xs):7.1f} MB/s (runs: {', '.join(f'{x:.1f}' for x in xs)})")

        line("baseline: urllib single stream, no verification", base)
        line("baseline: urllib single stream, then verify serially", base_v)
        line("  (verification alone, 1 thread: md5 + inflate + .npy)", verify_only)
        for jobs, xs in fetched.items():
            line(f"fetch-data --jobs {jobs} (HEAD, GET, verify, fsync, rename)", xs)
        print("MB/s = compressed bytes on the wire per second of wall clock; median of the runs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

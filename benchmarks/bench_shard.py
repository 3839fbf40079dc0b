"""`sql shard` throughput (MB/s of raw frames) next to its floor: plain gunzip + np.load of the same files.

Builds a DQN-Replay source of real ALE frames (random play, Dopamine preprocessing; cached in
--frames-cache) tiled into ring-buffer checkpoints, then in one process:
  floor:  rf.load_npy_gz of every observation file (1 process, and --jobs processes in parallel)
  shard:  sqlcli_core.data.store.shard with jobs=1 and jobs=--jobs, into fresh stores
and prints MB/s of raw frames (rows * 7056 bytes) for each, plus the store's compression ratio.

    python -m benchmarks.bench_shard [--capacity 20000] [--checkpoints 4] [--runs 2] [--jobs 2]
    python -m benchmarks.bench_shard --keep /tmp/bench_store # keep the store for bench_sampler.py
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data import store as st


def ale_frames(cache: str, n_per_game: int) -> np.ndarray:
    if cache and os.path.exists(cache):
        return np.load(cache, allow_pickle=False)
    from benchmarks.bench_codecs import play_frames

    frames = np.concatenate([play_frames(g, n_per_game, seed=i) for i, g in enumerate(["Pong", "Breakout", "MsPacman", "Seaquest"])])
    if cache:
        np.save(cache, frames, allow_pickle=False)
    return frames


def write_source(root: Path, frames: np.ndarray, capacity: int, checkpoints: int, runs: int) -> int:
    """Ring-buffer checkpoints of a stream made of the ALE frames (episodes every ~800 rows). Returns rows."""
    rng = np.random.default_rng(0)
    total = capacity * checkpoints - 1
    for run in range(1, runs + 1):
        d = rf.replay_dir(root, "Pong", run)
        d.mkdir(parents=True, exist_ok=True)
        pos = np.arange(total) + run * 997
        stream_frames = frames[pos % len(frames)]
        terminals = (rng.random(total) < 1 / 800).astype(np.uint8)
        actions = rng.integers(0, 6, total).astype(np.int32)
        rewards = rng.choice(np.array([-1, 0, 0, 0, 1], np.float32), total)
        for n in range(checkpoints):
            add_count = capacity * (n + 1) - 1
            lo = max(0, add_count - capacity)
            phys = np.arange(lo, add_count) % capacity
            for name, src in (("observation", stream_frames), ("action", actions), ("reward", rewards), ("terminal", terminals)):
                arr = np.zeros((capacity, *src.shape[1:]), src.dtype)
                arr[phys] = src[lo:add_count]
                rf.save_npy_gz(d / rf.file_name(name, n), arr)
            import gzip

            with gzip.GzipFile(d / rf.file_name("add_count", n), "wb", mtime=0) as gz:
                np.save(gz, np.array(add_count, np.int64), allow_pickle=False)
            rf.save_npy_gz(d / rf.file_name("invalid_range", n), rf.invalid_range(add_count % capacity, capacity))
    return total * runs


def _load_nbytes(path: str) -> int:
    return rf.load_npy_gz(path).nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity", type=int, default=20000, help="rows per checkpoint (bucket: 1,000,000)")
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--frames-cache", default="/tmp/ale_frames.npy")
    ap.add_argument("--keep", default="", help="keep the jobs=N store at this path")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    try:
        frames = ale_frames(args.frames_cache, 2500)
        t0 = time.perf_counter()
        rows = write_source(tmp / "src", frames, args.capacity, args.checkpoints, args.runs)
        print(f"# source: {args.runs} runs x {args.checkpoints} checkpoints x {args.capacity} rows of real ALE frames "
              f"({time.perf_counter() - t0:.0f}s to write)", flush=True)
        obs = sorted(str(p) for p in (tmp / "src").rglob("$store$_observation_ckpt.*.gz"))
        gz_mb = sum(os.path.getsize(p) for p in obs) / 1e6
        file_mb = len(obs) * args.capacity * st.FRAME_BYTES / 1e6  # what gunzip produces
        stored_mb = rows * st.FRAME_BYTES / 1e6  # rows that end up in the store (overlaps removed)

        results = {}
        t0 = time.perf_counter()
        for p in obs:
            _load_nbytes(p)
        results["floor gunzip+np.load, 1 process"] = file_mb / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_load_nbytes, obs))
        results[f"floor gunzip+np.load, {args.jobs} processes"] = file_mb / (time.perf_counter() - t0)

        for jobs in (1, args.jobs):
            dst = tmp / f"store{jobs}"
            t0 = time.perf_counter()
            res = st.shard(tmp / "src", dst, jobs=jobs)
            dt = time.perf_counter() - t0
            results[f"sql shard --jobs {jobs}"] = file_mb / dt
            ratio = res["runs"][0]["compression_ratio"]
        print(f"{'':40s} {'MB/s raw frames':>16s}")
        for k, v in results.items():
            print(f"{k:40s} {v:16.1f}")
        print(f"# {file_mb:.0f} MB of raw frames in {len(obs)} files ({gz_mb:.0f} MB gzip), {stored_mb:.0f} MB stored; "
              f"store compression ratio {ratio}")
        print(json.dumps({"capacity": args.capacity, "checkpoints": args.checkpoints, "runs": args.runs,
                          "raw_frames_MB": round(file_mb), "MBps": {k: round(v, 1) for k, v in results.items()},
                          "compression_ratio": ratio}))
        if args.keep:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.move(str(tmp / f"store{args.jobs}"), args.keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

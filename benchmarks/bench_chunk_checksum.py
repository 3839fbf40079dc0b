"""What the crc32c checksum of every chunk costs: `shard` MB/s and sampler transitions/s with and without it.

Builds one DQN-Replay source of real ALE frames (as bench_shard.py does), then in one process, alternating
the two settings `--repeats` times (best of each, to damp the load of a shared machine):
  shard:   sqlcli_core.data.store.shard(jobs=1) into a fresh store, ShardConfig(checksum=False) vs True
  sampler: ReplaySampler over each store with a cache smaller than the store: cache fill (every unit
           decoded, crc checked) and transitions/s at batch 32 and 512 (units replaced as they are used)

    python -m benchmarks.bench_chunk_checksum [--capacity 10000] [--checkpoints 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.bench_shard import ale_frames, write_source
from sqlcli_core.data import store as st
from sqlcli_core.data.sampler import ReplaySampler


def shard_mb_s(src: Path, dst: Path, checksum: bool, raw_mb: float) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    st.shard(src, dst, jobs=1, config=st.ShardConfig(checksum=checksum))
    return raw_mb / (time.perf_counter() - t0)


def sampler_rates(dst: Path, cache_bytes: int, batches: int) -> dict:
    out = {}
    for batch in (32, 512):
        with ReplaySampler(dst, batch_size=batch, cache_bytes=cache_bytes, seed=0) as s:
            t0 = time.perf_counter()
            s.next_batch()
            out["cache_fill_s"] = min(out.get("cache_fill_s", 1e9), time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(batches):
                s.next_batch()
            out[f"B={batch} transitions/s"] = batch * batches / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity", type=int, default=10000)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--cache-mb", type=int, default=96)
    ap.add_argument("--frames-cache", default="/tmp/ale_frames.npy")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_crc_"))
    try:
        frames = ale_frames(args.frames_cache, 2500)
        rows = write_source(tmp / "src", frames, args.capacity, args.checkpoints, 1)
        raw_mb = args.checkpoints * args.capacity * st.FRAME_BYTES / 1e6
        best: dict[str, dict] = {"zstd": {}, "zstd+crc32c": {}}
        for _ in range(args.repeats):
            for name, checksum in (("zstd", False), ("zstd+crc32c", True)):
                dst = tmp / name
                rates = {"shard MB/s": shard_mb_s(tmp / "src", dst, checksum, raw_mb),
                         **sampler_rates(dst, args.cache_mb << 20, args.batches)}
                for k, v in rates.items():
                    keep = min if k == "cache_fill_s" else max
                    best[name][k] = keep(best[name].get(k, v), v)
        print(f"# {rows} rows ({raw_mb:.0f} MB of raw frames) of real ALE frames, 1 run; sampler cache {args.cache_mb} MB; "
              f"best of {args.repeats}")
        keys = list(best["zstd"])
        print(f"{'':26s}" + "".join(f"{k:>22s}" for k in keys))
        for name, r in best.items():
            print(f"{name:26s}" + "".join(f"{r[k]:22.2f}" for k in keys))
        print(json.dumps({"rows": rows, "cache_mb": args.cache_mb,
                          "results": {n: {k: round(v, 2) for k, v in r.items()} for n, r in best.items()}}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

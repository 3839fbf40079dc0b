"""ReplaySampler transitions/s (batch 32 and 512) on a store larger than its cache, next to the in-RAM baseline.

In one process:
  1. ReplaySampler(cache_bytes=--cache-mb) over the whole store: warm-up, then --batches batches per size;
     peak RSS (ru_maxrss) after it.
  2. Baseline: every run's frames decompressed into RAM and batches gathered with plain numpy fancy
     indexing (frame-major (B, 4, 84, 84), state and next state, n-step sums): the ~330k/s ceiling.
  3. Random single-frame reads straight from the Zarr array (what the cache avoids).
  4. Uniformity: per-index counts over one run, chi-square/dof for reuse 1, 4, 16 next to i.i.d. draws.

    python -m benchmarks.bench_shard --keep /tmp/bench_store   # makes a ~1.1 GB-of-frames store
    python benchmarks/bench_sampler.py /tmp/bench_store [--cache-mb 256] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data import store as st
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.data.transitions import STACK_OFFSETS


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sampler(path: str, batch: int, batches: int, cache_bytes: int) -> tuple[float, dict]:
    with ReplaySampler(path, batch_size=batch, cache_bytes=cache_bytes, seed=0) as s:
        t0 = time.perf_counter()
        s.next_batch()  # includes filling the cache
        fill = time.perf_counter() - t0
        for _ in range(min(20, batches)):
            s.next_batch()
        t0 = time.perf_counter()
        for _ in range(batches):
            s.next_batch()
        dt = time.perf_counter() - t0
        return batch * batches / dt, {"cache_fill_s": round(fill, 2), **s.uniformity_report()}


def bench_in_ram(path: str, batch: int, batches: int, n: int = 3, gamma: float = 0.99) -> tuple[float, float]:
    """Numpy gather from the fully decompressed store: (transitions/s, seconds to load)."""
    root = st.open_store(path)
    t0 = time.perf_counter()
    frames, rewards, terminals, valid = [], [], [], []
    offset = 0
    for _, _, g in st.iter_runs(root):
        meta = st.run_meta(g)
        rows = meta["rows"]
        frames.append(g["frames"][:rows])
        rewards.append(g["rewards"][:rows])
        terms = g["terminals"][:rows]
        terminals.append(terms)
        valid.append(np.flatnonzero(st.valid_mask(terms, meta["segments"], n)) + offset)
        offset += rows
    frames, rewards, terminals, valid = map(np.concatenate, (frames, rewards, terminals, valid))
    load = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    powers = gamma ** np.arange(n)
    t0 = time.perf_counter()
    for _ in range(batches):
        i = valid[rng.integers(len(valid), size=batch)]
        win = i[:, None] + np.arange(n)
        term = terminals[win].astype(bool)
        steps = np.where(term.any(1), term.argmax(1) + 1, n)
        ret = (rewards[win] * powers * (np.arange(n) < steps[:, None])).sum(1)
        state = frames[i[:, None] + STACK_OFFSETS]
        nxt = frames[(i + steps)[:, None] + STACK_OFFSETS]
        assert state.shape == (batch, rf.STACK_SIZE, *rf.FRAME_SHAPE) and ret.shape == (batch,) and nxt.shape == state.shape
    return batch * batches / (time.perf_counter() - t0), load


def bench_zarr_random_reads(path: str, reads: int = 300) -> float:
    root = st.open_store(path)
    _, _, g = next(iter(st.iter_runs(root)))
    arr = g["frames"]
    idx = np.random.default_rng(0).integers(0, arr.shape[0], reads)
    t0 = time.perf_counter()
    for i in idx:
        arr[int(i)]
    return reads / (time.perf_counter() - t0)


def chi2_per_dof(counts: np.ndarray) -> float:
    """Pearson chi-square of counts against uniform, divided by its degrees of freedom (~1 for i.i.d.)."""
    e = counts.sum() / len(counts)
    return float(((counts - e) ** 2 / e).sum() / (len(counts) - 1))


def bench_uniformity(path: str, samples: int, cache_bytes: int, reuses=(1.0, 4.0, 16.0)) -> dict:
    """Per-index counts of run 1 of the first game: chi2/dof of the sampler and of i.i.d. uniform draws."""
    root = st.open_store(path)
    game, run, g = next(iter(st.iter_runs(root)))
    meta = st.run_meta(g)
    valid = np.flatnonzero(st.valid_mask(g["terminals"][: meta["rows"]], meta["segments"], 3))
    pos = np.full(meta["rows"], -1)
    pos[valid] = np.arange(len(valid))
    out = {"valid_indices": int(len(valid)), "samples": samples}
    iid = np.bincount(np.random.default_rng(0).integers(len(valid), size=samples), minlength=len(valid))
    out["iid"] = round(chi2_per_dof(iid), 2)
    for reuse in reuses:
        counts = np.zeros(len(valid), np.int64)
        with ReplaySampler(path, games=[game], runs=[run], batch_size=512, cache_bytes=cache_bytes, reuse=reuse) as s:
            for _ in range(samples // 512):
                _, keys = s.next_batch_with_keys()
                at = pos[keys[:, 2]]
                assert (at >= 0).all(), "sampled an invalid index"
                counts += np.bincount(at, minlength=len(valid))
        out[f"reuse_{reuse:g}"] = round(chi2_per_dof(counts), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--cache-mb", type=int, default=256, help="sampler cache_bytes in MB (default 256)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--uniformity-samples", type=int, default=1_000_000, help="0 skips the uniformity measurement")
    args = ap.parse_args()
    root = st.open_store(args.store)
    rows = sum(st.run_meta(g)["rows"] for _, _, g in st.iter_runs(root))
    store_mb = rows * st.FRAME_BYTES / 1e6
    print(f"# store {args.store}: {rows:,} rows = {store_mb:.0f} MB of frames decompressed; "
          f"cache {args.cache_mb} MB ({store_mb / args.cache_mb:.1f}x smaller)")
    out = {"rows": rows, "store_frames_MB": round(store_mb), "cache_MB": args.cache_mb}
    for b in (32, 512):
        n = args.batches if b == 512 else args.batches * 8
        rate, info = bench_sampler(args.store, b, n, args.cache_mb << 20)
        out[f"sampler_B{b}"] = round(rate)
        print(f"ReplaySampler  B={b:<4d} {rate:>10,.0f} transitions/s   (cache fill {info['cache_fill_s']}s, "
              f"{info['slots_per_game']} units of {info['unit_rows']} rows per game, a unit stays "
              f"{info['batches_a_unit_stays']:.0f} batches)", flush=True)
    out["sampler_peak_rss_MB"] = round(peak_rss_mb())
    print(f"peak RSS after the sampler runs: {out['sampler_peak_rss_MB']} MB")
    zr = bench_zarr_random_reads(args.store)
    out["zarr_random_frame_reads_per_s"] = round(zr)
    print(f"random single-frame reads from Zarr: {zr:,.0f} frames/s (a 4-stack needs 8 of them)")
    for b in (32, 512):
        n = args.batches if b == 512 else args.batches * 8
        rate, load = bench_in_ram(args.store, b, n)
        out[f"in_ram_B{b}"] = round(rate)
        print(f"in-RAM numpy gather B={b:<4d} {rate:>10,.0f} transitions/s   (after {load:.0f}s decompressing "
              f"the whole store into RAM)", flush=True)
    out["peak_rss_MB_with_in_ram"] = round(peak_rss_mb())
    print(f"peak RSS with the whole store in RAM: {out['peak_rss_MB_with_in_ram']} MB")
    if args.uniformity_samples:
        u = bench_uniformity(args.store, args.uniformity_samples, args.cache_mb << 20)
        out["uniformity_chi2_per_dof"] = u
        print(f"uniformity over {u['valid_indices']:,} valid indices of one run, {u['samples']:,} draws: chi2/dof "
              + ", ".join(f"{k} {v}" for k, v in u.items() if k not in ("valid_indices", "samples"))
              + " (i.i.d. = 1; the cache's correlation adds about `reuse`)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

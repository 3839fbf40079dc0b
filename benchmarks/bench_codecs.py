"""Choose the frame codec and chunk length of the `sql shard` store by measurement on real ALE frames.

Plays random actions in a few games with Dopamine's preprocessing (sqlcli_core.acting.ale_env), stacks the
84x84 frames as `shard` stores them, and for each (codec, frames per chunk) measures: compression ratio,
encode MB/s and decode MB/s of whole chunks (MB of raw frames, single thread, through the zarr 3 codec
objects that the store uses), and the cost of one random single-frame read (= one whole-chunk decode).

    python benchmarks/bench_codecs.py [--frames 2500] [--games Pong,Breakout,MsPacman,Seaquest] [--frames-cache F.npy]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.games.catalog import resolve_games


def play_frames(game_name: str, n: int, seed: int = 0) -> np.ndarray:
    """(n, 84, 84) uint8 frames from random play, with the 3 zero padding rows before each episode."""
    env = AtariGame(resolve_games(game_name)[0], seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    frame = None
    while len(out) < n:
        if frame is None:
            out.extend([np.zeros((84, 84), np.uint8)] * 3)
            frame = env.reset()
        out.append(frame)
        frame, _, over = env.step(int(rng.integers(env.num_actions)))
        if over:
            frame = None
    env.close()
    return np.stack(out[:n])


CODECS = {
    "blosc-zstd1-noshuffle": lambda: BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.noshuffle, typesize=1),
    "blosc-zstd3-noshuffle": lambda: BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.noshuffle, typesize=1),
    "blosc-zstd5-noshuffle": lambda: BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.noshuffle, typesize=1),
    "blosc-zstd3-bitshuffle": lambda: BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle, typesize=1),
    "blosc-lz4-5-noshuffle": lambda: BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle, typesize=1),
    "blosc-lz4-5-bitshuffle": lambda: BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle, typesize=1),
    "zstd1": lambda: ZstdCodec(level=1),
    "zstd3": lambda: ZstdCodec(level=3),
    "zstd9": lambda: ZstdCodec(level=9),
}


def measure(frames: np.ndarray, codec_name: str, chunk: int, tmp: str) -> dict:
    """Write `frames` into a zarr v3 array with this codec and chunk length; time whole-chunk encode/decode."""
    raw_mb = frames.nbytes / 1e6
    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(store, shape=frames.shape, chunks=(chunk, 84, 84), dtype="uint8",
                            compressors=[CODECS[codec_name]()], fill_value=0,
                            config={"write_empty_chunks": True})  # as shard writes (see store.py)
    t0 = time.perf_counter()
    arr[:] = frames
    enc = time.perf_counter() - t0
    stored = sum(len(v) for k, v in store._store_dict.items() if not k.endswith("zarr.json"))
    t0 = time.perf_counter()
    back = arr[:]
    dec = time.perf_counter() - t0
    assert np.array_equal(back, frames)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(frames), 200)
    t0 = time.perf_counter()
    for i in picks:
        arr[int(i)]
    single = (time.perf_counter() - t0) / len(picks)
    return {"codec": codec_name, "chunk_frames": chunk, "ratio": round(frames.nbytes / stored, 2),
            "encode_MBps": round(raw_mb / enc, 1), "decode_MBps": round(raw_mb / dec, 1),
            "random_frame_reads_per_s": round(1 / single, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2500, help="frames per game (default 2500)")
    ap.add_argument("--games", default="Pong,Breakout,MsPacman,Seaquest")
    ap.add_argument("--chunks", default="64,256,1024")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--frames-cache", default="", help="reuse/save the played frames in this .npy file")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.frames_cache and os.path.exists(args.frames_cache):
        frames = np.load(args.frames_cache, allow_pickle=False)
    else:
        frames = np.concatenate([play_frames(g, args.frames, seed=i) for i, g in enumerate(args.games.split(","))])
        if args.frames_cache:
            np.save(args.frames_cache, frames, allow_pickle=False)
    print(f"# {len(frames)} real ALE frames from {args.games} in {time.perf_counter() - t0:.1f}s "
          f"({frames.nbytes / 1e6:.0f} MB raw)")
    print(f"{'codec':26s} {'chunk':>6s} {'ratio':>7s} {'enc MB/s':>9s} {'dec MB/s':>9s} {'rand reads/s':>12s}")
    rows = []
    for chunk in map(int, args.chunks.split(",")):
        for name in args.codecs.split(","):
            r = measure(frames, name, chunk, "")
            rows.append(r)
            print(f"{r['codec']:26s} {chunk:6d} {r['ratio']:7.1f} {r['encode_MBps']:9.0f} {r['decode_MBps']:9.0f} "
                  f"{r['random_frame_reads_per_s']:12.0f}", flush=True)
    print(json.dumps({"frames": int(len(frames)), "games": args.games, "results": rows}))


if __name__ == "__main__":
    main()

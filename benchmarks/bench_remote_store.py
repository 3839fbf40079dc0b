"""Sampler transitions/s from a store in object storage (S3 API, loopback) at 0, 20 and 100 ms added latency
per request, against the same sampler on the same store on local disk.

The store: `--games` games x 1 run of `--rows` rows of fixture frames (tests/replay_fixture.py), sharded
once to a local directory and once to `s3://bench/store` on moto's S3 server (127.0.0.1) with the same
settings. Reads from S3 go through a proxy (tests/s3_fixture.py) that sleeps the given latency before
forwarding each request. The sampler runs with its default settings (unit_chunks 4, reuse 4, prefetch 2,
prefetch_units as given) at batch 512 with a cache of `--cache-units` units per game, smaller than the store.
Reported per case: seconds to the first batch (the cache fill) and steady-state transitions/s over
`--batches` batches after it; every batch is checked equal to the local one (same seed).

    python -m benchmarks.bench_remote_store --games 2 --rows 24000 --batches 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

GAMES = ["Pong", "Breakout", "Seaquest", "Qbert"]


def build(tmp: Path, games: int, rows: int) -> Path:
    from sqlcli_core.games.catalog import minimal_action_set
    from tests.replay_fixture import write_run

    src = tmp / "src"
    for i, game in enumerate(GAMES[:games]):
        write_run(src, game, 1, capacity=rows // 3, total=rows, num_actions=len(minimal_action_set(game)),
                  seed=i, mean_episode=400)
    return src


def run_case(store, batches: int, cache_units: int, games: int, prefetch_units: int, reference=None, reuse=4.0):
    from sqlcli_core.data.sampler import ReplaySampler
    from sqlcli_core.data.store import FRAME_BYTES

    unit = 4 * 512
    slot = (unit + 6) * (FRAME_BYTES + 9) + unit * 4
    cache = (cache_units * games + prefetch_units) * slot
    started = time.perf_counter()
    out = []
    with ReplaySampler(store, batch_size=512, cache_bytes=cache, seed=0, prefetch_units=prefetch_units,
                       reuse=reuse) as s:
        first = s.next_batch()
        fill = time.perf_counter() - started
        t0 = time.perf_counter()
        for i in range(batches):
            b = s.next_batch()
            if reference is not None:
                np.testing.assert_array_equal(b.state, reference[i].state)
                np.testing.assert_array_equal(b.reward, reference[i].reward)
            else:
                out.append(b)
        rate = batches * 512 / (time.perf_counter() - t0)
        loads = s._events_before(batches + 1)
    return {"first_batch_s": round(fill, 2), "transitions_per_s": round(rate), "unit_loads": loads,
            "slots_per_game": s.slots_per_game}, first, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", type=int, default=2)
    ap.add_argument("--rows", type=int, default=24000, help="rows per game (units of 2048 rows)")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--cache-units", type=int, default=4, help="cache slots per game (the store has rows/2048)")
    ap.add_argument("--latency-ms", default="0,20,100")
    ap.add_argument("--prefetch-units", type=int, default=None, help="default: the sampler's default")
    ap.add_argument("--reuse", type=float, default=4.0, help="the sampler's reuse (default 4, its default)")
    args = ap.parse_args()

    import s3fs
    from s3_fixture import FaultProxy, S3Server

    from sqlcli_core.data import store as st
    from sqlcli_core.data.sampler import ReplaySampler

    prefetch_units = args.prefetch_units or ReplaySampler.__init__.__kwdefaults__["prefetch_units"]
    server = S3Server()
    server.create_bucket("bench")
    os.environ.update(server.env())
    results = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "games": args.games, "rows": args.rows,
               "batch": 512, "reuse": args.reuse, "prefetch_units": prefetch_units, "cache_units_per_game": args.cache_units}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = build(tmp, args.games, args.rows)
        st.shard(src, tmp / "local")
        st.shard(src, "s3://bench/store")
        local, _, ref = run_case(tmp / "local", args.batches, args.cache_units, args.games, prefetch_units, reuse=args.reuse)
        results["local_disk"] = local
        print("local disk", local, flush=True)
        for ms in (int(x) for x in args.latency_ms.split(",")):
            proxy = FaultProxy(server.endpoint, latency=ms / 1000)
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients; this one must use the proxy
            try:
                r, _, _ = run_case("s3://bench/store", args.batches, args.cache_units, args.games, prefetch_units,
                                   reference=ref, reuse=args.reuse)
            finally:
                proxy.stop()
            r["requests"] = proxy.requests
            results[f"s3_{ms}ms"] = r
            print(f"s3 +{ms} ms", r, flush=True)
        again, _, _ = run_case(tmp / "local", args.batches, args.cache_units, args.games, prefetch_units, reference=ref, reuse=args.reuse)
        print("local disk again", again, flush=True)
        results["local_disk_again"] = again
        best = max(local["transitions_per_s"], again["transitions_per_s"])  # the machine is shared: noisy
        for ms in (int(x) for x in args.latency_ms.split(",")):
            results[f"s3_{ms}ms"]["vs_local"] = round(results[f"s3_{ms}ms"]["transitions_per_s"] / best, 2)
    results["load_average_after"] = os.getloadavg()
    server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

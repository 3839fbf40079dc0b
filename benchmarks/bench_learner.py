"""Learner throughput on this machine: train steps/s and samples/s, end to end and compute-only.

For each (network, batch): the jitted train step is timed
  * compute-only: the same device batch every step (no input pipeline), and
  * end to end: batches from a real ReplaySampler over a real Zarr store, through the learner's prefetch
    thread (the gap between the two is the input pipeline's cost);
and its achieved FLOP/s (XLA's cost analysis of the compiled step x steps/s) is printed next to the
baseline. On an accelerator (GPU, TPU) the baseline is the device's published peak for the compute dtype, and
the ratio is the model FLOP utilisation (benchmarks/mfu.py; peaks and sources in sqlcli_core/accelerators.py);
the default there is the paper's resnet101 at batch 512 in bf16 and f32. On CPU there is no published peak: the
baseline is this machine's measured f32 matmul peak (a large jnp.dot timed in the same process).

    python -m benchmarks.bench_learner                 # CPU: DQN CNN at batch 32 and 256, resnet18 (width 0.25) at 32
    python -m benchmarks.bench_learner --steps 20 --configs dqn:1.0:32,resnet18:0.5:16
    python -m benchmarks.bench_learner --profile /tmp/trace   # accelerator: resnet101 B=512, bf16 and f32, + trace
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a big float32 jnp.dot (2 n^3 per product), best of `repeats`."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def build_store(root: Path, rows: int) -> Path:
    """A two-game store (Pong, Breakout) of `rows` rows each, sharded from DQN-Replay-format checkpoints."""
    from sqlcli_core.data import store as st
    from tests.replay_fixture import write_run

    src = root / "src"
    write_run(src, "Pong", 1, capacity=rows // 2, total=rows, num_actions=6, seed=1, mean_episode=200)
    write_run(src, "Breakout", 1, capacity=rows // 2, total=rows, num_actions=4, seed=2, mean_episode=200)
    dst = root / "store"
    st.shard(src, dst)
    return dst


def step_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def bench(arch: str, width: float, batch: int, steps: int, store: Path, cache_bytes: int, dtype: str = "f32",
          profile: Path | None = None) -> dict:
    """One row; `profile`: a JAX profiler trace of the compute-only steps into that folder (TensorBoard's
    profile tab, or Perfetto, opens it)."""
    import contextlib

    import jax

    from benchmarks.mfu import DTYPES, utilisation
    from sqlcli_core.data.sampler import ReplaySampler
    from sqlcli_core.networks.config import NetworkConfig
    from sqlcli_core.networks.network import count_parameters
    from sqlcli_core.training.configs import LearnerConfig
    from sqlcli_core.training.loop import Prefetcher
    from sqlcli_core.training.mesh import batch_sharding, make_mesh, put_batch
    from sqlcli_core.training.update import init_train_state, make_train_step

    games = ["Pong", "Breakout"]
    num_actions = (6, 4)
    net = NetworkConfig(arch=arch, width=width, compute_dtype=DTYPES[dtype])
    cfg = LearnerConfig()
    mesh = make_mesh()
    sharding = batch_sharding(mesh)
    state = init_train_state(net, num_actions, cfg, 0, mesh)
    step = make_train_step(net, num_actions, cfg, mesh)
    params = sum(count_parameters(state.params).values())

    with ReplaySampler(store, games=games, batch_size=batch, seed=0, cache_bytes=cache_bytes) as sampler:
        fixed = put_batch(sampler.next_batch(), sharding)
        t = time.perf_counter()
        compiled = step.lower(state, fixed).compile()
        compile_s = time.perf_counter() - t
        flops = step_flops(compiled)
        for _ in range(2):  # warm-up
            state, m = step(state, fixed)
        jax.block_until_ready(m)
        tracing = jax.profiler.trace(str(profile / f"{arch}-w{width}-b{batch}-{dtype}")) if profile else \
            contextlib.nullcontext()
        with tracing:
            t = time.perf_counter()
            for _ in range(steps):
                state, m = step(state, fixed)
            jax.block_until_ready(m)
            compute_s = (time.perf_counter() - t) / steps

        with Prefetcher(sampler, sharding, depth=2) as batches:
            for _ in range(2):
                b, _ = next(batches)
                state, m = step(state, b)
            jax.block_until_ready(m)
            t = time.perf_counter()
            for _ in range(steps):
                b, _ = next(batches)
                state, m = step(state, b)
            jax.block_until_ready(m)
            e2e_s = (time.perf_counter() - t) / steps
        t = time.perf_counter()
        for _ in range(steps):
            sampler.next_batch()
        sample_s = (time.perf_counter() - t) / steps

    device = jax.devices()[0]
    return {
        "arch": arch, "width": width, "batch": batch, "dtype": dtype, "device_kind": device.device_kind,
        "devices": len(mesh.devices.flat), "parameters": params, "compile_s": compile_s,
        "compute_steps_per_s": 1 / compute_s, "compute_samples_per_s": batch / compute_s,
        "e2e_steps_per_s": 1 / e2e_s, "e2e_samples_per_s": batch / e2e_s,
        "sampler_alone_samples_per_s": batch / sample_s,
        "flops_per_step": flops, **utilisation(flops, compute_s, device.device_kind, dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None,
                        help="comma-separated ARCH:WIDTH:BATCH (default: resnet101:1.0:512 on an accelerator, "
                        "dqn:1.0:32,dqn:1.0:256,resnet18:0.25:32 on CPU)")
    parser.add_argument("--dtypes", default=None, help="comma-separated compute dtypes, f32 and/or bf16 (default: "
                        "bf16,f32 on an accelerator, f32 on CPU)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="write a JAX profiler trace of each row's compute-only steps under DIR")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=6000, help="rows per game in the store (default: %(default)s)")
    parser.add_argument("--cache-bytes", type=int, default=512 << 20, help="sampler cache (default: 512 MiB)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()

    import jax

    from benchmarks.mfu import DTYPES, describe
    from sqlcli_core.provenance import package_versions

    accelerator = jax.default_backend() != "cpu"
    configs = args.configs or ("resnet101:1.0:512" if accelerator else "dqn:1.0:32,dqn:1.0:256,resnet18:0.25:32")
    dtypes = (args.dtypes or ("bf16,f32" if accelerator else "f32")).split(",")
    if unknown := [d for d in dtypes if d not in DTYPES]:
        parser.error(f"unknown --dtypes {', '.join(unknown)}: choose from {', '.join(DTYPES)}")
    if not accelerator:
        print("no accelerator (JAX runs on the CPU): achieved FLOP/s are compared with this machine's measured "
              "f32 matmul peak, not a published one", flush=True)
    peak = None if accelerator else matmul_peak()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp), args.rows)
        for spec in configs.split(","):
            arch, width, batch = spec.split(":")
            for dtype in dtypes:
                r = bench(arch, float(width), int(batch), args.steps, store, args.cache_bytes, dtype, args.profile)
                results.append(r)
                print(f"{arch:>9} w{float(width):<5} B={int(batch):<4} {dtype:>4} {r['parameters']:>10,} params | "
                      f"compute-only {r['compute_steps_per_s']:7.2f} steps/s {r['compute_samples_per_s']:8.0f} "
                      f"samples/s | end to end {r['e2e_steps_per_s']:7.2f} steps/s {r['e2e_samples_per_s']:8.0f} "
                      f"samples/s | sampler alone {r['sampler_alone_samples_per_s']:8.0f} samples/s | "
                      + describe(r, peak), flush=True)
    summary = {"devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
               "accelerator": accelerator, "cpu_count": os.cpu_count(), "matmul_peak_flops_per_s": peak,
               "profile": str(args.profile) if args.profile else None, "results": results,
               "versions": package_versions(), "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

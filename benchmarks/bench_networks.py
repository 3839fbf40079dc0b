"""Forward and forward+backward time of the Scaled QL networks, and the multi-game head layout.

Run: python benchmarks/bench_networks.py [--archs dqn,impala,resnet18] [--batch 32] [--games atari40]
Prints, per arch: compile seconds and steady-state milliseconds of apply (forward) and of
value_and_grad of the full Scaled QL loss (online + target forward, backward). The DQN CNN, the
classic small baseline, is always measured first in the same process, so every row can be compared with it.
Then the head layout: our stacked matmul + gather against gathering a per-sample weight matrix.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.games.catalog import resolve_games
from sqlcli_core.methods.scaled_ql import make_loss_fn
from sqlcli_core.networks.config import NetworkConfig, num_actions_for
from sqlcli_core.networks.network import action_mask, build_network


def timed(fn, *args, repeats):
    """(compile seconds, median steady-state milliseconds) of a jitted fn."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return compile_s, 1000 * float(np.median(times))


def random_batch(num_actions, batch, seed=0):
    rng = np.random.default_rng(seed)
    game = rng.integers(0, len(num_actions), batch).astype(np.int32)
    return TransitionBatch(
        game=game, state=rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8),
        action=(rng.integers(0, 1 << 20, batch) % np.asarray(num_actions)[game]).astype(np.int32),
        reward=rng.uniform(-1, 1, batch).astype(np.float32), done=(rng.random(batch) < 0.05).astype(np.float32),
        steps=np.full(batch, 3, np.int32), next_state=rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8))


def bench_arch(arch, width, num_actions, batch, repeats, dtype):
    config = NetworkConfig(arch=arch, width=width, compute_dtype=dtype)
    net = build_network(config, num_actions)
    data = jax.tree_util.tree_map(jnp.asarray, random_batch(num_actions, batch))
    params = jax.jit(net.init)(jax.random.PRNGKey(0), data.state, data.game)
    loss_fn = make_loss_fn(net.apply, action_mask(num_actions), config.support(), 0.99, 0.05)
    fwd_c, fwd_ms = timed(jax.jit(net.apply), params, data.state, data.game, repeats=repeats)
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    step_c, step_ms = timed(grad, params, params, data, repeats=repeats)
    return {"arch": arch, "width": width, "dtype": dtype, "batch": batch, "forward_ms": round(fwd_ms, 1),
            "loss_and_grad_ms": round(step_ms, 1), "compile_s": round(fwd_c + step_c, 1)}


def bench_heads(num_actions, batch, dim, atoms, repeats):
    """Stacked-matmul heads (ours) vs per-sample gathered weights, forward + backward w.r.t. weights."""
    from sqlcli_core.networks.heads import head_gather_table, head_offsets

    total = int(head_offsets(num_actions, atoms)[-1])
    table = jnp.asarray(head_gather_table(num_actions, atoms))
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32)
    game = jnp.asarray(rng.integers(0, len(num_actions), batch), jnp.int32)
    w = jnp.asarray(rng.normal(size=(dim, total)) / np.sqrt(dim), jnp.float32)

    def ours(w):
        return jnp.sum(jnp.take_along_axis(feats @ w, table[game], axis=1) ** 2)

    def per_sample(w):
        w_own = jnp.take(w, table[game], axis=1)  # (D, B, A_max * atoms)
        return jnp.sum(jnp.einsum("bd,dbk->bk", feats, w_own) ** 2)

    rows = {}
    for name, fn in (("stacked_matmul_gather (ours)", ours), ("per_sample_weight_gather", per_sample)):
        _, ms = timed(jax.jit(jax.grad(fn)), w, repeats=repeats)
        rows[name] = round(ms, 1)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="impala,resnet18", help="comma-separated archs besides dqn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--games", default="atari40")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--head-batch", type=int, default=64)
    args = parser.parse_args()
    num_actions = num_actions_for(NetworkConfig(), resolve_games(args.games))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, games={args.games} "
          f"({len(num_actions)} heads, {sum(num_actions)} actions)")
    rows = []
    for arch in ["dqn"] + [a for a in args.archs.split(",") if a and a != "dqn"]:
        width = 1.0 if arch == "dqn" else args.width
        row = bench_arch(arch, width, num_actions, args.batch, args.repeats, args.dtype)
        base = rows[0] if rows else row
        row["vs_dqn_step"] = round(row["loss_and_grad_ms"] / base["loss_and_grad_ms"], 1)
        rows.append(row)
        print(json.dumps(row))
    heads = bench_heads(num_actions, args.head_batch, 1024, 51, args.repeats)
    print(json.dumps({"heads_grad_ms_batch": args.head_batch, **heads}))


if __name__ == "__main__":
    main()

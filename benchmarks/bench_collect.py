"""Env steps/s of `sql collect` against the bare emulator loop it is built on, side by side in one process.

    python benchmarks/bench_collect.py [--game Breakout] [--steps 20000] [--capacity 10000]

Rows (agent steps/s; one agent step = 4 emulator frames):
  baseline    AtariGame stepped with uniform random actions, nothing logged (the upper bound).
  baseline-mt the same loop with the BLAS thread pool left at its default (what collect avoids).
  collect     collect_run: the same game and policy, logging every row into the ring buffer and
              writing DQN-Replay checkpoints; `play` excludes checkpoint writes, `wall` includes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.acting.collect import collect_run, single_threaded_blas
from sqlcli_core.acting.collect_runs import LOG_NAME, RunConfig, run_dir
from sqlcli_core.games.catalog import Game


def bare_loop(game: str, steps: int, seed: int = 0) -> float:
    """Agent steps/s of AtariGame with random actions and Dopamine's episode handling, no logging."""
    env = AtariGame(Game(game), seed=seed)
    rng = np.random.default_rng(seed)
    env.reset()
    t0 = time.perf_counter()
    length = 0
    for _ in range(steps):
        _, _, over = env.step(int(rng.integers(env.num_actions)))
        length += 1
        if over or length >= env.protocol.max_episode_steps:
            env.reset()
            length = 0
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Breakout")
    parser.add_argument("--steps", type=int, default=20_000, help="agent steps per measurement")
    parser.add_argument("--capacity", type=int, default=10_000, help="ring-buffer rows per checkpoint")
    args = parser.parse_args()

    with single_threaded_blas():
        baseline = bare_loop(args.game, args.steps)
    baseline_mt = bare_loop(args.game, min(args.steps, 2000))
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        summary = collect_run(RunConfig(args.game, 1, transitions=args.steps, capacity=args.capacity), root)
        wall = time.perf_counter() - t0
        log = json.loads((run_dir(root, args.game, 1) / LOG_NAME).read_text())
    result = {
        "game": args.game, "steps": args.steps, "capacity": args.capacity,
        "baseline_steps_per_s": baseline, "baseline_default_blas_threads_steps_per_s": baseline_mt,
        "collect_play_steps_per_s": summary["env_steps_per_s"], "collect_wall_steps_per_s": args.steps / wall,
        "collect_save_s": log["save_s"], "checkpoints": summary["checkpoints"], "add_count": summary["add_count"],
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "machine": platform.processor() or platform.machine(),
    }
    print(f"{'baseline (AtariGame, no logging)':42s} {baseline:8.0f} steps/s")
    print(f"{'baseline, default BLAS threads':42s} {baseline_mt:8.0f} steps/s")
    print(f"{'collect, playing (checkpoint writes excluded)':42s} {summary['env_steps_per_s']:8.0f} steps/s "
          f"({summary['env_steps_per_s'] / baseline:.0%} of baseline)")
    print(f"{'collect, wall (incl. ' + str(summary['checkpoints']) + ' checkpoint writes)':42s} "
          f"{args.steps / wall:8.0f} steps/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Acting speed of eval and collect against the single-environment gymnasium loop, side by side in one process.

    python -m benchmarks.bench_acting [--seeds 8] [--episodes 2] [--dqn-steps 2000] [--collect-steps 20000]

Rows (env steps/s = agent steps/s; one agent step = 4 emulator frames):
  baseline      gymnasium `ALE/Pong-v5` (sticky 0.25) + `AtariPreprocessing` (frame skip 4, 84x84 gray, no
                noop starts), one environment, random actions (measured first and last).
  eval random   `evaluate(RandomPolicy)` on Pong, --seeds seeds x --episodes episodes, the whole call
                (emulator creation included), backend vector (ale_py's C++ vector env) and python (AtariGame).
  dqn baseline  the baseline loop driven by the same jitted, randomly initialised Nature-DQN network as `eval
                dqn` (batch 1, one forward pass per step, epsilon 0.001, 4-frame stack shifted in place):
                the fair reference for the network rows (measured first and last).
  eval dqn      `evaluate` with that network (epsilon 0.001, one batched forward pass per step; with
                overlap, two halves taking turns), episodes capped at --dqn-steps agent steps.
  collect       bare AtariGame loop (random actions, nothing logged) vs `collect_all` (capacity 2,000: a
                checkpoint every 2,000 rows) with 1 run and with one run per core (--jobs = runs), on the
                vector backend (the runs play together in this process) and the python one (processes).
Each eval and collect row runs pinned to 1 core and to all cores (os.sched_setaffinity), to show scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def gym_baseline(steps: int, seed: int = 0) -> float:
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1), noop_max=0, frame_skip=4, screen_size=84,
                             terminal_on_life_loss=False, grayscale_obs=True)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def gym_dqn_baseline(policy, steps: int, epsilon: float = 0.001, seed: int = 0) -> float:
    """The same single-environment loop driven by `policy` (batch 1, one forward pass per step, epsilon-greedy).

    The agent's state is the last 4 frames (zeros before the episode's first), shifted in place: the cheap
    frame stack. The network is the one `eval dqn` uses, compiled before the clock starts.
    """
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1), noop_max=0, frame_skip=4, screen_size=84,
                             terminal_on_life_loss=False, grayscale_obs=True)
    rng = np.random.default_rng(seed)
    stack = np.zeros((1, 4, 84, 84), np.uint8)
    game = np.zeros((1,), np.int32)
    num_actions = int(env.action_space.n)
    policy.q_values(stack, game)  # compile (batch 1) outside the timed loop
    frame, _ = env.reset(seed=seed)
    stack[0, -1] = frame
    start = time.perf_counter()
    for _ in range(steps):
        greedy = int(np.argmax(policy.q_values(stack, game)[0, :num_actions]))
        action = int(rng.integers(num_actions)) if rng.random() < epsilon else greedy
        frame, _, terminated, truncated, _ = env.step(action)
        stack[0, :-1] = stack[0, 1:]
        stack[0, -1] = frame
        if terminated or truncated:
            stack[...] = 0
            stack[0, -1], _ = env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def eval_call(policy, seeds: int, episodes: int, epsilon: float, max_steps: int, backend: str,
              overlap: bool = False) -> dict:
    from sqlcli_core.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(games=("Pong",), seeds=tuple(range(seeds)), episodes=episodes, epsilon=epsilon,
                           max_steps=max_steps)
    start = time.perf_counter()
    results, stats = evaluate(policy, config, num_envs=32, backend=backend, overlap=overlap)
    wall = time.perf_counter() - start
    return {"env_steps": stats.env_steps, "wall_s": round(wall, 2), "setup_s": round(stats.setup_seconds, 2),
            "policy_s": round(stats.policy_seconds, 2), "env_steps_per_s": round(stats.env_steps / wall, 1),
            "scores": [r.score for r in sorted(results, key=lambda r: r.key)]}


def bare_loop(steps: int, game: str = "Breakout", seed: int = 0) -> float:
    """benchmarks.bench_collect's bare AtariGame loop, with OpenBLAS held to one thread as collect holds it."""
    from benchmarks.bench_collect import bare_loop as collect_bare_loop
    from sqlcli_core.acting.collect import single_threaded_blas

    with single_threaded_blas():
        return collect_bare_loop(game, steps, seed)


def collect_rates(steps: int, runs: int, jobs: int, backend: str, game: str = "Breakout") -> float:
    """Agent steps per wall-clock second of collect_all over `runs` runs, `jobs` at a time (vector: together in
    this process; python: in `jobs` processes)."""
    from sqlcli_core.acting.collect import collect_all
    from sqlcli_core.acting.collect_runs import RunConfig

    configs = [RunConfig(game, run, transitions=steps, capacity=2000) for run in range(1, runs + 1)]
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        collect_all(configs, root, jobs=jobs, backend=backend)
        return runs * steps / (time.perf_counter() - start)


def pinned(cores: set[int], fn, *args):
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--dqn-steps", type=int, default=2000)
    parser.add_argument("--collect-steps", type=int, default=20000)
    parser.add_argument("--baseline-steps", type=int, default=3000)
    args = parser.parse_args()

    from benchmarks.bench_eval import NetworkPolicy
    from sqlcli_core.evaluation.evaluate import RandomPolicy
    from sqlcli_core.games.catalog import Game

    all_cores = os.sched_getaffinity(0)
    settings = [("1 core", {min(all_cores)}), (f"{len(all_cores)} cores", all_cores)]
    rows = []

    def emit(row: dict) -> None:
        row["loadavg_1min"] = round(os.getloadavg()[0], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    baseline = gym_baseline(args.baseline_steps)
    emit({"what": "baseline: gymnasium Pong-v5 + AtariPreprocessing, 1 env, random", "env_steps_per_s": round(baseline, 1)})
    pong = [Game("Pong")]
    network = NetworkPolicy(pong)
    dqn_baseline = gym_dqn_baseline(network, args.baseline_steps)
    emit({"what": "dqn baseline: the same loop, 1 env, the same jitted DQN network (batch 1), epsilon 0.001",
          "env_steps_per_s": round(dqn_baseline, 1)})
    eval_random_cap = 27_000
    for label, cores in settings:
        for backend in ("vector", "python"):
            r = pinned(cores, eval_call, RandomPolicy(pong), args.seeds, args.episodes, 1.0, eval_random_cap, backend)
            emit({"what": f"eval random, {args.seeds} seeds x {args.episodes} episodes, whole call", "backend": backend,
                  "cores": label, **{k: v for k, v in r.items() if k != "scores"},
                  "steady_env_steps_per_s": round(r["env_steps"] / (r["wall_s"] - r["setup_s"]), 1),
                  "vs_baseline": round(r["env_steps_per_s"] / baseline, 2)})
        # compile at the timed calls' batch widths outside them (the dqn baseline is compiled outside its loop too)
        for overlap in (False, True):
            pinned(cores, eval_call, network, args.seeds, 1, 0.001, 10, "vector", overlap)
        for backend, overlap in (("vector", False), ("vector", True), ("python", False)):
            r = pinned(cores, eval_call, network, args.seeds, 1, 0.001, args.dqn_steps, backend, overlap)
            emit({"what": f"eval dqn network, {args.seeds} seeds x 1 episode (cap {args.dqn_steps}), whole call",
                  "backend": backend, "overlap": overlap, "cores": label,
                  **{k: v for k, v in r.items() if k != "scores"},
                  "steady_env_steps_per_s": round(r["env_steps"] / (r["wall_s"] - r["setup_s"]), 1),
                  "vs_dqn_baseline": round(r["env_steps_per_s"] / dqn_baseline, 2),
                  "vs_random_baseline": round(r["env_steps_per_s"] / baseline, 2)})
    bare = bare_loop(args.collect_steps)
    emit({"what": "collect baseline: bare AtariGame loop, Breakout, random", "env_steps_per_s": round(bare, 1)})
    for label, cores in settings:
        for runs in sorted({1, len(cores)}):
            for backend in ("vector", "python"):
                rate = pinned(cores, collect_rates, args.collect_steps, runs, runs, backend)
                emit({"what": f"collect, Breakout, {runs} run(s), --jobs {runs}, wall clock incl. checkpoints",
                      "backend": backend, "cores": label, "env_steps_per_s": round(rate, 1),
                      "vs_bare_loop": round(rate / bare, 2)})
    baseline_end = gym_baseline(args.baseline_steps)
    emit({"what": "baseline again (end)", "env_steps_per_s": round(baseline_end, 1)})
    dqn_baseline_end = gym_dqn_baseline(network, args.baseline_steps)
    emit({"what": "dqn baseline again (end)", "env_steps_per_s": round(dqn_baseline_end, 1)})
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()

"""Env steps per second of `sql eval`'s batched loop vs a plain one-environment gymnasium loop.

Same machine, same process, run back to back:

- baseline: `gymnasium.make('ALE/Pong-v5')` (frame skip 4, sticky actions 0.25, RGB observations, no
  preprocessing), one environment, random actions, resetting at game over;
- ours: `sqlcli_core.evaluation.evaluate.evaluate` on Pong with N emulators (Dopamine preprocessing, 4-frame stacks),
  with (a) the random policy (epsilon 1: no forward pass) and (b) a jitted, randomly initialised Nature-DQN
  multi-game network (`build_network(NetworkConfig(arch="dqn"))`) with epsilon 0.001: one batched
  forward pass for all N observations per step; for N in --num-envs and threads in --threads.

Every emulator plays --steps agent steps (Pong's random episodes are longer, so none ends early). Figures:
env steps/s over the whole call, and "steady" = steps / (time - emulator creation), the rate that matters
for real 27,000-step episodes.

    python benchmarks/bench_eval.py [--steps 400] [--num-envs 1,8,32] [--threads 1,2] [--no-network]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def gym_baseline(steps: int, seed: int = 0) -> float:
    """Env steps/s of a plain gymnasium ALE/Pong-v5 loop with random actions."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5")
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


class NetworkPolicy:
    """A QPolicy around a jitted, randomly initialised multi-game network (the cost of a real forward pass)."""

    def __init__(self, games, arch: str = "dqn"):
        import jax
        import jax.numpy as jnp

        from sqlcli_core.networks.config import NetworkConfig, num_actions_for
        from sqlcli_core.networks.network import build_network
        from sqlcli_core.runs.policy import make_q_fn

        self.games, self.run_config, self.step = list(games), {}, 0
        config = NetworkConfig(arch=arch)
        num_actions = num_actions_for(config, self.games)
        network = build_network(config, num_actions)
        self.params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 84, 84), jnp.uint8),
                                   jnp.zeros((1,), jnp.int32))
        self._q_fn = make_q_fn(config, num_actions)

    def q_values(self, obs, game):
        return np.asarray(self._q_fn(self.params, obs, game))


def ours(policy, num_envs: int, threads: int, steps: int, epsilon: float) -> dict:
    from sqlcli_core.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(games=("Pong",), seeds=tuple(range(num_envs)), episodes=1, epsilon=epsilon,
                           max_steps=steps)
    _, stats = evaluate(policy, config, num_envs=num_envs, threads=threads)
    steady = stats.env_steps / (stats.seconds - stats.setup_seconds)
    return {"env_steps": stats.env_steps, "seconds": round(stats.seconds, 2),
            "setup_seconds": round(stats.setup_seconds, 2), "policy_seconds": round(stats.policy_seconds, 2),
            "env_steps_per_s": round(stats.env_steps_per_s, 1), "steady_env_steps_per_s": round(steady, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="agent steps per emulator (default 400)")
    parser.add_argument("--num-envs", default="1,8,32", help="emulator counts (default 1,8,32)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--no-network", action="store_true", help="skip the network-policy rows")
    args = parser.parse_args()
    from sqlcli_core.evaluation.evaluate import RandomPolicy
    from sqlcli_core.games.catalog import Game

    games = [Game("Pong")]
    policies = [("random (epsilon 1)", RandomPolicy(games), 1.0)]
    if not args.no_network:
        policies.append(("dqn network (epsilon 0.001)", NetworkPolicy(games), 0.001))
    baseline_steps = 2000
    rows = [{"what": "gymnasium ALE/Pong-v5, 1 env, random", "env_steps_per_s": round(gym_baseline(baseline_steps), 1)}]
    print(json.dumps(rows[-1]), flush=True)
    for label, policy, epsilon in policies:
        for n in (int(x) for x in args.num_envs.split(",")):
            for t in (int(x) for x in args.threads.split(",")):
                if t > n:
                    continue
                row = {"what": f"sql eval loop, {label}", "num_envs": n, "threads": t,
                       **ours(policy, n, t, args.steps, epsilon)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    rows.append({"what": "gymnasium ALE/Pong-v5, 1 env, random (again)",
                 "env_steps_per_s": round(gym_baseline(baseline_steps), 1)})
    print(json.dumps(rows[-1]), flush=True)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

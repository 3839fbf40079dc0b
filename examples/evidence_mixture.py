"""Experiment 1c (docs/results.md): a Freeway mixture where copying the majority is wrong and the rewards say so.

    python examples/evidence_mixture.py [--root sql-evidence-mixture] [--quick]

Data: two Freeway runs of equal length (Freeway's episodes all last 2,048 steps, so equal episodes): run 1 from
an UP-majority behaviour (`pattern:1`, epsilon 0.1), run 2 from a NOOP-majority one (`pattern:0`, epsilon 0.5).
At the bottom rows, where every episode starts and every crossing restarts, both behaviours spend their time,
and the NOOP one waits there: BC's majority at the bottom rows is NOOP, and only the rewards (every crossing
scores 1) say UP is better. Methods: Scaled QL at CQL weight 0.05 and 0.01, C51 (weight 0), BC greedy and
sampled, with a target period short enough for value to cross an episode within the budget.

Diagnostic: the sign of Q(UP) - Q(NOOP) on bottom-row states. Those states are made by playing NOOP from a reset
for a random number of steps (the chicken stays on its start row while the traffic moves), so they are
bottom-row states by construction. Writes ROOT/results/mixture.json (and docs/results/ for the full scale).
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
from evidence_common import Lab, episode_scores, parse_args
from evidence_tables import mixture_markdown

GAME = "Freeway"
BEHAVIOURS = {1: ("pattern:1", 0.1), 2: ("pattern:0", 0.5)}  # run -> (policy, epsilon): UP- and NOOP-majority
ARMS = {"scaled-ql": ("--method", "scaled-ql"), "scaled-ql-a0.01": ("--method", "scaled-ql", "--alpha", 0.01),
        "c51": ("--method", "c51"), "bc": ("--method", "bc")}
FULL_STEPS, QUICK_STEPS = 30_000, 8
TARGET_PERIOD = 250  # 120 copies in 30k steps: value crosses a 2,048-step episode (n-step 3) within the budget


def make_mixture(lab: Lab) -> object:
    """Collect both behaviours into their own roots, then put them side by side as runs 1 and 2 and shard."""
    store = lab.root / "mixture.zarr"
    if store.exists():
        return store
    s = lab.scale
    mixed = lab.root / "mixture-replay" / GAME
    for run, (policy, epsilon) in BEHAVIOURS.items():
        part = lab.root / f"mixture-part{run}"
        lab.sql("collect", "--games", GAME, "--transitions", s.transitions, "--capacity", s.transitions,
                "--policy", policy, "--epsilon", epsilon, "--seed", run, "--out", part)
        mixed.mkdir(parents=True, exist_ok=True)
        if not (mixed / str(run)).exists():
            shutil.move(str(part / GAME / "1"), str(mixed / str(run)))
    lab.sql("shard", lab.root / "mixture-replay", store)
    return store


def bottom_row_states(count: int, seed: int = 0) -> np.ndarray:
    """(count, 4, 84, 84) frame stacks with the chicken on its start row: NOOP from a reset for 0..199 steps."""
    from sqlcli_core.acting.ale_env import AtariGame
    from sqlcli_core.games.catalog import Game

    rng = np.random.default_rng(seed)
    env = AtariGame(Game(GAME), seed=seed)
    states = np.zeros((count, 4, 84, 84), np.uint8)
    try:
        for i in range(count):
            stack = np.zeros((4, 84, 84), np.uint8)
            stack[-1] = env.reset()
            for _ in range(int(rng.integers(0, 200))):
                frame, _, _ = env.step(0)
                stack = np.concatenate([stack[1:], frame[None]])
            states[i] = stack
    finally:
        env.close()
    return states


def up_minus_noop(run_dir, states: np.ndarray) -> dict:
    """Q(UP) - Q(NOOP) (logits for BC) of a run's network on the bottom-row states: mean and share positive."""
    from sqlcli_core.runs.policy import load_policy

    values = np.asarray(load_policy(run_dir).q_values(states, np.zeros(len(states), np.int32)))
    gap = values[:, 1] - values[:, 0]  # Freeway's minimal set: NOOP, UP, DOWN
    return {"mean": float(gap.mean()), "share_positive": float(np.mean(gap > 0)), "states": len(states)}


def run(lab: Lab) -> dict:
    s = lab.scale
    store = make_mixture(lab)
    steps = QUICK_STEPS if lab.quick else FULL_STEPS
    states = bottom_row_states(16 if lab.quick else 256)
    episodes: dict[str, list] = {}
    gaps: dict[str, list] = {}
    for arm, options in ARMS.items():
        for seed in s.seeds:
            run_dir = lab.root / "runs" / f"mixture-{arm}-s{seed}"
            lab.sql("pretrain", *options, "--data", store, "--games", GAME, "--arch", "dqn", "--width", s.method_width,
                    "--projection-dim", round(1024 * s.method_width), "--batch-size", s.batch_size, "--steps", steps,
                    "--target-update-period", min(TARGET_PERIOD, steps), "--seed", seed, "--checkpoint-every", steps,
                    "--log-every", max(1, steps // 12), "--run-dir", run_dir)
            episodes.setdefault(arm, []).append(episode_scores(lab.evaluate(run_dir, games=[GAME], seed=seed)))
            gaps.setdefault(arm, []).append(up_minus_noop(run_dir, states))
            if arm == "bc":
                sampled = lab.evaluate(run_dir, games=[GAME], seed=seed, name="evidence-sample",
                                       extra=("--acting", "sample"))
                episodes.setdefault("bc-sample", []).append(episode_scores(sampled))
    data = {}
    for run_number in BEHAVIOURS:
        data[str(run_number)] = lab.data_returns(GAME, lab.root / "mixture-replay", run=str(run_number)).tolist()
    return {"game": GAME, "behaviours": {str(k): {"policy": p, "epsilon": e} for k, (p, e) in BEHAVIOURS.items()},
            "steps": steps, "target_update_period": min(TARGET_PERIOD, steps), "arms": [*ARMS, "bc-sample"],
            "episodes": {"methods": episodes, "data": data,
                         "random": episode_scores(lab.evaluate(None, games=[GAME], name="freeway"))},
            "up_minus_noop_bottom_rows": gaps}


def main() -> None:
    args = parse_args(__doc__)
    lab = Lab(args.root, args.quick, args.scripted_action, args.records)
    result = run(lab)
    lab.write_result("mixture", result)
    print(mixture_markdown(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The learner check of `sql demo` (and of tests/test_learning_check.py): C51 on mixture data of a fall chain
must come within `BOUND` of Q* and play the optimal return.

A CI-sized learner: a narrow value support (the chain's values lie in [0, 1]), a small dense layer, a high
learning rate and a target copy every 20 steps (600 steps = 30 copies, more than the 12 backups the chain
needs). docs/known-answer.md shows the default settings reach the same answer, more slowly.
"""

from __future__ import annotations

GAME = "Chain-fall-12"
BOUND = 0.05
POLICY = "mixture:0.25"
TRANSITIONS = 6000
PRETRAIN_FLAGS = (
    "--method", "c51", "--n-step", "1", "--arch", "dqn", "--width", "0.25", "--projection-dim", "64",
    "--batch-size", "32", "--lr", "1e-2", "--v-min", "-2", "--v-max", "2", "--target-update-period", "20",
    "--steps", "600", "--log-every", "100",
)


def verdict(result: dict) -> str:
    """'learner check: max Q error 0.03, return 1.00 of optimal 1.00' and whether that passes."""
    passed = (result["max_abs_q_error"] is not None and result["max_abs_q_error"] <= BOUND
              and result["greedy_return"] >= result["optimal_return"])
    return (f"learner check: max Q error {result['max_abs_q_error']:.2f}, return {result['greedy_return']:.2f} of "
            f"optimal {result['optimal_return']:.2f} ({'passed' if passed else 'FAILED'}: bound {BOUND} on "
            f"{result['game']})")

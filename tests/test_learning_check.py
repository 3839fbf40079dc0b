"""The learning check (issue 22): on a known-answer game the learners must reach the exact answers, and the
check must be able to fail.

Data: `sql collect --policy mixture:0.25 --epsilon 0` on fall chains (a quarter of the episodes good, the
rest poor: the wrong action is the majority at the start, so the data's majority, its own return (~0.25) and
the optimum (1) all differ). Runs are real `sql pretrain` subprocesses on a real store, diagnosed against Q*
from value iteration (`sql diagnose`'s library function). Tiny configs, the same code path as any run:
- C51 (= scaled-ql with CQL weight 0), n-step 1: max |Q-hat - Q*| <= 0.05 on the visited (state, action)
  pairs and the optimal return; greedy BC plays the data's majority and misses the optimum;
- three variants pre-trained together with one torso: each reaches the optimum;
- a run stopped and resumed from its checkpoint: still within the bound;
- the failing twins: a broken target update (the target network never copied: `--target-update-period`
  beyond the run) misses the bound, and so does the trained run judged for another discount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sqlcli.main import app

pytestmark = pytest.mark.slow

BOUND = 0.05
GAME = "Chain-fall-12"
VARIANTS = ("Chain-fall-12", "Chain-fall-12-low", "Chain-fall-12-mirror")
# A CI-sized learner: narrow support (values lie in [0, 1]), a small dense layer, a target copy every 20 steps.
TINY = ["--arch", "dqn", "--width", "0.25", "--projection-dim", "64", "--batch-size", "32",
        "--v-min", "-2", "--v-max", "2", "--n-step", "1", "--log-every", "100"]
FAST = ["--lr", "1e-2", "--target-update-period", "20"]


def _pretrain(store, run_dir, games, *extra):
    cmd = [sys.executable, "-m", "sqlcli.main", "pretrain", "--data", str(store), "--run-dir", str(run_dir),
           "--games", ",".join(games), *TINY, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SQL_PROGRESS_SECONDS": "3600"})


def _finish(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning-check")
    runner = CliRunner()
    for game in VARIANTS:
        result = runner.invoke(app, ["collect", "--games", game, "--policy", "mixture:0.25", "--epsilon", "0",
                                     "--transitions", "6000", "--capacity", "20000", "--out", str(root / "data")])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["shard", str(root / "data"), str(root / "store")])
    assert result.exit_code == 0, result.output
    store = root / "store"
    # Three at a time: each process is partly serial (Python, the sampler), so a group keeps two cores busy;
    # the resumed run's second half goes with the second group. BC needs a gentler step to settle on the 60/40
    # majority at the start; the broken twin's error cannot shrink however long it runs.
    first = [
        ("c51", [GAME], "--method", "c51", "--steps", "600", *FAST),
        ("bc", [GAME], "--method", "bc", "--steps", "400", "--lr", "1e-3"),
        ("resumed", [GAME], "--method", "scaled-ql", "--alpha", "0", "--steps", "300", *FAST),
    ]
    second = [
        ("variants", VARIANTS, "--method", "c51", "--steps", "800", *FAST),
        ("broken-target", [GAME], "--method", "c51", "--steps", "100", "--lr", "1e-2",
         "--target-update-period", "100000"),
        # continue the stopped run from its last checkpoint (300) to 600 steps: the same command, a longer --steps
        ("resumed", [GAME], "--method", "scaled-ql", "--alpha", "0", "--steps", "600", *FAST),
    ]
    for group in (first, second):
        procs = [_pretrain(store, root / name, games, *extra) for name, games, *extra in group]
        for proc in procs:
            _finish(proc)
    return root


def _diagnose(run_dir, game=GAME, gamma=None):
    from sqlcli_core.analysis.diagnose import diagnose
    from sqlcli_core.runs.policy import load_policy

    return diagnose(load_policy(run_dir), game, gamma=gamma)


def test_c51_reaches_q_star_and_the_optimum_while_bc_plays_the_majority(runs):
    c51 = _diagnose(runs / "c51")
    assert c51["max_abs_q_error"] <= BOUND, c51["max_abs_q_error"]
    assert c51["greedy_return"] == c51["optimal_return"] == 1.0
    assert c51["greedy_action_agreement"] == 1.0
    assert 0.15 < c51["data_return"] < 0.35  # the data's own return: far from the optimum

    bc = _diagnose(runs / "bc")
    assert bc["max_abs_q_error"] is None  # no action values: agreement and return only
    # at the start the data's majority is the wrong action ("other"): greedy BC plays it and falls at once
    assert bc["states"][0]["data_majority"] == 1 and 1 not in bc["states"][0]["optimal_actions"]
    assert bc["states"][0]["greedy"] == 1
    assert bc["greedy_return"] == 0.0 < bc["optimal_return"]


def test_the_cli_prints_the_acceptance_keys(runs):
    result = CliRunner().invoke(app, ["diagnose", str(runs / "c51"), "--game", GAME, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("max_abs_q_error", "mean_abs_q_error", "greedy_action_agreement", "greedy_return",
                "optimal_return", "data_return"):
        assert key in summary
    assert summary["max_abs_q_error"] == pytest.approx(_diagnose(runs / "c51")["max_abs_q_error"])
    assert "learner check: max Q error" in result.stderr


def test_three_variants_pretrained_together_all_reach_the_optimum(runs):
    for game in VARIANTS:
        result = _diagnose(runs / "variants", game)
        assert result["greedy_return"] == result["optimal_return"] == 1.0, game
        assert result["greedy_action_agreement"] == 1.0, game


def test_a_stopped_and_resumed_run_still_learns(runs):
    record = json.loads((runs / "resumed" / "run.json").read_text())
    assert record["history"], "the second command should have resumed the run"
    result = _diagnose(runs / "resumed")
    assert result["max_abs_q_error"] <= BOUND and result["greedy_return"] == 1.0


def test_the_check_can_fail(runs):
    broken = _diagnose(runs / "broken-target")  # the target network is never updated
    assert broken["max_abs_q_error"] > BOUND
    wrong_discount = _diagnose(runs / "c51", gamma=0.9)  # a run of gamma 0.99 judged as if it had learned 0.9
    assert wrong_discount["max_abs_q_error"] > BOUND


def test_diagnose_refuses_what_it_cannot_answer(runs, tmp_path):
    runner = CliRunner()
    atari = runner.invoke(app, ["diagnose", str(runs / "c51"), "--game", "Pong"])
    assert atari.exit_code == 2 and "Pong has no known answer" in atari.output
    other = runner.invoke(app, ["diagnose", str(runs / "c51"), "--game", "Chain-stay-12"])
    assert other.exit_code == 2 and "not among 1 games" in other.output
    missing = runner.invoke(app, ["diagnose", str(tmp_path / "nope"), "--game", GAME])
    assert missing.exit_code == 2

"""The README's main command, `sql demo`, run as written (into a temporary directory).

Beyond "it ran": the greedy policy pre-trained on the collected data must beat that data's own Freeway
returns (the behaviour policy is epsilon-greedy around UP, so holding UP is the better policy the data
points to), the report must be built from the eval files the runs wrote, and a re-run must do nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "sql-demo"
    proc = subprocess.run([sys.executable, "-m", "sqlcli.main", "demo", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_learns_better_than_its_data_and_reports(demo):
    out, summary = demo
    log = json.loads((out / "data" / "Freeway" / "1" / "collect_log.json").read_text())
    data_returns = [e["return"] for e in log["episodes"] if e["terminal"]]
    assert data_returns, "the demo's data should hold complete Freeway episodes"
    for run in summary["runs"]:
        scores = json.loads((out / "runs" / f"dqn-w{run['width']:g}" / "eval" / "demo.json").read_text())
        assert min(scores["games"]["Freeway"]["scores"]) > max(data_returns)
    random_scores = json.loads((out / "random-policy.json").read_text())["games"]["Freeway"]["scores"]
    assert max(random_scores) < min(data_returns)

    report = json.loads((out / "report" / "scale_report.json").read_text())
    for point in report["points"]:
        evaluated = json.loads(open(point["eval_file"]).read())
        assert point["score"] == pytest.approx(evaluated["aggregates"]["iqm"]["value"])
    scores = {p["score"] for p in report["points"]}
    # equal scores are no finding about size: the report says so instead of fitting a flat line
    assert [f["status"] for f in report["fits"]] == (["indistinguishable"] if len(scores) == 1 else ["exact"])
    for name in ("scale_report.png", "scale_report.md", "scale_report.csv"):
        assert (out / "report" / name).stat().st_size > 0
    script = (out / "demo.sh").read_text().splitlines()
    assert [ln.split()[1] for ln in script if ln.startswith("sql ")] == [
        "collect", "shard", "pretrain", "eval", "pretrain", "eval", "eval", "scale-report",
        "collect", "shard", "pretrain", "diagnose"]


def test_demo_ends_with_a_passing_learner_check(demo):
    """The last step trains C51 on a known-answer game: within 0.05 of Q* and the optimal return."""
    out, summary = demo
    check = summary["learner_check"]
    assert check["max_abs_q_error"] <= 0.05 and check["greedy_return"] == check["optimal_return"] == 1.0
    assert check["line"].startswith("learner check: max Q error ") and "passed" in check["line"]
    assert (out / "learner-check" / "run" / "run.json").exists()


def test_demo_rerun_does_no_work_again(demo):
    out, summary = demo
    proc = subprocess.run([sys.executable, "-m", "sqlcli.main", "demo", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout.strip().splitlines()[-1])
    assert again["store_runs"] == summary["store_runs"]
    for first, second in zip(summary["runs"], again["runs"]):
        assert second["eval"]["episodes_played"] == 0
        assert second["eval"]["aggregates"] == first["eval"]["aggregates"]


def test_demo_refuses_a_single_size():
    proc = subprocess.run([sys.executable, "-m", "sqlcli.main", "demo", "--widths", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --widths needs at least two sizes for the scaling fit (e.g. --widths 0.5,1)"

"""The laptop-scale evidence experiments (examples/evidence_*.py, docs/results.md): their --quick variants run the
whole chain (collect, shard, pretrain with each method, eval, scale-report, both fine-tunings) as a user runs
them, from the script files, in one shared root. Only that the chain runs and writes its records is asserted,
never the scientific outcome (the quick numbers mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evidence")


def run_quick(name: str, root: Path) -> dict:
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"evidence_{name}.py"), "--quick", "--root", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((root / "results" / f"{name}.json").read_text())
    assert record["quick"] is True and record["experiment"] == name
    assert record["commands"] and all(c.startswith("sql ") for c in record["commands"])
    assert {"versions", "machine", "seconds", "scale"} <= set(record)
    assert proc.stdout.startswith("|")  # the Markdown table docs/results.md is made of
    return record


def test_methods_quick(root, monkeypatch):
    record = run_quick("methods", root)
    columns = {"scaled-ql", "c51", "bc", "bc-sample", "dt"}
    assert set(record["human_normalized"]) == {"random", "data"} | columns
    for game in record["games"]:
        assert {"random", "data"} | columns <= set(record["per_game"][game])
        episodes = [seed[game] for seed in record["episodes"]["methods"]["scaled-ql"]]
        assert [len(e) for e in episodes] == [2]  # the run's own evaluation seeds, one episode each
    assert set(record["greedy_agreement_seed0"]) == {"scaled-ql", "c51", "bc"}
    assert (root / "results" / "methods.png").stat().st_size > 0
    # the quick run's evaluation seeds are its own (training seed 0: 1000-1001) and BC was also sampled
    evals = sorted((root / "runs" / "bc-w0.25-s0" / "eval").glob("*.json"))
    assert [p.name for p in evals] == ["evidence-sample.json", "evidence.json"]
    sampled = json.loads(evals[0].read_text())
    assert sampled["policy"]["acting"]["mode"] == "sample" and set(sampled["games"]["Breakout"]["seeds"]) == {1000, 1001}
    # the tables are recomputed from the record alone (what examples/results_tables.py does for the page)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the scripts' neighbour module, as they import it
    from evidence_tables import methods_markdown

    assert methods_markdown(record).splitlines()[0].startswith("| game | random play")


def test_capacity_quick(root, monkeypatch):
    record = run_quick("capacity", root)
    params = [row["parameters"] for row in record["sizes"]]
    assert len(params) == 3 and params == sorted(params) and len(set(params)) == 3
    # A tiny run's score may be non-positive, which the power law refuses: then the refusal is recorded.
    for report in record["scale_report"].values():
        assert "fits" in report or "refused" in report
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the scripts' neighbour module, as they import it
    from evidence_tables import capacity_markdown

    assert len(capacity_markdown(record).splitlines()) >= 5  # recomputed from the record's episodes alone


def test_transfer_quick(root, monkeypatch):
    record = run_quick("transfer", root)
    for kind in ("online", "offline"):
        assert {"pretrained", "scratch"} <= set(record[kind])
    assert record["online"]["pretrained"]["curves"] and record["online"]["pretrained"]["final_episodes"]
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the scripts' neighbour module, as they import it
    from evidence_tables import transfer_markdown

    assert "| final score |" in transfer_markdown(record)  # recomputed from the record alone
    assert (root / "results" / "transfer.png").stat().st_size > 0


def test_mixture_quick(root):
    """The Freeway mixture: two behaviours as runs 1 and 2 of one store, every arm trained and evaluated, and the
    Q(UP) - Q(NOOP) sign read on bottom-row states."""
    record = run_quick("mixture", root)
    assert record["arms"] == ["scaled-ql", "scaled-ql-a0.01", "c51", "bc", "bc-sample"]
    assert set(record["up_minus_noop_bottom_rows"]) == {"scaled-ql", "scaled-ql-a0.01", "c51", "bc"}
    assert sorted(p.name for p in (root / "mixture-replay" / "Freeway").iterdir()) == ["1", "2"]
    logs = [json.loads((root / "mixture-replay" / "Freeway" / r / "collect_log.json").read_text()) for r in "12"]
    assert [(log["policy"]["pattern"], log["policy"]["epsilon"]) for log in logs] == [([1], 0.1), ([0], 0.5)]


def test_chains_methods_quick(root, monkeypatch):
    """examples/evidence_chains.py, the experiment behind docs/results.md section 0 (methods part, --quick)."""
    chains = root / "chains"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "evidence_chains.py"), "--quick", "--root", str(chains),
                           "--only", "methods"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((chains / "results" / "methods.json").read_text())
    assert record["quick"] is True and record["commands"] and all(c.startswith("sql ") for c in record["commands"])
    methods = {"scaled-ql-a0.05", "scaled-ql-a0.01", "c51", "bc", "bc-sample", "dt"}
    game = record["games"]["Chain-fall-12"]
    assert set(record["methods"]) == set(game["methods"]) == methods
    # every run played by `sql eval` on evaluation seeds of its own (training seed 0: 1000-1001), one episode each
    assert record["eval_seeds"] == {"0": "1000-1001"}
    assert all([len(episodes) for episodes in game["methods"][m]] == [2] for m in methods)
    # the data is mixture:0.25 on a fall chain: a good episode returns 1, a poor one goes wrong once and returns
    # 0, so the data's mean return is 0.25 up to binomial noise (4 standard deviations here)
    data = game["data"]
    assert set(data) <= {0.0, 1.0} and abs(sum(data) / len(data) - 0.25) <= 4 * (0.25 * 0.75 / len(data)) ** 0.5
    assert game["reference"] == {"random": 0.5 ** 12, "optimal": 1.0}  # the closed forms: 12 advances in a row
    monkeypatch.syspath_prepend(str(EXAMPLES))
    from evidence_tables import chain_methods_markdown

    assert "| data (behaviour) |" in chain_methods_markdown(record)

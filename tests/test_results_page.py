"""docs/results.md against its committed records (docs/results/*.json): every generated table on the page is what
examples/results_tables.py recomputes from its record (examples/evidence_tables.py, the statistics of `sql eval`),
and a changed number or a missing record is caught. Also the IQM that release 0.2's page got wrong, re-derived."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def results_tables(monkeypatch):
    """examples/results_tables.py as its script sees its neighbours (examples/ on the path, for this test only)."""
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    return importlib.import_module("results_tables")


def test_the_pages_tables_match_the_committed_records(results_tables):
    assert results_tables.record_names(), "docs/results/ holds no record"
    assert set(results_tables.page_tables()) == set(results_tables.record_names())
    assert results_tables.differences() == []


def test_a_changed_number_or_a_missing_record_is_caught(results_tables, tmp_path):
    page = tmp_path / "results.md"
    records = tmp_path / "results"
    shutil.copytree(REPO / "docs" / "results", records)
    text = results_tables.PAGE.read_text()
    name, body = next(iter(results_tables.page_tables().items()))
    row = next(line for line in body.splitlines() if line.startswith("| ") and any(c.isdigit() for c in line))
    digit = next(c for c in row if c.isdigit())
    changed = row.replace(digit, str((int(digit) + 1) % 10), 1)
    page.write_text(text.replace(row, changed, 1))
    (problem,) = results_tables.differences(page, records)
    assert problem.startswith(f"table {name} differs from its record")
    page.write_text(text)
    assert results_tables.differences(page, records) == []
    (records / f"{name}.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"names record {name}"):
        results_tables.differences(page, records)


def test_release_02_iqm_recomputed_from_its_table(results_tables):
    """The 0.2 page's Scaled QL per-game means (every seed and size played the same episodes): the IQM is 5.8%
    over one run per game and 6.0% over the 3 seeds x 6 games matrix, not the 5.7% it printed."""
    from sqlcli_core.evaluation.aggregates import aggregate
    from sqlcli_core.games.catalog import Game

    means = {"Freeway": 21.0, "Breakout": 0.0, "DemonAttack": 440.0, "Assault": 0.0, "ChopperCommand": 750.0,
             "Centipede": 3505.0}
    row = np.array([[Game(g).human_normalized(v) for g, v in means.items()]])
    assert round(100 * aggregate(row, "iqm"), 1) == 5.8
    assert round(100 * aggregate(np.repeat(row, 3, axis=0), "iqm"), 1) == 6.0
    assert "5.8% over one run per game and 6.0% over the 3 seeds x 6 games" in results_tables.PAGE.read_text()


def _chain_record(data, per_method):
    methods = list(per_method)
    return {"experiment": "chain-methods", "methods": methods, "seeds": [0, 1], "scale": {"eval_episodes": 2},
            "data_policy": {"policy": "mixture:0.25"},
            "games": {"Chain-fall-12": {"reference": {"random": 0.0, "optimal": 1.0}, "data": data,
                                        "methods": per_method}}}


def test_chain_methods_verdict_and_zero_width_from_a_hand_made_record(results_tables):
    """Section 0's table: Scaled QL is marked above the data and both BC only when its interval clears theirs;
    a policy whose every episode scored the same has a zero-width interval, and the page says so."""
    tables = importlib.import_module("evidence_tables")
    optimal = [[1.0, 1.0], [1.0, 1.0]]
    record = _chain_record([0.0, 0.0, 1.0, 0.0] * 50, {"scaled-ql-a0.05": optimal, "bc": [[0.0, 0.0], [0.0, 0.0]],
                                                        "bc-sample": [[0.0, 1.0], [0.0, 0.0]]})
    rows = tables.summarize_chain_methods(record)["Chain-fall-12"]
    assert rows["data"]["mean"] == 0.25 and rows["scaled-ql-a0.05"]["ci95"] == [1.0, 1.0]
    assert rows["scaled-ql-a0.05"]["above_data"] and rows["scaled-ql-a0.05"]["above_bc"]
    assert not rows["bc"]["above_data"]
    text = tables.chain_methods_markdown(record)
    assert "| Scaled QL (CQL weight 0.05) | greedy | 1.00 [1.00, 1.00] | zero | yes | yes |" in text
    assert "intervals not overlapping: yes." in text
    # one sampled-BC seed that plays the optimum in both episodes: the intervals now touch, so no verdict
    record["games"]["Chain-fall-12"]["methods"]["bc-sample"] = [[1.0, 1.0], [0.0, 0.0]]
    assert "intervals not overlapping: no." in tables.chain_methods_markdown(record)


def test_steps_to_optimum_is_the_first_step_count_at_or_above_the_bar(results_tables):
    tables = importlib.import_module("evidence_tables")
    per_step = {"25": [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], "50": [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]],
                "100": [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]}
    assert tables.steps_to_optimum(per_step, [25, 50, 100]) == [100, 25, None]


def test_section_0_prose_follows_the_committed_chain_records(results_tables):
    """The short answer's claims are what the records give: on Chain-fall-12 Scaled QL (CQL 0.05) is above the
    data and both BC with no overlap, on Chain-stay-12 too; the offline transfer's returns tie."""
    import json

    tables = importlib.import_module("evidence_tables")
    records = results_tables.RECORDS / "chains"
    summary = tables.summarize_chain_methods(json.loads((records / "methods.json").read_text()))
    fall, stay = summary["Chain-fall-12"]["scaled-ql-a0.05"], summary["Chain-stay-12"]["scaled-ql-a0.05"]
    assert fall["above_data"] and fall["above_bc"]
    assert stay["above_data"] and stay["above_bc"]
    page = results_tables.PAGE.read_text()
    assert "beats both the data and BC (greedy and sampled) with non-overlapping intervals on Chain-fall-12" in page
    assert "Chain-stay-12 too (5 training seeds;" in page
    transfer = json.loads((records / "transfer.json").read_text())
    first = str(transfer["grid"][0])
    assert all(min(run) == transfer["reference"]["optimal"] for init in ("pretrained", "scratch")
               for run in transfer["curves"][init][first])
    assert f"Both arms play the optimal return from the first evaluation ({first}" in page


def test_chain_records_hold_ten_episodes_per_run_on_seeds_of_their_own(results_tables):
    """Every run of section 0 is played on 10 evaluation episodes, no two training seeds share an evaluation seed,
    and each record lists the `sql eval` commands that played them."""
    import json

    records = results_tables.RECORDS / "chains"
    methods = json.loads((records / "methods.json").read_text())
    seeds = list(methods["eval_seeds"].values())
    assert len(set(seeds)) == len(seeds) == len(methods["seeds"]) >= 3
    for game in methods["games"].values():
        for runs in game["methods"].values():
            assert [len(r) for r in runs] == [10] * len(seeds)
    for seed in seeds:
        assert any(f"--seeds {seed} --episodes 1" in c for c in methods["commands"] if c.startswith("sql eval"))
    for name in ("transfer", "online"):
        record = json.loads((records / f"{name}.json").read_text())
        for curve in record["curves"].values():
            assert all([len(r) for r in runs] == [10] * len(record["seeds"]) for runs in curve.values())

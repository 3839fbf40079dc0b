"""`sql scale-report` on synthetic run directories with a known power law.

The runs are real directories laid out as docs/architecture.md says (RUN/run.json, RUN/eval/*.json); the
fits are checked against numpy.polyfit on the log-log values and against hand-computed cases.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.analysis import power_law
from sqlcli_core.analysis.scale_report import arch_family, composition_from_store, total_parameters
from sqlcli_core.analysis.scale_report_output import POINT_COLUMNS
from sqlcli_core.ranges import format_ranges

runner = CliRunner()


def make_store(root: Path, composition: str) -> Path:
    """A Zarr store (the real store API) whose Pong and Breakout run 1 hold `composition`'s checkpoints."""
    from sqlcli_core.data import fetch, store

    path = root / "stores" / f"{composition.replace(':', '_')}.zarr"
    if not path.exists():
        zroot = store.create_store(path)
        for game in ("Pong", "Breakout"):
            group = store.ensure_run_group(zroot, game, 1)
            records = [{"checkpoint": c} for c in fetch.subset_checkpoints(composition)]
            group.attrs["sql_run"] = {**store.run_meta(group), "checkpoints": records}
    return path


def make_run(root: Path, name: str, params: int, score: float, *, arch: str = "resnet18", width: float = 1.0,
             composition: str | None = "sub-optimal", ci_halfwidth: float = 0.05, eval_name: str = "final",
             created: str = "2026-01-01T00:00:00+00:00", with_eval: bool = True) -> Path:
    """A run directory laid out as `sql pretrain` writes it, whose eval aggregates all equal `score`.

    composition: a fetch subset (sub-optimal, near-optimal, last:N) held by the run's data store, or None
    for a store path that does not exist.
    """
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    heads = params // 4
    parts = {"torso": params - heads - 100, "spatial_embedding": 60, "projection": 40, "heads": heads}
    network = {"arch": arch, "width": width, "num_atoms": 51, "v_min": -10.0, "v_max": 10.0}
    data = str(make_store(root, composition)) if composition else str(root / "gone.zarr")
    # The record run_record.prepare_run_dir writes, with PretrainConfig.to_dict() as config.
    config = {"data": data, "run_dir": str(run), "games": "Pong,Breakout", "network": network,
              "learner": {"learning_rate": 2e-4, "alpha": 0.05}, "batch_size": 512, "steps": 1000, "seed": 0}
    (run / "run.json").write_text(json.dumps({
        "kind": "sql-run", "format_version": 1,
        "identity": {"network": network, "games": ["Pong", "Breakout"], "num_actions": [6, 4]},
        "config": config, "seed": 0, "parameter_counts": parts, "num_parameters": params,
        "provenance": {"command": "pretrain", "config": config, "seed": 0}, "history": [],
    }))
    if with_eval:
        add_eval(run, eval_name, score, ci_halfwidth, created)
    return run


def add_eval(run: Path, eval_name: str, score: float, ci_halfwidth: float = 0.05,
             created: str = "2026-01-01T00:00:00+00:00", games: tuple[str, ...] = ("Pong",),
             deviates: bool = False) -> Path:
    agg = {"value": score, "ci95": [score - ci_halfwidth, score + ci_halfwidth]}
    path = run / "eval" / f"{eval_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "provenance": {"command": "eval", "seed": 0, "created": created},
        "protocol": {"name": "dopamine", "deviates_from_protocol": deviates},
        "policy": {"kind": "checkpoint", "run": str(run), "step": 1000, "arch": "resnet", "num_params": None},
        "games": {"Pong": {"scores": [1.0], "seeds": [0], "mean": 1.0, "std": 0.0, "human_normalized": score}},
        "aggregates": {"iqm": agg, "median": {"value": score * 2, "ci95": [score * 2 - ci_halfwidth, score * 2 + ci_halfwidth]}, "mean": agg},
        "aggregate_method": {"games": games},
        "excluded_from_aggregates": [], "notes": [],
    }))
    return path


def power_law_runs(root: Path, a: float, b: float, n: int, noise: float, seed: int,
                   composition: str = "sub-optimal") -> tuple[list[Path], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = np.round(np.geomspace(1e6, 1e8, n)).astype(np.int64)
    scores = a * params.astype(float) ** b * np.exp(rng.normal(0.0, noise, n))
    runs = [make_run(root, f"{composition}-{i}", int(p), float(s), composition=composition)
            for i, (p, s) in enumerate(zip(params, scores))]
    return runs, params, scores


def cli(*args: str):
    return runner.invoke(app, ["scale-report", *map(str, args)])


def err(res) -> str:
    """stderr with rich's line wrapping undone (the console wraps at 80 columns off a terminal)."""
    return " ".join(res.stderr.split())


def test_recovers_a_known_power_law(tmp_path):
    a_true, b_true = 0.004, 0.32
    runs, params, scores = power_law_runs(tmp_path / "runs", a_true, b_true, n=8, noise=0.05, seed=1)
    out = tmp_path / "report"
    res = cli(*runs, "--out", out, "--json", "--bootstrap", "4000")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    (fit,) = summary["fits"]
    assert fit["status"] == "fit" and fit["group"] == {"method": "scaled-ql(alpha=0.05)",
                                                       "composition": "sub-optimal"}
    # Independent reference: numpy.polyfit on the log-log values (total params = sum of the parts).
    slope, intercept = np.polyfit(np.log(params), np.log(scores), 1)
    assert fit["b"] == pytest.approx(slope, rel=1e-9)
    assert fit["a"] == pytest.approx(np.exp(intercept), rel=1e-9)
    assert abs(fit["b"] - b_true) < 0.05
    lo, hi = fit["b_ci95"]
    assert lo < b_true < hi and lo < fit["b"] < hi
    assert hi - lo < 0.15
    assert fit["a_ci95"][0] < fit["a"] < fit["a_ci95"][1]

    files = summary["files"]
    assert Path(files["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(files["json"]).read_text())
    assert report["provenance"]["command"] == "scale-report" and report["provenance"]["seed"] == 0
    assert report["provenance"]["config"]["metric"] == "iqm"
    lines = Path(files["csv"]).read_text().splitlines()
    assert lines[0] == ",".join(POINT_COLUMNS)  # plain CSV; the provenance is in the JSON beside it
    rows = list(csv.DictReader(lines))
    assert [int(r["params"]) for r in rows] == params.tolist()
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-12)
    assert all(r["in_fit"] == "True" for r in rows)
    md = Path(files["md"]).read_text()
    assert f"{fit['b']:.4g}" in md and "| sub-optimal-0 |" in md


def test_bootstrap_interval_matches_the_ols_standard_error():
    """With many homoscedastic points, the pairs-bootstrap 95% interval ~ b +- 1.96 * OLS standard error."""
    rng = np.random.default_rng(7)
    params = np.geomspace(1e5, 1e9, 60)
    scores = 0.01 * params ** 0.25 * np.exp(rng.normal(0, 0.1, params.size))
    (lo, hi), n_used = power_law.bootstrap_power_law(params, scores, 20_000, seed=3)[1:]
    x, y = np.log(params), np.log(scores)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    se = np.sqrt(resid @ resid / (x.size - 2) / np.sum((x - x.mean()) ** 2))
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.2)
    assert lo < slope < hi
    assert n_used == 20_000


def test_bootstrap_drops_resamples_without_a_slope():
    # 3 points: a resample is degenerate when it draws one point 3 times: P = 3 / 27 = 1/9.
    params, scores = np.array([1e6, 1e7, 1e8]), np.array([0.1, 0.2, 0.5])
    _, (lo, hi), used = power_law.bootstrap_power_law(params, scores, 9000, seed=0)
    assert used == pytest.approx(9000 * 8 / 9, rel=0.03)
    pair_slopes = [np.log(scores[j] / scores[i]) / np.log(params[j] / params[i])
                   for i in range(3) for j in range(i + 1, 3)]
    assert min(pair_slopes) - 1e-9 <= lo <= hi <= max(pair_slopes) + 1e-9


def test_two_points_fit_exactly_without_interval(tmp_path):
    runs = [make_run(tmp_path, "small", 1_000_000, 0.2), make_run(tmp_path, "big", 16_000_000, 0.8)]
    res = cli(*runs, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    (fit,) = json.loads(res.stdout.strip().splitlines()[-1])["fits"]
    assert fit["status"] == "exact" and fit["b_ci95"] is None
    assert fit["b"] == pytest.approx(0.5)          # log(4) / log(16), by hand
    assert fit["a"] == pytest.approx(0.2 / 1000.0)  # 0.2 = a * 1e6 ** 0.5
    assert "no interval" in err(res)


def test_identical_scores_are_reported_as_indistinguishable_not_fitted(tmp_path):
    """The demo's case: two sizes with the same score. A line through them (b = 8.8e-18, interval 32.5% ..
    32.5%) is no result; the report says the sizes could not be told apart."""
    runs = [make_run(tmp_path, "small", 1_000_000, 0.325), make_run(tmp_path, "big", 4_000_000, 0.325),
            make_run(tmp_path, "bigger", 16_000_000, 0.325)]
    res = cli(*runs, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    (fit,) = json.loads(res.stdout.strip().splitlines()[-1])["fits"]
    assert fit["status"] == "indistinguishable" and fit["b"] is None and fit["b_ci95"] is None
    assert "could not be told apart" in err(res)
    assert "indistinguishable" in (tmp_path / "out" / "scale_report.md").read_text()


def test_one_point_is_a_clear_error_and_writes_nothing(tmp_path):
    run = make_run(tmp_path, "only", 1_000_000, 0.3)
    out = tmp_path / "out"
    res = cli(run, "--out", out)
    assert res.exit_code == 2
    assert "too few points" in err(res) and "at least 2 runs" in err(res)
    assert not out.exists()


def test_runs_without_eval_results_are_named(tmp_path):
    good = make_run(tmp_path, "good", 1_000_000, 0.3)
    bare = make_run(tmp_path, "bare", 2_000_000, 0.3, with_eval=False)
    res = cli(good, bare, "--out", tmp_path / "out")
    assert res.exit_code == 3
    assert "no eval results in" in err(res) and str(bare) in err(res) and "sql eval" in err(res)
    assert str(good) not in err(res).split("(")[0]
    not_a_run = tmp_path / "empty"
    (not_a_run / "eval").mkdir(parents=True)
    add_eval(not_a_run, "final", 0.1)
    res = cli(good, not_a_run, "--out", tmp_path / "out")
    assert res.exit_code == 3 and "not run directories (no run.json)" in err(res) and str(not_a_run) in err(res)


def test_non_positive_scores_are_left_out_and_named(tmp_path):
    runs, params, scores = power_law_runs(tmp_path, 0.01, 0.3, n=5, noise=0.02, seed=2)
    tiny = make_run(tmp_path, "tiny", 100_000, -0.03)
    res = cli(tiny, *runs, "--out", tmp_path / "out", "--json", "--bootstrap", "1000")
    assert res.exit_code == 0, res.output
    (fit,) = json.loads(res.stdout.strip().splitlines()[-1])["fits"]
    assert [d["run"] for d in fit["left_out"]] == ["tiny"] and "<= 0" in fit["left_out"][0]["reason"]
    assert "tiny" not in fit["used"] and len(fit["used"]) == 5
    assert fit["b"] == pytest.approx(np.polyfit(np.log(params), np.log(scores), 1)[0], rel=1e-9)
    assert "left tiny out of the fit" in err(res)
    table = (tmp_path / "out" / "scale_report.csv").read_text()
    assert table.splitlines()[0].startswith("run,arch,")  # plain CSV: the header first, no comment line
    rows = list(csv.DictReader(table.splitlines()))
    assert {r["run"]: r["in_fit"] for r in rows}["tiny"] == "False"
    assert json.loads((tmp_path / "out" / "scale_report.json").read_text())["provenance"]["command"] == "scale-report"


def test_all_scores_non_positive_is_an_error(tmp_path):
    runs = [make_run(tmp_path, f"r{i}", 10 ** (6 + i), -0.1 * (i + 1)) for i in range(3)]
    res = cli(*runs, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "no point with a positive score" in err(res)


def test_groups_by_composition_with_separate_exponents(tmp_path):
    sub, p1, s1 = power_law_runs(tmp_path, 0.01, 0.2, n=4, noise=0.01, seed=3, composition="sub-optimal")
    near, p2, s2 = power_law_runs(tmp_path, 0.002, 0.4, n=4, noise=0.01, seed=4, composition="near-optimal")
    res = cli(*sub, *near, "--out", tmp_path / "out", "--json", "--bootstrap", "500")
    assert res.exit_code == 0, res.output
    fits = {f["group"]["composition"]: f for f in json.loads(res.stdout.strip().splitlines()[-1])["fits"]}
    assert fits["sub-optimal"]["b"] == pytest.approx(np.polyfit(np.log(p1), np.log(s1), 1)[0], rel=1e-9)
    assert fits["near-optimal"]["b"] == pytest.approx(np.polyfit(np.log(p2), np.log(s2), 1)[0], rel=1e-9)
    # One group with a single point among fittable groups: reported, not fatal.
    lone = make_run(tmp_path, "lone", 5_000_000, 0.4, composition="last:5")
    res = cli(*sub, lone, "--out", tmp_path / "out2", "--json", "--bootstrap", "500")
    assert res.exit_code == 0, res.output
    statuses = {f["group"]["composition"]: f["status"] for f in json.loads(res.stdout.strip().splitlines()[-1])["fits"]}
    assert statuses == {"sub-optimal": "fit", "checkpoints 46-50": "none"}
    rows = list(csv.DictReader((tmp_path / "out2" / "scale_report.csv").read_text().splitlines()))
    assert {r["run"]: r["in_fit"] for r in rows}["lone"] == "False"
    assert "no fit: 1 point(s)" in (tmp_path / "out2" / "scale_report.md").read_text()


def test_eval_file_choice_newest_or_named(tmp_path):
    runs = []
    for i, params in enumerate((1_000_000, 4_000_000, 16_000_000)):
        run = make_run(tmp_path, f"r{i}", params, 0.1 * 2 ** i, eval_name="b-newer",
                       created="2026-03-01T00:00:00+00:00")
        # Older by provenance.created but written later (newer mtime): created wins.
        add_eval(run, "a-older", 0.1 * 4 ** i, created="2026-02-01T00:00:00+00:00")
        os.utime(run / "eval" / "b-newer.json", (1, 1))
        runs.append(run)
    res = cli(*runs, "--out", tmp_path / "o1", "--json", "--bootstrap", "200")
    (fit,) = json.loads(res.stdout.strip().splitlines()[-1])["fits"]
    assert fit["b"] == pytest.approx(np.log(2) / np.log(4))
    res = cli(*runs, "--out", tmp_path / "o2", "--json", "--eval-name", "a-older", "--bootstrap", "200")
    (fit,) = json.loads(res.stdout.strip().splitlines()[-1])["fits"]
    assert fit["b"] == pytest.approx(1.0)
    res = cli(*runs, "--out", tmp_path / "o3", "--eval-name", "nope")
    assert res.exit_code == 3 and "a-older, b-newer" in err(res)


def test_metric_option_and_bad_options(tmp_path):
    runs = [make_run(tmp_path, f"r{i}", 10 ** (6 + i), 0.1 * 2 ** i) for i in range(3)]
    res = cli(*runs, "--out", tmp_path / "o", "--json", "--metric", "median", "--bootstrap", "200")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert [p["score"] for p in summary["points"]] == pytest.approx([0.2, 0.4, 0.8])  # the fixture's median
    assert summary["fits"][0]["b"] == pytest.approx(np.log(2) / np.log(10))
    res = cli(*runs, "--out", tmp_path / "o", "--metric", "max")
    assert res.exit_code == 2 and "'max' is not one of 'iqm', 'median', 'mean'" in err(res)
    res = cli(*runs, "--out", tmp_path / "o", "--json", "--group-by", "", "--bootstrap", "200")
    assert json.loads(res.stdout.strip().splitlines()[-1])["fits"][0]["group"] == {}
    res = cli(*runs, "--out", tmp_path / "o", "--group-by", "method,colour")
    assert res.exit_code == 2 and "--group-by" in err(res)


@pytest.mark.parametrize("aggregate, words", [
    ({"value": 0.2, "ci95": "x"}, 'aggregates.iqm.ci95 is "x", not an interval [low, high] of two ordered'),
    ({"value": 0.2, "ci95": [0.3, 0.1]}, "aggregates.iqm.ci95 is [0.3, 0.1], not an interval"),
    ({"value": 0.2, "ci95": [0.1]}, "aggregates.iqm.ci95 is [0.1], not an interval"),
    ({"value": 0.2}, "aggregates.iqm.ci95 is null, not an interval"),
    ({"value": "0.2", "ci95": [0.1, 0.3]}, 'aggregates.iqm.value is "0.2", not a finite number'),
    ("0.2", 'aggregates.iqm is "0.2", not an object {value, ci95}'),
])
def test_a_malformed_eval_file_is_exit_3_naming_file_and_key(tmp_path, aggregate, words):
    """A point is fitted and drawn with its error bar, or the report refuses: never a dropped error bar."""
    runs = [make_run(tmp_path, f"r{i}", 10 ** (6 + i), 0.1 * 2 ** i) for i in range(3)]
    path = runs[1] / "eval" / "final.json"
    record = json.loads(path.read_text())
    record["aggregates"]["iqm"] = aggregate
    path.write_text(json.dumps(record))
    res = cli(*runs, "--out", tmp_path / "o")
    assert res.exit_code == 3, res.output
    assert err(res).startswith(f"error: {path}: {words}") and len(res.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "o").exists()


def test_arch_family_and_parameter_totals():
    assert arch_family("resnet101") == "resnet"
    assert arch_family("impala-4x") == "impala"
    assert arch_family("dqn") == "dqn"
    assert total_parameters({"torso": 10, "heads": 5}) == (15, {"torso": 10, "heads": 5})
    assert total_parameters({"torso": 10, "heads": 5, "total": 15})[0] == 15
    assert total_parameters(42) == (42, {})
    assert total_parameters(None) is None


def test_reads_run_directories_written_by_the_checkpoint_module(tmp_path):
    """run.json from the real writer (run_record.prepare_run_dir) with real parameter counts."""
    from sqlcli_core.networks.config import NetworkConfig
    from sqlcli_core.networks.network import parameter_table
    from sqlcli_core.runs import run_record
    from sqlcli_core.training.configs import PretrainConfig

    games = ["Pong", "Breakout"]
    data = make_store(tmp_path, "near-optimal")
    runs, totals = [], []
    for i, width in enumerate((0.25, 0.5, 1.0)):
        config = NetworkConfig(arch="dqn", width=width, projection_dim=64)
        table = parameter_table(config, [6, 4])
        identity = run_record.run_identity(config.to_dict(), games, table["num_actions"])
        run = tmp_path / f"dqn-w{width}"
        pretrain = PretrainConfig(data=str(data), run_dir=str(run), games="Pong,Breakout", network=config)
        run_record.prepare_run_dir(run, identity=identity, config=pretrain.to_dict(),
                                   parameter_counts=table["parts"], seed=0)
        add_eval(run, "final", 0.1 * (i + 1))
        runs.append(run)
        totals.append(table["total"])
    res = cli(*runs, "--out", tmp_path / "out", "--json", "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert [p["params"] for p in summary["points"]] == totals
    assert [p["arch"] for p in summary["points"]] == ["dqn"] * 3
    assert summary["fits"][0]["group"] == {"method": "scaled-ql(alpha=0.05)", "composition": "near-optimal"}
    assert summary["fits"][0]["b"] == pytest.approx(np.polyfit(np.log(totals), np.log([0.1, 0.2, 0.3]), 1)[0])


def test_decision_transformer_runs_are_their_own_method(tmp_path):
    """dt runs from the real writer (pretrain's config, the DT's own parameter table) next to scaled-ql runs."""
    from sqlcli_core.games.catalog import Game
    from sqlcli_core.networks import decision_transformer as dt
    from sqlcli_core.networks.config import NetworkConfig
    from sqlcli_core.networks.network import parameter_table
    from sqlcli_core.runs import run_record
    from sqlcli_core.training.configs import LearnerConfig, PretrainConfig

    games = ["Pong", "Breakout"]
    data = make_store(tmp_path, "near-optimal")
    runs, dt_totals = [], []
    for i, (arch, width) in enumerate([("dqn", 0.25), ("dqn", 0.5), ("dt-10m", 0.25), ("dt-40m", 0.25)]):
        is_dt = arch.startswith("dt-")
        config = (dt.DecisionTransformerConfig(arch=arch, width=width) if is_dt
                  else NetworkConfig(arch=arch, width=width, projection_dim=64))
        table = parameter_table(config, [Game(g) for g in games])
        method = "dt" if is_dt else "scaled-ql"
        identity = run_record.run_identity(config.to_dict(), games, table["num_actions"], method)
        run = tmp_path / f"{arch}-w{width}"
        pretrain = PretrainConfig(data=str(data), run_dir=str(run), games="Pong,Breakout", network=config,
                                          learner=LearnerConfig(method=method))
        run_record.prepare_run_dir(run, identity=identity, config=pretrain.to_dict(),
                                   parameter_counts=table["parts"], seed=0)
        add_eval(run, "final", 0.1 * (i % 2 + 1))
        runs.append(run)
        if is_dt:
            dt_totals.append(table["total"])
    res = cli(*runs, "--out", tmp_path / "out", "--json", "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "scale_report.json").read_text())
    dt_points = [p for p in summary["points"] if p["method"] == "dt"]
    assert [p["params"] for p in dt_points] == dt_totals and [p["family"] for p in dt_points] == ["dt", "dt"]
    groups = {f["group"]["method"]: f for f in summary["fits"]}
    assert set(groups) == {"dt", "scaled-ql(alpha=0.05)"} and groups["dt"]["status"] == "exact"
    assert groups["dt"]["b"] == pytest.approx(np.log(0.2 / 0.1) / np.log(dt_totals[1] / dt_totals[0]))


def test_composition_is_read_from_the_data_store(tmp_path):
    assert composition_from_store(str(make_store(tmp_path, "near-optimal")), ("Pong", "Breakout")) == "near-optimal"
    assert composition_from_store(str(make_store(tmp_path, "sub-optimal")), ("Pong",)) == "sub-optimal"
    assert composition_from_store(str(make_store(tmp_path, "last:3")), None) == "checkpoints 48-50"
    assert composition_from_store(str(tmp_path / "nowhere.zarr"), None) is None
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_warnings_for_points_that_are_not_comparable(tmp_path):
    runs = [make_run(tmp_path, f"r{i}", 10 ** (6 + i), 0.1 * 2 ** i, with_eval=False) for i in range(3)]
    add_eval(runs[0], "final", 0.1)
    add_eval(runs[1], "final", 0.2, deviates=True)
    add_eval(runs[2], "final", 0.4, games=("Pong", "Breakout"))
    lost = make_run(tmp_path, "lost", 10 ** 6, 0.3, composition=None)
    res = cli(*runs, lost, "--out", tmp_path / "out", "--json", "--bootstrap", "200")
    assert res.exit_code == 0, res.output
    notes = json.loads(res.stdout.strip().splitlines()[-1])["notes"]
    assert any("the evals aggregate different games" in n and "r2: 2 games" in n for n in notes)
    assert any(n.startswith("r1: final.json deviates") for n in notes)
    assert any(n.startswith("lost: data composition unknown") for n in notes)
    assert len(notes) == 3
    assert "Notes:" in (tmp_path / "out" / "scale_report.md").read_text()
    assert "deviates from its eval protocol" in err(res)


def test_params_option_picks_the_counted_parts(tmp_path):
    # make_run: heads = params // 4, torso = params - heads - 100, embedding 60, projection 40.
    sizes = (1_000_000, 4_000_000, 16_000_000)
    runs = [make_run(tmp_path, f"r{i}", p, 0.1 * (i + 1)) for i, p in enumerate(sizes)]
    expected = {"total": list(sizes), "shared": [p - p // 4 for p in sizes], "torso": [p - p // 4 - 100 for p in sizes]}
    for count, xs in expected.items():
        res = cli(*runs, "--out", tmp_path / count, "--json", "--params", count, "--bootstrap", "200")
        assert res.exit_code == 0, res.output
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        assert [p["params"] for p in summary["points"]] == xs
        assert summary["fits"][0]["b"] == pytest.approx(np.polyfit(np.log(xs), np.log([0.1, 0.2, 0.3]), 1)[0])
    res = cli(*runs, "--out", tmp_path / "bad", "--params", "heads")
    assert res.exit_code == 2 and "'heads' is not one of 'total', 'shared', 'torso'" in err(res)


def test_equal_scores_give_a_flat_line_and_no_r2():
    a, b, r2 = power_law.fit_log_log(np.array([1e5, 4e5, 9e5]), np.full(3, 0.2070300204595530))
    assert a == pytest.approx(0.20703002) and abs(b) < 1e-12 and r2 is None
    _, _, r2 = power_law.fit_log_log(np.array([1e5, 1e6, 1e7]), np.array([0.1, 0.2, 0.4]))
    assert r2 == pytest.approx(1.0)  # an exact power law (0.1 * 2 ** k at 10 ** k): doubling per decade


@pytest.mark.parametrize("eval_record, words", [
    ({"mean": 3.0, "std": "x"}, 'the eval record at step 20: std is "x", not a finite number'),
    ({"mean": None, "std": 1.0}, "the eval record at step 20: mean is null, not a finite number"),
])
def test_plot_refuses_an_eval_record_it_would_draw_without_its_band(tmp_path, eval_record, words):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 10, "kind": "train", "loss": 1.0}, {"step": 20, "kind": "eval", **eval_record}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    res = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "p.png")])
    assert res.exit_code == 3, res.output
    assert err(res).startswith(f"error: {run / 'metrics.jsonl'}: {words}")
    assert not (tmp_path / "p.png").exists()
    lines[1] = {"step": 20, "kind": "eval", "mean": 3.0, "std": 1.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "p.png")]).exit_code == 0


def test_plot_refuses_an_eval_file_whose_interval_is_not_two_ordered_numbers(tmp_path):
    """`sql plot` draws RUN/eval/*.json as points with their 95% error bars: a malformed ci95 is exit 3 naming
    the file and the key (it would be drawn without its bar, or end in a traceback)."""
    run = make_run(tmp_path, "r", 10 ** 6, 0.2)
    path = run / "eval" / "final.json"
    record = json.loads(path.read_text())
    record["aggregates"]["iqm"]["ci95"] = "x"
    path.write_text(json.dumps(record))
    res = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "p.png")])
    assert res.exit_code == 3, res.output
    assert err(res).startswith(f"error: {path}: aggregates.iqm.ci95 is \"x\", not an interval")
    record["aggregates"]["iqm"]["ci95"] = [0.1, 0.3]
    path.write_text(json.dumps(record))
    assert runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "p.png")]).exit_code == 0

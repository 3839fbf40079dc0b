"""Eval results in the run's TensorBoard events: per game and the aggregates at the checkpoint's step, with the
run's hparams; written by `sql eval RUN` and by the fine-tuning final evaluations."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.evaluation.eval_events import eval_scalars, eval_step, run_hparams, write_eval_events
from sqlcli_core.evaluation.evaluate import EpisodeResult, EvalConfig
from sqlcli_core.evaluation.results import summarize, write_final_eval
from sqlcli_core.games.catalog import REFERENCE_SCORES
from tests.tensorboard_events import read_tensorboard_scalars
from tests.test_evaluation import tiny_run  # noqa: F401  (the module's real run, a pytest fixture)

runner = CliRunner()

SCORES = {"Pong": [-21.0, -20.0, -19.0, -21.0], "Breakout": [1.0, 4.0, 2.0, 0.0], "ElevatorAction": [0.0, 100.0, 0, 0]}


def episodes() -> list[EpisodeResult]:
    return [EpisodeResult(game, seed, episode, scores[2 * seed + episode], 100, False)
            for game, scores in SCORES.items() for seed in (0, 1) for episode in (0, 1)]


def config() -> EvalConfig:
    return EvalConfig(games=tuple(SCORES), seeds=(0, 1), episodes=2)


def hparams_of(folder: Path) -> dict:
    """The hparams of the session start info written into a folder's event files (decoded by hand)."""
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    content = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in content.session_start_info.hparams.items():
                        found[key] = v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
    return found


def test_scalars_follow_the_result_and_reference_scores(tmp_path):
    result = {"policy": {"step": 40}, **summarize(episodes(), config(), bootstrap_reps=300)}
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "identity": {"method": "bc", "network": {"arch": "dqn", "width": 0.25, "num_atoms": 5}, "games": ["a", "b"]},
        "config": {"command": "pretrain", "lr": 1e-4, "games": ["a", "b"], "bf16": False}, "seed": 3,
        "num_parameters": 1234}))
    path = write_eval_events(run, result)
    assert path.parent == run / "tensorboard" and path.name.endswith(".eval")
    scalars = read_tensorboard_scalars(run / "tensorboard")
    for game, scores in SCORES.items():
        assert scalars[f"eval/games/{game}/mean"] == [(40, pytest.approx(np.mean(scores)))]
    for game in ("Pong", "Breakout"):  # (mean - random) / (human - random), from the catalog's table
        random, human = REFERENCE_SCORES[game]
        expected = (np.mean(SCORES[game]) - random) / (human - random)
        assert scalars[f"eval/games/{game}/human_normalized"] == [(40, pytest.approx(expected, rel=1e-6))]
    assert "eval/games/ElevatorAction/human_normalized" not in scalars  # no reference scores
    for name in ("iqm", "median", "mean"):
        block = result["aggregates"][name]
        assert scalars[f"eval/aggregates/{name}"] == [(40, pytest.approx(block["value"], rel=1e-6))]
        assert scalars[f"eval/aggregates/{name}_ci95_low"][0][1] == pytest.approx(block["ci95"][0], rel=1e-6)
        assert scalars[f"eval/aggregates/{name}_ci95_high"][0][1] == pytest.approx(block["ci95"][1], rel=1e-6)
    # the median of two games' normalized scores is their mean: an independent check of the aggregate
    normalized = [scalars[f"eval/games/{g}/human_normalized"][0][1] for g in ("Pong", "Breakout")]
    assert scalars["eval/aggregates/median"][0][1] == pytest.approx(np.mean(normalized), rel=1e-6)
    hparams = hparams_of(run / "tensorboard")
    assert hparams == {"method": "bc", "num_games": 2.0, "num_parameters": 1234.0, "seed": 3.0,
                       "network/arch": "dqn", "network/width": 0.25, "network/num_atoms": 5.0,
                       "config/command": "pretrain", "config/lr": 1e-4, "config/bf16": False}


def test_step_is_the_runs_axis_and_nothing_is_written_without_one(tmp_path):
    assert eval_step({"policy": {"step": 7}}) == 7
    assert eval_step({"policy": {"step": 7}, "finetune": {"agent_steps": 900, "grad_steps": 7}}) == 900
    assert eval_step({"policy": {"step": None}}) is None
    assert write_eval_events(tmp_path, {"policy": {"step": None}, "games": {"Pong": {"mean": 1.0}}}) is None
    assert not (tmp_path / "tensorboard").exists()
    assert eval_scalars({"games": {"Pong": {"mean": float("nan"), "human_normalized": None}}}) == {}
    assert run_hparams({"identity": {"network": {"nested": {"x": 1}, "lst": [1]}}}) == {"method": "scaled-ql",
                                                                                        "num_games": 0}


def test_final_evaluation_of_finetuning_reaches_tensorboard(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    write_final_eval(run / "eval" / "final.json", command="finetune-online", run_config={}, seed=0,
                     eval_config=config(), results=episodes(), run_dir=run, step=12, arch="dqn", num_params=10,
                     finetune={"agent_steps": 480, "grad_steps": 12})
    result = json.loads((run / "eval" / "final.json").read_text())
    scalars = read_tensorboard_scalars(run / "tensorboard")
    assert scalars["eval/games/Breakout/mean"] == [(480, pytest.approx(result["games"]["Breakout"]["mean"]))]
    assert scalars["eval/aggregates/iqm"] == [(480, pytest.approx(result["aggregates"]["iqm"]["value"], rel=1e-6))]


@pytest.mark.slow
def test_sql_eval_of_a_run_writes_its_scalars_at_the_checkpoint_step(tiny_run):  # noqa: F811
    res = runner.invoke(app, ["eval", str(tiny_run), "--seeds", "0", "--episodes", "1", "--max-steps", "30",
                              "--num-envs", "2", "--bootstrap-reps", "100", "--name", "tb", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tiny_run / "eval" / "tb.json").read_text())
    scalars = read_tensorboard_scalars(tiny_run / "tensorboard")
    for game in ("Pong", "Breakout"):
        assert scalars[f"eval/games/{game}/mean"] == [(5, result["games"][game]["mean"])]
    assert scalars["eval/aggregates/iqm"] == [(5, pytest.approx(result["aggregates"]["iqm"]["value"], rel=1e-6))]


def write_result(run: Path, name: str, step: int, scores: dict, *, capped: bool = False) -> dict:
    """A real result file (the summary code of `sql eval`) of `scores` {game: 4 scores} at `step`."""
    results = [EpisodeResult(game, seed, episode, s[2 * seed + episode], 100, False)
               for game, s in scores.items() for seed in (0, 1) for episode in (0, 1)]
    result = {"policy": {"step": step}, "protocol": {"deviates_from_protocol": capped},
              "provenance": {"created": f"2026-01-01T00:00:{step % 60:02d}"},
              **summarize(results, EvalConfig(games=tuple(scores), seeds=(0, 1), episodes=2), bootstrap_reps=300)}
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / f"{name}.json").write_text(json.dumps(result))
    return result


def test_sql_plot_metric_eval_draws_the_runs_eval_files(tmp_path):
    from PIL import Image

    from sqlcli_core.analysis.eval_curves import NORMALIZED, RAW, eval_points
    from sqlcli_core.runs.metrics import MetricsLog

    run = tmp_path / "run"
    run.mkdir()
    log = MetricsLog(run)
    log.reset()
    for step in (10, 20, 30):
        log.log({"step": step, "loss": 1.0 / step})
    log.close()
    refused = runner.invoke(app, ["plot", str(run), "--metric", "eval", "--out", str(tmp_path / "none.png")])
    assert refused.exit_code == 2 and "no evaluation in these runs" in refused.output
    first = write_result(run, "a", 10, {"Pong": [-21, -20, -21, -19], "Breakout": [0, 1, 2, 3]})
    later = write_result(run, "b", 30, {"Pong": [-10, -12, -9, -11], "Breakout": [5, 9, 7, 8]}, capped=True)
    alien = write_result(run, "c", 30, {"ElevatorAction": [0, 100, 200, 0]})  # no reference: a raw point
    (run / "eval" / "b.episodes.jsonl").write_text("{}\n")  # logs beside the results are not results
    points = eval_points(run)
    assert [(p["panel"], p["step"]) for p in points] == [(NORMALIZED, 10), (NORMALIZED, 30), (RAW, 30)]
    assert points[0]["value"] == first["aggregates"]["iqm"]["value"] and points[0]["ci95"] == \
        first["aggregates"]["iqm"]["ci95"]
    assert points[1]["value"] == later["aggregates"]["iqm"]["value"] and points[1]["deviates"] is True
    assert points[2]["value"] == pytest.approx(np.mean(alien["games"]["ElevatorAction"]["scores"]))

    out = tmp_path / "eval.png"
    res = runner.invoke(app, ["plot", str(run), "--metric", "eval", "--metric", "loss", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["panels"] == [NORMALIZED, RAW, "loss"]
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 900

"""Figures a paper can use: the scale-report fit band (checked against polyfit on the same resamples), the
scale-report and eval PNGs made by the commands users run, and `--record`'s MP4 decoded back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sqlcli_core.analysis.power_law import bootstrap_band, bootstrap_power_law, fit_log_log
from tests.test_scale_report import cli, make_run, power_law_runs


def test_fit_band_is_the_percentiles_of_the_resampled_fits():
    rng = np.random.default_rng(3)
    params = np.geomspace(1e6, 1e8, 6)
    scores = 0.01 * params ** 0.3 * np.exp(rng.normal(0, 0.1, 6))
    grid = np.geomspace(5e5, 2e8, 7)
    low, high = bootstrap_band(params, scores, grid, n_resamples=400, seed=5)
    # independent reference: the same resamples (same generator, same draws) refitted with numpy.polyfit
    draws = np.random.default_rng(5).integers(0, 6, size=(400, 6))
    predictions = []
    for idx in draws:
        if np.unique(params[idx]).size < 2:
            continue  # no slope: dropped, as the interval on b drops it
        slope, intercept = np.polyfit(np.log(params[idx]), np.log(scores[idx]), 1)
        predictions.append(intercept + slope * np.log(grid))
    ref_low, ref_high = np.exp(np.percentile(predictions, [2.5, 97.5], axis=0))
    np.testing.assert_allclose(low, ref_low, rtol=1e-9)
    np.testing.assert_allclose(high, ref_high, rtol=1e-9)
    a, b, _ = fit_log_log(params, scores)
    assert np.all(low < a * grid ** b) and np.all(a * grid ** b < high)
    width = np.log(high / low)
    assert width[0] > width[3] < width[-1]  # narrowest inside the data, wider beyond it
    assert bootstrap_power_law(params, scores, 400, 5)[2] == len(predictions)


def test_scale_report_png_on_log_log_with_a_point_at_or_below_zero(tmp_path):
    from PIL import Image

    runs, _, _ = power_law_runs(tmp_path / "runs", 0.004, 0.32, n=5, noise=0.1, seed=2)
    runs.append(make_run(tmp_path / "runs", "below-zero", 3_000_000, -0.01, ci_halfwidth=0.02))
    res = cli(*runs, "--out", tmp_path / "report", "--json", "--bootstrap", "500")
    assert res.exit_code == 0, res.output
    png = tmp_path / "report" / "scale_report.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1125, 750)
    report = json.loads((tmp_path / "report" / "scale_report.json").read_text())
    assert report["fits"][0]["left_out"] == [{"run": "below-zero",
                                             "reason": "score -0.01 <= 0: log-log needs positive scores"}]


def test_eval_chart_has_an_aggregate_row_and_a_panel_per_kind_of_game(tmp_path):
    from PIL import Image

    from sqlcli_core.analysis.eval_chart import write_eval_chart
    from sqlcli_core.evaluation.evaluate import EpisodeResult, EvalConfig
    from sqlcli_core.evaluation.results import summarize

    scores = {"Pong": [-21, -20, -18, -21], "Breakout": [2, 5, 3, 9], "Seaquest": [80, 120, 60, 100],
              "ElevatorAction": [0, 100, 300, 0]}
    results = [EpisodeResult(g, seed, e, float(s[2 * seed + e]), 100, False)
               for g, s in scores.items() for seed in (0, 1) for e in (0, 1)]
    config = EvalConfig(games=tuple(scores), seeds=(0, 1), episodes=2)
    result = {"policy": {"run": "runs/r18", "step": 5}, "protocol": {"name": "dopamine"},
              **summarize(results, config, bootstrap_reps=300)}
    path = write_eval_chart(result, tmp_path / "chart.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 880 and image.size[1] > 500
    none = {**result, "aggregates": {}}  # no game with reference scores: the row says so instead of failing
    write_eval_chart(none, tmp_path / "none.png")


@pytest.mark.slow
def test_record_writes_an_rgb_mp4_of_the_screen_beside_the_agents_view(tmp_path):
    import imageio.v2 as imageio
    from typer.testing import CliRunner

    from sqlcli.main import app
    from sqlcli_core.acting.ale_env import AtariGame
    from sqlcli_core.evaluation.evaluate import stream_seeds
    from sqlcli_core.games.catalog import Game

    res = CliRunner().invoke(app, ["eval", "--policy", "random", "--games", "breakout", "--seeds", "0", "--episodes",
                                   "1", "--max-steps", "40", "--record", "breakout", "--record-steps", "30",
                                   "--bootstrap-reps", "50", "--out", str(tmp_path / "r.json"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["video"] == str(tmp_path / "r.Breakout.mp4") and "warning" not in res.output
    with imageio.get_reader(tmp_path / "r.Breakout.mp4") as video:
        assert video.get_meta_data()["fps"] == 15.0  # 60 emulator frames per second / frame skip 4
        frames = [np.asarray(f) for f in video]
    assert len(frames) == 30  # --record-steps frames of a 41-frame episode
    assert {f.shape for f in frames} == {(432, 768, 3)}
    # independent reference: a fresh emulator with the stream's seed, after reset
    env = AtariGame(Game("Breakout"), seed=stream_seeds("Breakout", 0)[0])
    view = env.reset()
    screen = env.screen_rgb().astype(int)
    first = frames[0].astype(int)
    decoded_screen = first[6:426, :320].reshape(210, 2, 160, 2, 3).mean(axis=(1, 3))
    assert np.abs(decoded_screen - screen).mean() < 6  # H.264 is lossy; a wrong layout or frame is far off
    assert np.ptp(screen, axis=2).max() > 100  # Breakout's bricks are coloured: the video must be too
    assert np.ptp(first[6:426, :320], axis=2).max() > 80
    decoded_view = first[6:426, 336:756].reshape(84, 5, 84, 5, 3).mean(axis=(1, 3))
    assert np.abs(decoded_view.mean(axis=2) - view).mean() < 6
    assert np.ptp(decoded_view, axis=2).mean() < 4  # the agent's view is grey


def test_replay_follows_the_recorded_frames_and_stops_where_they_part(tmp_path):
    import imageio.v2 as imageio

    from sqlcli_core.acting.ale_env import AtariGame
    from sqlcli_core.acting.protocol import PROTOCOLS
    from sqlcli_core.evaluation.recording import replay_episode, write_mp4
    from sqlcli_core.games.catalog import Game

    env = AtariGame(Game("Pong"), seed=7)  # the played episode, as evaluation keeps it: frames and actions
    frames, actions = [env.reset()], [0, 1, 2, 3, 4, 5, 0, 1]
    frames += [env.step(a)[0] for a in actions]
    replay = replay_episode(Game("Pong"), 7, actions, frames, protocol=PROTOCOLS["dopamine"])
    assert replay.matched == 9 and all(np.array_equal(a, b) for a, b in zip(replay.views, frames))
    assert {s.shape for s in replay.screens} == {(210, 160, 3)}
    altered = [*frames[:5], frames[5] ^ 1, *frames[6:]]
    cut = replay_episode(Game("Pong"), 7, actions, altered, protocol=PROTOCOLS["dopamine"])
    assert cut.matched == 5 and len(cut.screens) == 5
    with imageio.get_reader(write_mp4(tmp_path / "cut.mp4", cut)) as video:
        assert video.count_frames() == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4"]  # no partial file left

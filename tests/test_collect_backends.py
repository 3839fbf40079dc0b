"""`sql collect` on its two emulator backends: ale_py's C++ vector environment and `AtariGame`.

The reference is the python backend's output (itself checked frame by frame against a fresh AtariGame in
tests/test_collect.py); the vector backend must write the same bytes, file for file, for the same seed,
including sticky actions, game overs, capped episodes, padding rows across checkpoints and ring wraps, with
runs played together in one process, and after interruptions resumed on either backend.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json

import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.acting.collect import collect_all, collect_run
from sqlcli_core.acting.collect_runs import LOG_NAME, RESUME_NAME, RunConfig, partial_dir, run_dir
from sqlcli_core.acting.policies import PolicySpec
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.errors import DataError

pytestmark = pytest.mark.slow

CAPPED = dataclasses.replace(PROTOCOLS["dopamine"], max_episode_steps=200)  # some episodes capped, some not


def run_files(root, game="Breakout", run=1):
    return run_dir(root, game, run) / "replay_logs"


def assert_same_files(got, want):
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        assert filecmp.cmp(got / name, want / name, shallow=False), name


def assert_same_logs(got_root, want_root, game="Breakout", run=1):
    got, want = (json.loads((run_dir(r, game, run) / LOG_NAME).read_text()) for r in (got_root, want_root))
    for key in ("episodes", "checkpoints", "add_count", "transitions", "env_seed", "policy_seed"):
        assert got[key] == want[key], key


def test_both_backends_write_the_same_bytes(tmp_path):
    """Two runs (random policy, their own seeds) played together on the vector backend vs one after the other on python."""
    configs = [RunConfig("Breakout", run, transitions=900, capacity=200, protocol=CAPPED, seed=4)
               for run in (1, 2)]
    python = collect_all(configs, tmp_path / "python", jobs=1, backend="python")
    vector = collect_all(configs, tmp_path / "vector", jobs=2, backend="vector")
    assert [s["status"] for s in python + vector] == ["collected"] * 4
    for run in (1, 2):
        assert_same_files(run_files(tmp_path / "vector", run=run), run_files(tmp_path / "python", run=run))
        assert_same_logs(tmp_path / "vector", tmp_path / "python", run=run)
    log = json.loads((run_dir(tmp_path / "python", "Breakout", 1) / LOG_NAME).read_text())
    capped = [e["capped"] for e in log["episodes"] if e["terminal"]]
    assert True in capped and False in capped, "the test must cross game overs and capped episodes"
    assert len(log["checkpoints"]) >= 5  # the ring wrapped several times, padding rows across checkpoints


def test_cli_backends_and_jobs_write_the_same_bytes(tmp_path):
    """The CLI: random policy, default protocol, two games x two runs, --jobs 2 on vector vs 1 on python."""
    for backend, jobs in (("vector", "2"), ("python", "1")):
        args = ["collect", "--games", "pong,breakout", "--runs", "2", "--transitions", "300", "--capacity", "128",
                "--seed", "7", "--out", str(tmp_path / backend), "--backend", backend, "--jobs", jobs, "--json"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["backend"] == backend and [r["status"] for r in summary["runs"]] == ["collected"] * 4
    for game in ("Pong", "Breakout"):
        for run in (1, 2):
            assert_same_files(run_files(tmp_path / "vector", game, run), run_files(tmp_path / "python", game, run))


def test_vector_backend_refuses_game_variants(tmp_path):
    result = CliRunner().invoke(app, ["collect", "--games", "pong", "--mode", "1", "--backend", "vector",
                                      "--transitions", "10", "--capacity", "64", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "mode or difficulty" in result.output
    assert not (tmp_path / "Pong").exists()


@pytest.mark.parametrize("first, then", [("vector", "vector"), ("vector", "python"), ("python", "vector")])
def test_interrupted_runs_resume_to_identical_files_across_backends(tmp_path, first, then):
    """Interrupt on `first` after checkpoints taken mid-episode, inside the padding rows and between episodes;
    resume on `then` each time; the files equal an uninterrupted python run's. A vector run's record is every
    action since the stream's start ("actions"); a python run's is ALE's saved state ("state"), which only
    AtariGame can restore, so such a run finishes on python whatever the backend asked for."""
    protocol = dataclasses.replace(PROTOCOLS["dopamine"], max_episode_steps=23)
    config = RunConfig("Breakout", 1, transitions=120, capacity=7, protocol=protocol,
                            policy=PolicySpec("sticky-random", 0.3))
    collect_run(config, tmp_path / "ref", backend="python")
    partial = partial_dir(tmp_path / "int", "Breakout", 1)
    kinds, records = set(), set()
    for i, stop in enumerate((25, 60, 95)):
        def interrupt(steps, stop=stop):
            if steps >= stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            collect_run(config, tmp_path / "int", interrupt, progress_every=5, backend=first if i == 0 else then)
        resume = json.loads((partial / RESUME_NAME).read_text())
        kinds.add("between" if resume["episode"] is None else "padding" if resume["padding_left"] else "mid")
        records.add(resume["emulator"])
        assert not run_dir(tmp_path / "int", "Breakout", 1).exists()
    assert kinds == {"between", "padding", "mid"}, f"resumed only from {kinds}: pick other stop points"
    want = {("vector", "vector"): {"actions"}, ("vector", "python"): {"actions", "state"},
            ("python", "vector"): {"state"}}[(first, then)]
    assert records == want
    assert collect_run(config, tmp_path / "int", backend=then)["status"] == "resumed" and not partial.exists()
    assert_same_files(run_files(tmp_path / "int"), run_files(tmp_path / "ref"))
    assert_same_logs(tmp_path / "int", tmp_path / "ref")


def test_a_tampered_action_log_is_refused(tmp_path):
    """Resuming replays the logged actions and must reach the saved frame; a changed log does not."""
    import numpy as np

    config = RunConfig("Breakout", 1, transitions=200, capacity=50, policy=PolicySpec("sticky-random", 0.3))

    def interrupt(steps):
        if steps >= 120:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_run(config, tmp_path, interrupt, progress_every=10, backend="vector")
    partial = partial_dir(tmp_path, "Breakout", 1)
    resume = json.loads((partial / RESUME_NAME).read_text())
    assert resume["episode"] is not None and resume["episode"]["length"] > 5, "pick a stop inside an episode"
    path = partial / resume["state_file"]
    with np.load(path) as z:
        record = {k: z[k] for k in z.files}
    record["stream_actions"] = (record["stream_actions"] + 1) % 4  # Breakout has 4 actions
    with open(path, "wb") as f:
        np.savez(f, **record)
    with pytest.raises(DataError, match="does not reach the saved frame"):
        collect_run(config, tmp_path, backend="vector")

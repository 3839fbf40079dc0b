"""`sql pretrain` end to end: a real store, real subprocesses, SIGKILL and resume, refusals, --dry-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.data import store as st
from tests.replay_fixture import write_run
from tests.tensorboard_events import read_tensorboard_scalars

STEPS = 40
RUN_ARGS = ["--games", "pong,breakout", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8",
            "--steps", str(STEPS), "--checkpoint-every", "4", "--keep", "2", "--log-every", "4", "--seed", "3",
            "--lr", "1e-3", "--target-update-period", "6", "--cache-bytes", "8000000"]
BC_ARGS = [*RUN_ARGS, "--method", "bc"]
# The tiny Decision Transformer: 4 layers, 32 wide, one head; windows of 4 steps; dropout on.
DT_ARGS = ["--games", "pong,breakout", "--method", "dt", "--arch", "dt-10m", "--width", "0.0625", "--batch-size", "8",
           "--steps", str(STEPS), "--checkpoint-every", "4", "--keep", "2", "--log-every", "4", "--seed", "3",
           "--lr", "1e-3", "--cache-bytes", "8000000"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    write_run(src, "Pong", 1, capacity=150, total=600, num_actions=6, seed=11, mean_episode=25)
    write_run(src, "Breakout", 1, capacity=150, total=500, num_actions=4, seed=13, mean_episode=25)
    dst = tmp_path_factory.mktemp("dst") / "store"
    st.shard(src, dst, config=st.ShardConfig(frame_chunk=32, scalar_chunk=128))
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment; the runs share a persistent compilation cache (they compile the same step)."""
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    return e


def sql(args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlcli.main", *args], env=env, capture_output=True, text=True,
                          timeout=400, **kw)


def committed_steps(run: Path) -> list[int]:
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def final_params(run: Path) -> dict:
    import jax

    from sqlcli_core.runs.policy import load_policy

    policy = load_policy(run)
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(policy.params)}, policy.step


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(store, env, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "a"
    proc = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *RUN_ARGS, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads(proc.stdout)


@pytest.mark.slow
def test_uninterrupted_run_writes_the_run_directory(uninterrupted):
    run, summary = uninterrupted
    assert summary["steps"] == STEPS and summary["resumed_from"] is None and summary["checkpoint_step"] == STEPS
    assert committed_steps(run) == [STEPS - 4, STEPS]  # every 4 steps, the newest 2 kept
    record = json.loads((run / "run.json").read_text())
    assert record["identity"]["games"] == ["Pong", "Breakout"] and record["identity"]["num_actions"] == [6, 4]
    assert record["identity"]["network"]["arch"] == "dqn" and record["config"]["batch_size"] == 8
    assert record["seed"] == 3 and "jax" in record["provenance"]["versions"]
    # hand count: convs 8x8x4x8+8, 4x4x8x16+16, 3x3x16x16+16; embedding 7x7x16x8; 128->1024; 1024 -> 10 actions x 11
    assert record["parameter_counts"] == {"torso": 2056 + 2064 + 2320, "spatial_embedding": 6272,
                                          "projection": 128 * 1024 + 1024, "heads": 1024 * 110 + 110}
    lines = metric_lines(run)
    assert [m["step"] for m in lines] == list(range(4, STEPS + 1, 4))
    for m in lines:
        assert m["kind"] == "train" and not any(isinstance(v, dict) for v in m.values())  # flat columns
        assert {k.split("/")[1] for k in m if k.startswith("td_loss/")} <= {"Pong", "Breakout"}
        assert sum(v for k, v in m.items() if k.startswith("samples/")) == 4 * 8
        assert {k.split("/")[1] for k in m if k.startswith("samples/")} == {k.split("/")[1] for k in m
                                                                             if k.startswith("td_loss/")}
        assert np.isfinite(m["loss"]) and abs(m["loss"] - (m["td_loss"] + 0.05 * m["cql_loss"])) < 1e-4
    assert lines[-1]["samples_per_s"] > 0


@pytest.mark.slow
def test_kill_9_then_rerun_ends_like_the_uninterrupted_run(store, env, uninterrupted, tmp_path):
    _kill_then_rerun_matches(store, env, uninterrupted, tmp_path, RUN_ARGS)


@pytest.fixture(scope="module")
def uninterrupted_bc(store, env, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "bc"
    proc = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *BC_ARGS, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads(proc.stdout)


@pytest.mark.slow
def test_bc_run_records_its_method_and_resumes_bit_identically(store, env, uninterrupted_bc, tmp_path):
    run, summary = uninterrupted_bc
    record = json.loads((run / "run.json").read_text())
    assert summary["method"] == "bc" and record["identity"]["method"] == "bc"
    assert record["config"]["learner"]["method"] == "bc"
    # policy heads: one logit per action (10 actions over the two games), no atoms
    assert record["parameter_counts"]["heads"] == 1024 * 10 + 10
    lines = metric_lines(run)
    assert {"ce_loss", "accuracy", "entropy"} <= set(lines[-1]) and "td_loss" not in lines[-1]
    assert any(k.startswith("ce_loss/") for k in lines[-1]) and not any(k.startswith("td_loss/") for k in lines[-1])
    for m in lines:
        assert m["loss"] == pytest.approx(m["ce_loss"]) and 0.0 <= m["accuracy"] <= 1.0
    _kill_then_rerun_matches(store, env, uninterrupted_bc, tmp_path, BC_ARGS)
    # the same run directory under another method is another run
    other = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *RUN_ARGS], env)
    assert other.returncode == 2 and "holds a different run (method bc vs scaled-ql)" in other.stderr


@pytest.fixture(scope="module")
def uninterrupted_dt(store, env, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "dt"
    proc = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *DT_ARGS, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, json.loads(proc.stdout)


@pytest.mark.slow
def test_dt_run_trains_on_windows_and_resumes_bit_identically(store, env, uninterrupted_dt, tmp_path):
    from sqlcli_core.networks import decision_transformer as dt

    run, summary = uninterrupted_dt
    record = json.loads((run / "run.json").read_text())
    assert summary["method"] == "dt" and record["identity"]["method"] == "dt"
    network = record["identity"]["network"]
    assert network["arch"] == "dt-10m" and network["context_steps"] == 4 and "num_atoms" not in network
    counts = dt.parameter_table(dt.DecisionTransformerConfig(arch="dt-10m", width=0.0625), ["Pong", "Breakout"])
    assert record["parameter_counts"] == counts["parts"] and summary["num_parameters"] == counts["total"]
    lines = metric_lines(run)
    assert {"action_loss", "return_loss", "reward_loss", "action_accuracy"} <= set(lines[-1])
    assert any(k in lines[-1] for k in ("action_loss/Pong", "action_loss/Breakout"))  # per-game flat columns
    for m in lines:
        assert m["loss"] == pytest.approx(m["action_loss"] + m["return_loss"] + m["reward_loss"], rel=1e-5)
    # the sampler's position is in the checkpoint (exact resume of the windows, not only of the weights)
    meta = json.loads((run / "checkpoints" / str(STEPS) / "meta" / "metadata").read_text())
    assert meta["sampler_states"][0]["format"] == "sql-sequence-sampler"
    assert meta["sampler_states"][0]["step"] == STEPS and meta["sampler_states"][0]["config"]["window"] == 4
    _kill_then_rerun_matches(store, env, uninterrupted_dt, tmp_path, DT_ARGS)
    # fine-tuning a DT run is refused in one line, before any network is built
    ft = sql(["finetune-offline", "--from", str(run), "--run-dir", str(tmp_path / "ft"), "--game", "pong",
              "--data", str(store), "--transitions", "100"], env)  # within the store's rows: the data check passes
    assert ft.returncode == 2 and "runs of method dt cannot be fine-tuned" in ft.stderr
    assert len(ft.stderr.strip().splitlines()) == 1


def _kill_then_rerun_matches(store, env, uninterrupted, tmp_path, run_args):
    reference_run, _ = uninterrupted
    run = tmp_path / "b"
    cmd = [sys.executable, "-m", "sqlcli.main", "pretrain", "--data", str(store), "--run-dir", str(run), *run_args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not committed_steps(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = proc.stderr.read().decode()
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill: {stderr[-2000:]}"
    at_kill = committed_steps(run)
    assert at_kill and at_kill[-1] < STEPS, at_kill

    rerun = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *run_args, "--json"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["resumed_from"] is not None and at_kill[-1] <= summary["resumed_from"] < STEPS
    assert summary["start_step"] == summary["resumed_from"] and summary["steps"] == STEPS

    params, step = final_params(run)
    reference, ref_step = final_params(reference_run)
    assert step == ref_step == STEPS
    for name in reference:
        np.testing.assert_array_equal(params[name], reference[name], err_msg=name)
    # the metrics file reads as one run: no duplicated steps, the same losses as the uninterrupted run
    a, b = metric_lines(reference_run), metric_lines(run)
    assert [m["step"] for m in b] == [m["step"] for m in a]
    np.testing.assert_array_equal([m["loss"] for m in b], [m["loss"] for m in a])
    # and so do the TensorBoard events: the killed attempt's steps past the checkpoint are hidden
    events = read_tensorboard_scalars(run / "tensorboard")["train/loss"]
    assert [s for s, _ in events] == [m["step"] for m in a]
    np.testing.assert_allclose([v for _, v in events], [m["loss"] for m in a], rtol=1e-6)


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing_and_other_settings_are_refused(store, env, uninterrupted):
    run, _ = uninterrupted
    before = (run / "metrics.jsonl").read_text()
    again = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *RUN_ARGS, "--json"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["start_step"] == STEPS and summary["last_metrics"] is None
    assert (run / "metrics.jsonl").read_text() == before

    wider = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *RUN_ARGS, "--width", "0.5"], env)
    assert wider.returncode == 2
    assert "holds a different run (network width 0.25 vs 0.5)" in wider.stderr
    assert len(wider.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_refused_resume_leaves_run_json_as_it_was(store, env, uninterrupted):
    """The sampler refuses to continue with another batch size (exit 2): run.json must still describe the
    checkpoints that are there, not the refused invocation's settings (it used to be rewritten first)."""
    run, _ = uninterrupted
    before = (run / "run.json").read_bytes()
    args = [a if a != "8" else "16" for a in RUN_ARGS]  # --batch-size 8 -> 16
    assert "16" in args and args.index("16") == RUN_ARGS.index("--batch-size") + 1
    refused = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *args], env)
    assert refused.returncode == 2 and "sampler state was saved with batch_size=8" in refused.stderr
    assert (run / "run.json").read_bytes() == before


def test_a_batch_that_cannot_fit_is_refused_before_anything_is_allocated(store, env, tmp_path):
    """--batch-size 100000000 used to end after a minute in numpy's ArrayMemoryError traceback from the
    sampler's thread, leaving the run directory behind: now one line with the numbers, exit 5, nothing made."""
    run = tmp_path / "r"
    proc = sql(["pretrain", "--data", str(store), "--run-dir", str(run), *RUN_ARGS, "--batch-size", "100000000"], env)
    assert proc.returncode == 5, proc.stderr[-2000:]
    line = " ".join(proc.stderr.split())
    assert line.startswith("error: this run needs about ") and "of host memory (" in line and "available" in line
    assert "Traceback" not in proc.stderr and not run.exists()


runner = CliRunner()


def test_dry_run_counts_parameters_per_part():
    result = runner.invoke(app, ["pretrain", "--dry-run", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11",
                                 "--games", "pong,breakout", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["parts"] == {"torso": 6440, "spatial_embedding": 6272, "projection": 132096, "heads": 112750}
    assert summary["total"] == 6440 + 6272 + 132096 + 112750


def test_projection_dim_sets_the_neck_and_head_widths():
    """--projection-dim D, by hand: the spatial embedding gives C * F = 32 * 8 = 256 features at width 0.5, so the
    projection has 256 * D + D parameters and the heads (D + 1) * (6 + 4 actions) * 51 atoms."""
    result = runner.invoke(app, ["pretrain", "--dry-run", "--arch", "dqn", "--width", "0.5", "--projection-dim", "256",
                                 "--games", "pong,breakout", "--json"])
    assert result.exit_code == 0, result.output
    parts = json.loads(result.stdout.strip().splitlines()[-1])["parts"]
    assert parts["projection"] == 256 * 256 + 256
    assert parts["heads"] == (256 + 1) * (6 + 4) * 51
    refused = runner.invoke(app, ["pretrain", "--dry-run", "--projection-dim", "0", "--games", "pong"])
    assert refused.exit_code == 2 and "projection_dim must be at least 1" in refused.output


def test_config_file_sets_what_flags_do_not(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('arch = "dqn"\nwidth = 0.5\nnum-atoms = 11\nprojection_dim = 64\ngames = "pong"\n')
    result = runner.invoke(app, ["pretrain", "--dry-run", "--config", str(cfg), "--width", "0.25", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["width"] == 0.25  # the flag wins over the file
    assert summary["config"]["projection_dim"] == 64 and summary["config"]["num_atoms"] == 11
    assert summary["parts"]["projection"] == 128 * 64 + 64  # TOML-only network setting took effect
    assert summary["parts"]["heads"] == 64 * 6 * 11 + 6 * 11

    # 18-wide heads on the stores' minimal-set action indices would train silently wrong: refused
    for text in ('full_action_space = true\narch = "dqn"\n', 'full_action_space = true\nmethod = "dt"\narch = "dt-10m"\n'):
        cfg.write_text(text)
        result = runner.invoke(app, ["pretrain", "--dry-run", "--config", str(cfg)])
        assert result.exit_code == 2 and "full_action_space is not supported for training" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output

    cfg.write_text("widht = 2\n")
    result = runner.invoke(app, ["pretrain", "--dry-run", "--config", str(cfg)])
    assert result.exit_code == 2 and "unknown setting 'widht'" in result.output


def test_missing_store_and_bad_weights_are_one_line_errors(tmp_path):
    result = runner.invoke(app, ["pretrain", "--run-dir", str(tmp_path / "r"), "--arch", "dqn"])
    assert result.exit_code == 2 and "no data store given" in result.output
    from sqlcli_core.errors import UsageError
    from sqlcli_core.training.pretrain import parse_game_weights

    assert parse_game_weights("pong=2, ALE/Breakout-v5=0.5") == {"Pong": 2.0, "Breakout": 0.5}
    with pytest.raises(UsageError, match="GAME=WEIGHT"):
        parse_game_weights("pong")
    # a TOML `Pong = true` is no weight, though Python's float() reads it as 1; inf and nan are none either
    for table in ({"Pong": True}, {"Pong": float("inf")}, {"Pong": "nan"}, {"Pong": -1}):
        with pytest.raises(UsageError, match="weight of Pong must be a finite number"):
            parse_game_weights(table)
    assert parse_game_weights({"pong": 2, "Breakout": "0.5"}) == {"Pong": 2.0, "Breakout": 0.5}


@pytest.mark.slow
def test_config_run_json_recreates_a_runs_settings(store, env, uninterrupted, tmp_path):
    run, _ = uninterrupted
    new = tmp_path / "again"
    proc = sql(["pretrain", "--config", str(run / "run.json"), "--run-dir", str(new), "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = json.loads((run / "run.json").read_text()), json.loads((new / "run.json").read_text())
    assert a["identity"] == b["identity"] and a["seed"] == b["seed"]
    assert {k: v for k, v in a["config"].items() if k != "run_dir"} == {k: v for k, v in b["config"].items()
                                                                          if k != "run_dir"}
    first, again = metric_lines(run), metric_lines(new)
    assert [m["step"] for m in again] == [m["step"] for m in first]
    np.testing.assert_array_equal([m["loss"] for m in again], [m["loss"] for m in first])


def test_dry_run_of_behaviour_cloning_counts_policy_heads():
    result = runner.invoke(app, ["pretrain", "--method", "bc", "--arch", "resnet101", "--games", "atari40", "--dry-run",
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # resnet101 trunk + the 4-frame stem, 3x3x2048x8 embedding, 16384 -> 1024 projection, 501 actions x 1 logit
    parts = {"torso": 42_500_160 + 7 * 7 * 64, "spatial_embedding": 3 * 3 * 2048 * 8,
             "projection": (16384 + 1) * 1024, "heads": (1024 + 1) * 501}
    assert summary["method"] == "bc" and summary["parts"] == parts and summary["total"] == sum(parts.values())
    assert "total" in result.output and "bc" in result.output
    result = runner.invoke(app, ["pretrain", "--method", "xyz", "--dry-run"])
    assert result.exit_code == 2 and "'xyz' is not one of" in result.output


@pytest.mark.parametrize("arch, layers, d, low, high", [("dt-80m", 12, 768, 80e6, 90e6), ("dt-40m", 6, 768, 40e6, 45e6)])
def test_dry_run_of_the_decision_transformer_presets(arch, layers, d, low, high):
    result = runner.invoke(app, ["pretrain", "--method", "dt", "--arch", arch, "--games", "atari40", "--dry-run",
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # hand count: 36 patches of 14x14 -> d (+ positions), return/action/reward tables and 4 x 39 token
    # positions, per layer 12 d^2 + 13 d, the final LayerNorm, and the three heads (120, 18, 4 classes)
    parts = {"patch_embedding": 196 * d + d + 36 * d, "token_embeddings": (120 + 18 + 4 + 4 * 39) * d,
             "transformer": layers * (12 * d * d + 13 * d) + 2 * d, "heads": (d + 1) * (120 + 18 + 4)}
    assert summary["method"] == "dt" and summary["parts"] == parts and summary["total"] == sum(parts.values())
    assert low < summary["total"] < high and summary["num_games"] == 40
    assert "transformer" in result.output and "total" in result.output


def test_dt_settings_are_checked_against_the_method_and_the_arch(tmp_path):
    for args, message in [
        (["--method", "dt"], "--method dt trains a Decision Transformer, not --arch resnet101"),
        (["--arch", "dt-40m"], "--arch dt-40m is a Decision Transformer, which --method scaled-ql does not train"),
        (["--method", "dt", "--arch", "dt-40m", "--num-atoms", "11"], "num_atoms does not apply to the Decision"),
        (["--method", "dt", "--arch", "dt-40m", "--bf16"], "compute_dtype does not apply"),
    ]:
        result = runner.invoke(app, ["pretrain", "--dry-run", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    cfg = tmp_path / "dt.toml"
    cfg.write_text('method = "dt"\narch = "dt-10m"\ncontext_steps = 2\nnum_return_bins = 60\n')
    result = runner.invoke(app, ["pretrain", "--dry-run", "--config", str(cfg), "--games", "pong", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    d = 512  # fewer return bins and a shorter context: smaller embeddings and return head
    assert summary["context_steps"] == 2 and summary["parts"]["token_embeddings"] == (60 + 18 + 4 + 2 * 39) * d
    assert summary["parts"]["heads"] == (d + 1) * (60 + 18 + 4)


def test_toml_config_is_shared_by_the_training_commands(tmp_path):
    from sqlcli_core.training import finetune_offline, finetune_online

    cfg = tmp_path / "ft.toml"
    cfg.write_text('game = "alien"\ndata = "/x"\nlr = 3e-4\nsteps = 7\nalpha = 0.0\n')
    offline = finetune_offline.resolve_config(cfg, {"steps": 9})
    assert (offline.learner.learning_rate, offline.steps, offline.learner.method_config.alpha,
            offline.batch_size) == (3e-4, 9, 0.0, 32)
    cfg.write_text('game = "breakout"\nmode = 12\nlr = 3e-4\n')
    online = finetune_online.resolve_config(cfg, {})
    assert (online.mode, online.learner.learning_rate, online.learner.target_update_period) == (12, 3e-4, 1000)
    cfg.write_text('game = "breakout"\nwidht = 2\n')
    from sqlcli_core.errors import UsageError

    with pytest.raises(UsageError, match="unknown setting 'widht'"):
        finetune_online.resolve_config(cfg, {})


@pytest.mark.slow
def test_tiny_bc_runs_train_evaluate_and_report_as_their_own_method(env, tmp_path):
    """`sql demo --methods scaled-ql,bc` on Freeway: real ALE data, real BC runs, eval files and scale-report."""
    out = tmp_path / "demo"
    proc = sql(["demo", "--out", str(out), "--games", "freeway", "--transitions", "1000", "--steps", "60",
                "--widths", "0.25,0.5", "--eval-seeds", "0", "--eval-max-steps", "400", "--methods", "scaled-ql,bc",
                "--no-check", "--json"], env)  # the learner check is tests/test_demo.py's
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(r.get("method", "scaled-ql"), r["width"]) for r in summary["runs"]] == [
        ("scaled-ql", 0.25), ("scaled-ql", 0.5), ("bc", 0.25), ("bc", 0.5)]
    for width in ("0.25", "0.5"):
        run = out / "runs" / f"bc-dqn-w{width}"
        assert json.loads((run / "run.json").read_text())["identity"]["method"] == "bc"
        result = json.loads((run / "eval" / "demo.json").read_text())
        assert result["policy"]["kind"] == "checkpoint" and len(result["games"]["Freeway"]["scores"]) == 1
    report = json.loads((out / "report" / "scale_report.json").read_text())
    methods = {p["name"]: p["method"] for p in report["points"]}
    assert methods["bc-dqn-w0.25"] == methods["bc-dqn-w0.5"] == "bc"
    assert methods["dqn-w0.25"] == "scaled-ql(alpha=0.05)"
    # two sizes with equal scores are no finding about size: the report says so instead of fitting a flat line
    bc_scores = {p["score"] for p in report["points"] if p["method"] == "bc"}
    assert [f["status"] for f in report["fits"] if f["group"]["method"] == "bc"] == (
        ["indistinguishable"] if len(bc_scores) == 1 else ["exact"])

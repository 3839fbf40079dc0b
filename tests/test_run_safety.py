"""Never silently wrong, the run side: one writer per run directory, checkpoint checksums with fallback,
the non-finite guard, full disks and bad run paths, and options checked before anything runs.

Real processes, real Orbax checkpoints, real tmpfs mounts (skipped with a reason where mounting is not
permitted). The run settings are test_pretrain's, so the uninterrupted reference run is the same recipe.
"""

from __future__ import annotations

import json
import os
import shutil
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
from sqlcli_core.errors import DataError
from tests.replay_fixture import write_run

STEPS = 12
RUN_ARGS = ["--games", "pong,breakout", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8",
            "--steps", str(STEPS), "--checkpoint-every", "4", "--keep", "2", "--log-every", "4", "--seed", "3",
            "--lr", "1e-3", "--target-update-period", "6", "--cache-bytes", "8000000"]
runner = CliRunner()


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
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    return e


def sql(args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlcli.main", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=400, **kw)


def pretrain(store, run, env, *extra):
    return sql(["pretrain", "--data", store, "--run-dir", run, *RUN_ARGS, *extra, "--json"], env)


def committed_steps(run: Path) -> list[int]:
    d = run / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def params_of(run) -> tuple[dict, int]:
    import jax

    from sqlcli_core.runs.policy import load_policy

    policy = load_policy(run)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(policy.params)}, \
        policy.step


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def assert_one_error_line(proc, code: int, *fragments: str) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def reference(store, env, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ref"
    proc = pretrain(store, run, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert committed_steps(run) == [8, 12]
    return run


# ------------------------------------------------------------------------------- one writer per run dir


@pytest.mark.slow
def test_a_second_pretrain_in_the_same_run_dir_is_refused_and_a_kill_releases_the_lock(store, env, tmp_path):
    run = tmp_path / "run"
    long_run = [*RUN_ARGS, "--steps", "100000"]  # still training when the second process arrives
    cmd = [sys.executable, "-m", "sqlcli.main", "pretrain", "--data", str(store), "--run-dir", str(run), *long_run]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not committed_steps(run) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        second = sql(["pretrain", "--data", store, "--run-dir", run, *long_run], env)
        line = assert_one_error_line(second, 2, f"the run directory {run} is being written by pid {first.pid}")
        assert "wait for that `sql pretrain` to finish" in line and "main.py pretrain --data" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the killed holder's lock: a re-run resumes from the newest checkpoint.
    newest = committed_steps(run)[-1]
    rerun = sql(["pretrain", "--data", store, "--run-dir", run, *RUN_ARGS, "--steps", newest + 4, "--json"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["resumed_from"] == newest and summary["steps"] == newest + 4


def test_eval_outputs_are_locked_per_file(tmp_path):
    from sqlcli_core.errors import UsageError
    from sqlcli_core.locks import writer_lock

    out = tmp_path / "eval" / "final.json"
    out.parent.mkdir()
    with writer_lock(out.with_name(f".{out.name}.lock"), what=f"the eval result {out}", hint="h"):
        r = runner.invoke(app, ["eval", "--policy", "random", "--games", "pong", "--episodes", "1", "--seeds", "0",
                                "--max-steps", "20", "--out", str(out), "--bootstrap-reps", "10"])
    assert r.exit_code == 2 and f"the eval result {out} is being written by pid {os.getpid()}" in r.output
    assert not out.exists()
    with pytest.raises(UsageError):  # the same rule, library side
        with writer_lock(out.with_name(f".{out.name}.lock"), what="x", hint="y"):
            with writer_lock(out.with_name(f".{out.name}.lock"), what="x", hint="y"):
                pass


# ------------------------------------------------------------------------------- checkpoint integrity


def _array_data_files(step_dir: Path) -> list[Path]:
    """The files OCDBT packs the state's array values into (not its manifests or tree nodes). Which of them
    holds the params depends on the write, so a test damages all of them."""
    files = [p for p in (step_dir / "state").glob("ocdbt.process_*/d/*") if p.is_file()]
    assert files, f"no array data files under {step_dir}"
    return files


def _flip(path: Path) -> None:
    """Flip a byte every 4 KiB all through the file: every array OCDBT packed into it is damaged, the params
    included wherever they lie (eval and finetune read and verify only the params)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 64, len(data), 4096):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "flip": _flip,
    "truncate": lambda p: os.truncate(p, p.stat().st_size // 3),
    "delete": lambda p: p.unlink(),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_is_detected_and_the_resume_ends_bit_identical(store, env, reference, tmp_path,
                                                                                damage):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for path in _array_data_files(run / "checkpoints" / "12"):
        DAMAGES[damage](path)

    # eval of RUN: warns and uses checkpoint 8; of the damaged step itself: exit 3 naming it
    named = sql(["eval", run / "checkpoints" / "12", "--games", "pong", "--episodes", "1", "--seeds", "0",
                 "--max-steps", "20", "--bootstrap-reps", "10"], env)
    assert_one_error_line(named, 3, f"checkpoint {run / 'checkpoints' / '12'} is damaged")
    whole = sql(["eval", run, "--games", "pong", "--episodes", "1", "--seeds", "0", "--max-steps", "20",
                 "--bootstrap-reps", "10", "--json"], env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert f"warning: checkpoint {run / 'checkpoints' / '12'} is damaged" in " ".join(whole.stderr.split())
    assert json.loads(whole.stdout)["policy"]["step"] == 8
    assert "Traceback" not in whole.stderr

    # the training resume falls back to 8, sets 12 aside, trains again and ends as the uninterrupted run
    again = pretrain(store, run, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["resumed_from"] == 8
    assert "Traceback" not in again.stderr
    assert len(list((run / "damaged-checkpoints").iterdir())) == 1
    params, step = params_of(run)
    ref, _ = params_of(reference)
    assert step == STEPS
    for name in ref:
        np.testing.assert_array_equal(params[name], ref[name], err_msg=name)
    metrics = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [4, 8, 12]


@pytest.mark.slow
def test_no_intact_checkpoint_is_exit_3_for_training_eval_and_finetune(store, env, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for step in (8, 12):
        for path in _array_data_files(run / "checkpoints" / str(step)):
            _flip(path)
    proc = pretrain(store, run, env)
    assert_one_error_line(proc, 3, f"checkpoint {run / 'checkpoints' / '12'} is damaged", "and 1 older checkpoint")
    proc = sql(["eval", run, "--games", "pong", "--episodes", "1", "--seeds", "0", "--max-steps", "20"], env)
    assert_one_error_line(proc, 3, "is damaged")
    proc = sql(["finetune-online", "--from", run, "--game", "breakout", "--run-dir", tmp_path / "ft", "--steps", "50",
                "--min-replay", "10"], env)
    assert_one_error_line(proc, 3, "is damaged")
    from sqlcli_core.training.transfer import load_pretrained

    with pytest.raises(DataError, match="is damaged"):
        load_pretrained(run / "checkpoints" / "8")


def test_checksums_are_of_values_and_the_json_item_seals_itself():
    from sqlcli_core.runs import checksums

    state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "step": np.int32(5)}
    sums = checksums.state_checksums(state)
    # an independent re-derivation: sha256 over dtype, shape and C-order bytes
    import hashlib

    digest = hashlib.sha256()
    digest.update(b"<f4(2, 3);")
    digest.update(np.arange(6, dtype=np.float32).tobytes())
    assert sums["params"] == digest.hexdigest()
    meta = checksums.seal_meta({"step": 5}, sums)
    checksums.verify_meta(meta)
    checksums.verify_items({"params": state["params"]}, meta)
    with pytest.raises(checksums.CheckpointDamaged, match="params item"):
        checksums.verify_items({"params": {"w": np.ones((2, 3), np.float32)}}, meta)
    with pytest.raises(checksums.CheckpointDamaged, match="JSON item"):
        checksums.verify_meta({**meta, "step": 6})
    assert checksums.first_non_finite({"params": {"w": np.array([1.0, np.nan], np.float32)}}) == "params"
    assert checksums.first_non_finite({"replay": {"r": np.array([np.inf])}}) is None


# ------------------------------------------------------------------------------- non-finite guard


@pytest.mark.slow
def test_a_diverging_run_stops_with_exit_6_and_keeps_finite_checkpoints(store, env, tmp_path):
    run = tmp_path / "run"
    # lr 1e30: step 1 gives parameters of size ~1e30 (finite), step 2's forward pass overflows
    proc = pretrain(store, run, env, "--lr", "1e30", "--checkpoint-every", "1", "--log-every", "4")
    line = assert_one_error_line(proc, 6, "training diverged", "non-finite at step 2",
                                 f"the last good checkpoint is {run}/checkpoints/1")
    assert committed_steps(run) == [1]
    params, step = params_of(run)
    assert step == 1 and all(np.isfinite(v).all() for v in params.values())
    assert not (run / "metrics.jsonl").exists() or all(
        np.isfinite(json.loads(ln)["loss"]) for ln in (run / "metrics.jsonl").read_text().splitlines())
    assert "re-running resumes from it" in line


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--gamma", "nan"), ("--alpha", "-inf"),
                                        ("--v-min", "nan"), ("--adam-eps", "inf"), ("--width", "nan")])
def test_non_finite_options_are_refused_up_front(flag, value, tmp_path):
    r = runner.invoke(app, ["pretrain", "--data", str(tmp_path), "--run-dir", str(tmp_path / "r"), flag, value])
    assert r.exit_code == 2 and f"{flag} must be a finite number, got {value}" in r.output.replace("\n", " ")
    assert not (tmp_path / "r").exists()


def test_finetune_options_share_the_rules(tmp_path):
    from sqlcli_core.errors import UsageError
    from sqlcli_core.settings import compose
    from sqlcli_core.training.configs import OfflineConfig, OnlineConfig

    # The learner's settings are checked by the nested LearnerConfig, with the same errors as pretrain's.
    with pytest.raises(UsageError, match="--lr must be a finite number"):
        compose(OfflineConfig, {"game": "alien", "data": "/x", "learning_rate": float("nan")})
    with pytest.raises(UsageError, match="gamma must lie in"):
        compose(OfflineConfig, {"game": "alien", "data": "/x", "gamma": 1.5})
    with pytest.raises(UsageError, match="learning rate and Adam eps must be positive"):
        compose(OnlineConfig, {"game": "breakout", "learning_rate": -1.0})
    with pytest.raises(UsageError, match="CQL alpha must be >= 0"):
        compose(OnlineConfig, {"game": "breakout", "alpha": -0.5})
    with pytest.raises(UsageError, match="epsilons must lie in"):
        OnlineConfig(game="breakout", epsilon_end=2.0)
    # steps below min-replay + update-period: no update would happen
    with pytest.raises(UsageError, match="--steps 100 leaves no update"):
        OnlineConfig(game="breakout", steps=100, min_replay=100)
    OnlineConfig(game="breakout", steps=101, min_replay=100)
    r = runner.invoke(app, ["finetune-online", "--from", str(tmp_path), "--game", "breakout", "--run-dir",
                            str(tmp_path / "x"), "--steps", "1000"])
    assert r.exit_code == 2 and "--steps 1000 leaves no update" in r.output.replace("\n", " ")


# ------------------------------------------------------------------------------- disks and paths


def _mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'})")


@pytest.mark.slow
def test_full_disk_during_pretrain_is_one_line_exit_5_and_leaves_only_intact_checkpoints(store, env, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "5m")  # room for run.json, metrics and one checkpoint (about 3.8 MB), not two
    try:
        run = disk / "run"
        proc = pretrain(store, run, env)
        assert_one_error_line(proc, 5, "no space left on the device", str(run / "checkpoints"))
        assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) <= 6, proc.stderr
        steps = committed_steps(run)
        assert steps and steps[-1] < STEPS
        params, step = params_of(run)  # what looks like a checkpoint verifies
        assert step == steps[-1]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_read_only_run_dir_is_one_line_exit_2(store, env, tmp_path):
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "1m", "ro")
    try:
        proc = pretrain(store, disk / "run", env)
        assert_one_error_line(proc, 2, "read-only")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("kind,code,fragment", [
    ("file", 2, "is a file, not a directory"),
    ("proc", 2, ""),
    ("long", 2, "too long"),
])
def test_unusable_run_dirs_are_one_line_errors(store, tmp_path, kind, code, fragment):
    target = {"file": tmp_path / "afile" / "run", "proc": Path("/proc/sql-run"),
              "long": tmp_path / ("x" * 300)}[kind]
    (tmp_path / "afile").write_text("not a directory")
    r = runner.invoke(app, ["pretrain", "--data", str(store), "--run-dir", str(target), *RUN_ARGS])
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in r.output.replace("\n", " "), r.output
    assert "Traceback" not in r.output


# ------------------------------------------------------------------------------- checked before running


@pytest.mark.parametrize("extra,message", [
    (["--arch", "foo"], "unknown network arch 'foo'"),
    (["--eval-seeds", "x"], "bad --seeds 'x'"),
    (["--widths", "1,1"], "repeats a width"),
    (["--widths", "0.5,1,0.50"], "repeats a width"),
    (["--methods", "bc,bc"], "repeats a method"),
    (["--policy", "pattern:x"], "bad policy 'pattern:x'"),
    (["--eval-max-steps", "30000"], "--max-steps must lie in 1..27000"),
    (["--batch-size", "0"], "invalid value for '--batch-size'"),
])
def test_demo_refuses_bad_options_before_any_step(tmp_path, extra, message):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), *extra])
    assert r.exit_code == 2 and message in r.output.replace("\n", " "), r.output
    assert not out.exists()


def test_demo_exits_with_the_failed_steps_code(tmp_path):
    from sqlcli.commands.demo import StepFailed, _run

    with pytest.raises(StepFailed) as info:
        _run(["eval", str(tmp_path / "nowhere"), "--games", "pong"], [])
    assert info.value.exit_code == 2  # eval's code for a missing run


@pytest.mark.parametrize("extra,message", [
    (["--bootstrap-reps", "0"], "--bootstrap-reps must be >= 1"),
    (["--name", "../../x"], "--name '../../x' must be a plain file name"),
    (["--name", ".."], "must be a plain file name"),
])
def test_eval_refuses_before_playing(tmp_path, extra, message):
    r = runner.invoke(app, ["eval", "--policy", "random", "--games", "pong", "--episodes", "1", "--seeds", "0",
                            "--max-steps", "20", *extra], catch_exceptions=False)
    assert r.exit_code == 2 and message in r.output.replace("\n", " "), r.output
    assert not Path("eval").exists() or not any(Path("eval").glob("*.episodes.jsonl"))


def test_scale_report_names_a_missing_provenance(tmp_path):
    from sqlcli_core.analysis.scale_report import load_run_point

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": "sql-run", "identity": {"network": {"arch": "dqn"}},
                                              "num_parameters": 10, "parameter_counts": {"torso": 10}}))
    (run / "eval" / "a.json").write_text(json.dumps({"aggregates": {"iqm": {"value": 0.5, "ci95": [0.4, 0.6]}}}))
    with pytest.raises(DataError, match="no provenance block"):
        load_run_point(run)

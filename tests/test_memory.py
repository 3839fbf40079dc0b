"""Memory: a run that cannot fit is refused before anything is allocated (exit 5, with the numbers); running
out anyway is exit 5 in one line; a fresh run that fails before its first checkpoint leaves no directory."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.errors import ResourceError, memory_error
from sqlcli_core.training import memory

runner = CliRunner()


def test_the_estimate_counts_batches_and_cache_by_hand():
    # a transition: two stacks of 4 frames of 84x84 bytes + 5 int32/float32 columns
    assert memory.TRANSITION_SAMPLE_BYTES == 2 * 4 * 84 * 84 + 20 == 56_468
    assert memory.sequence_sample_bytes(4) == 4 * (84 * 84 + 4 + 16) + 4
    est = memory.training_estimate(local_batch=1000, sample_bytes=100, cache_bytes=5000, host_batches=5,
                                   device_batches=3, devices=4)
    assert est.host == 5 * 1000 * 100 + 5000 and est.device == 3 * 250 * 100


def test_a_run_that_cannot_fit_is_refused_with_the_numbers():
    est = memory.training_estimate(local_batch=100_000_000, sample_bytes=memory.TRANSITION_SAMPLE_BYTES,
                                   cache_bytes=2 << 30, host_batches=5, device_batches=3, devices=1)
    with pytest.raises(ResourceError) as err:
        memory.check_fits(est, hint="lower --batch-size", host_available=16 << 30)
    line = str(err.value)
    assert line.startswith("this run needs about 25.7 TiB of host memory (5 batches of 100,000,000 samples: 25.7 "
                           "TiB, sampler cache: 2.0 GiB), more than the 16.0 GiB available")
    assert err.value.exit_code == 5
    small = memory.training_estimate(local_batch=32, sample_bytes=memory.TRANSITION_SAMPLE_BYTES, cache_bytes=1 << 20,
                                     host_batches=5, device_batches=3, devices=1)
    memory.check_fits(small, hint="-", host_available=16 << 30, device_limit=1 << 30)
    with pytest.raises(ResourceError, match=r"batches need about 5.2 MiB of device memory .* device's 1.0 MiB"):
        memory.check_fits(small, hint="-", host_available=16 << 30, device_limit=1 << 20)


def test_out_of_memory_errors_become_exit_5():
    host = memory_error(MemoryError("Unable to allocate 2.57 TiB for an array"), "running `sql pretrain`")
    assert host.exit_code == 5 and str(host).startswith("out of host memory while running `sql pretrain` (Unable")
    device = memory_error(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 bytes.\nmore"),
                          "x")
    assert device.exit_code == 5 and "out of device memory while x (RESOURCE_EXHAUSTED: Out of memory" in str(device)
    assert memory_error(ValueError("other"), "x") is None


def test_the_cli_reports_a_memory_error_in_one_line(monkeypatch, tmp_path):
    """Whatever runs out (here the recipe, at once), the command ends with one line and exit 5."""
    from sqlcli_core.training import pretrain

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.57 TiB for an array with shape (100000000, 4, 84, 84)")

    monkeypatch.setattr(pretrain, "run_pretraining", exhausted)
    store = tmp_path / "store"
    store.mkdir()
    result = runner.invoke(app, ["pretrain", "--data", str(store), "--run-dir", str(tmp_path / "r"), "--arch", "dqn",
                                 "--games", "pong"])
    assert result.exit_code == 5, result.output
    assert result.output.startswith("error: out of host memory while running `sql pretrain` (Unable to allocate")
    assert len(result.output.strip().splitlines()) <= 2  # one line, maybe wrapped by the console


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_no_directory(tmp_path):
    from sqlcli_core.runs.lifecycle import TrainingRun
    from sqlcli_core.runs.run_record import run_identity

    identity = run_identity({"arch": "dqn"}, ["Pong"], [6])
    args = dict(command="pretrain", identity=identity, config={"x": 1}, parameter_counts={"torso": 1}, seed=0,
                checkpoint_every=1, keep=1)
    fresh = tmp_path / "fresh"
    with pytest.raises(MemoryError):
        with TrainingRun(fresh, **args) as run:
            run.start_fresh()
            assert (fresh / "run.json").exists()
            raise MemoryError("a batch")
    assert not fresh.exists()
    # a directory that was there before is the user's: kept, whatever happens
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(MemoryError):
        with TrainingRun(kept, **args) as run:
            run.start_fresh()
            raise MemoryError("a batch")
    assert kept.exists()

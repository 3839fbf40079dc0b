"""One run lifecycle for the three training commands (pretrain, finetune-offline, finetune-online).

    validate settings -> check_resume_settings -> TrainingRun(...)    lock taken, run.json written or checked,
                                                                      Orbax opened
      -> run.resume(abstract_for) or start_fresh()                    newest intact checkpoint (checksums
                                                                      verified), metrics.jsonl cut back to it
      -> the command's own loop, calling run.log(record) and run.save(step, state, meta)
         (records go to RUN/metrics.jsonl and RUN/tensorboard/: training/metrics.py)
      -> run.wait() -> write_final_eval(...) for the fine-tuning commands -> run.close()   lock released

A non-finite state is never saved (NonFiniteError, exit 6); the error leaving the `with TrainingRun` block
names the last good checkpoint.

Each runner (training/pretrain.py, finetune_offline.py, finetune_online.py) reads as its recipe: what it
builds, what it feeds the loop; opening, resuming and closing the run directory are written here once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core import locks
from sqlcli_core.atomic import write_json
from sqlcli_core.errors import NonFiniteError, SqlError, UsageError, from_os_error
from sqlcli_core.training import checkpoint
from sqlcli_core.training.metrics import MetricsLog


def settings_difference(had: Mapping[str, Any], wanted: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the settings that differ, comparing the keys both sides know.

    A key only one side has counts as equal when the other side's value is its default (`defaults`): a
    setting added by a newer version, left at its default, does not make an older run different.
    """
    defaults = defaults or {}
    diff = []
    for key in sorted(set(had) | set(wanted)):
        if key in had and key in wanted:
            if had[key] != wanted[key]:
                diff.append(key)
        elif key in defaults:
            value = had[key] if key in had else wanted[key]
            if value != defaults[key]:
                diff.append(key)
    return diff


def check_resume_settings(run_dir: str | Path, command: str, settings: Mapping[str, Any], source: str | None,
                          defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to continue a run directory written by another command or started with other settings.

    settings: what a resumed run must repeat (recorded in run.json under config.settings); source: the run
    it starts from (config.from). Nothing happens for a directory without run.json (a new run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / checkpoint.RUN_FILE).exists():
        return
    previous = checkpoint.read_run(run_dir).get("config", {})
    if previous.get("command") != command:
        raise UsageError(f"run directory {run_dir} was not written by `sql {command}`", hint="pass a new --run-dir")
    diff = settings_difference(previous.get("settings") or {}, settings, defaults)
    if previous.get("from") != source:
        diff.append("from")
    if diff:
        raise UsageError(f"run directory {run_dir} was started with other settings ({', '.join(diff)})",
                         hint="repeat that run's options to resume it, or pass a new --run-dir")


class TrainingRun:
    """An open run directory: the writer lock taken, run.json written (or checked against the identity), an
    Orbax checkpointer, and the metrics file.

    Only the primary process (`write=True`, process 0 of a jax.distributed job) takes the lock and writes
    run.json and metrics; all processes take part in saves (Orbax writes each array once). The lock is a
    kernel flock on RUN/.sql-writer.lock (`sqlcli_core.locks`), held until `close`: a second process or job
    in the same run directory is refused with one line (exit 2) naming the holder, and a killed holder
    leaves no lock behind. In a multi-process job process 0's answer is broadcast, so that every process of
    a refused job stops with the same line instead of waiting in a collective.
    """

    def __init__(self, run_dir: str | Path, *, command: str, identity: dict, config: dict,
                 parameter_counts: dict, seed: int, checkpoint_every: int, keep: int, write: bool = True):
        self.run_dir = Path(run_dir)
        self.write = write
        self._lock = contextlib.ExitStack()
        try:
            self._take_lock(command)
            try:
                self.record = checkpoint.prepare_run_dir(self.run_dir, identity=identity, config=config,
                                                         parameter_counts=parameter_counts, seed=seed,
                                                         command=command, write=write)
            except OSError as exc:
                raise from_os_error(exc, f"writing {self.run_dir / checkpoint.RUN_FILE}") from None
            self.checkpointer = checkpoint.Checkpointer(self.run_dir, identity, every=checkpoint_every, keep=keep)
        except BaseException:
            self._lock.close()
            raise
        self.metrics = MetricsLog(self.run_dir, write=write)
        self.metrics_path = self.metrics.path

    def _take_lock(self, command: str) -> None:
        import jax

        error = None
        if self.write:
            try:
                self._lock.enter_context(locks.directory_lock(
                    self.run_dir, what=f"the run directory {self.run_dir}",
                    hint=f"wait for that `sql {command}` to finish, or pass another --run-dir"))
            except SqlError as exc:
                error = exc
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
            if refused and error is None:
                error = UsageError(f"the run directory {self.run_dir} is being written by another process",
                                   hint="process 0 of this job was refused its lock; see its error line")
        if error is not None:
            raise error

    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def resume(self, abstract_for: Callable[[dict], Any], *,
               metrics_step_for: Callable[[dict], int] | None = None) -> tuple[Any, dict, int] | None:
        """(state, meta, step) of the newest intact checkpoint, or None for a run without checkpoints.

        abstract_for(meta) gives the restore target. Damaged newer checkpoints are reported as warnings and
        moved to RUN/damaged-checkpoints/ (their steps will be saved again); none intact is a DataError
        (exit 3). Metric lines past the checkpoint (past metrics_step_for(meta) if given) are dropped.
        """
        if self.checkpointer.latest_step() is None:
            return None
        state, meta, step, damaged = self.checkpointer.restore_intact(abstract_for)
        if damaged:
            if self.write:
                self.checkpointer.set_aside([bad for bad, _ in damaged])
            _sync_processes("sql-set-aside")
            self.checkpointer.manager.reload()
        self.metrics.resume(step if metrics_step_for is None else metrics_step_for(meta))
        return state, meta, step

    def start_fresh(self) -> None:
        """A run without a checkpoint: drop the metric lines of an attempt killed before its first save."""
        self.metrics.reset()

    def log(self, record: dict) -> dict:
        """Append a metrics record (flat columns, `kind` train unless given); returns the record as written."""
        try:
            return self.metrics.log(record)
        except OSError as exc:
            raise from_os_error(exc, f"writing {self.metrics_path}") from None

    def save(self, step: int, state: Any, meta: Any, *, force: bool = False) -> bool:
        return self.checkpointer.save(step, state, meta, force=force)

    def wait(self) -> None:
        self.checkpointer.wait()

    def close(self) -> None:
        try:
            self.metrics.close()
            self.checkpointer.close()
        finally:
            self._lock.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()  # finishes the saves in flight: they hold finite states
        except SqlError:
            pass  # the error that stopped the run is the one to report
        if isinstance(exc, NonFiniteError):
            exc.with_checkpoint(self.run_dir, self.checkpointer.latest_step())


def _sync_processes(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def final_eval_is_current(path: Path, key: str, value: int) -> bool:
    """Whether RUN/eval/final.json exists and was written for `finetune.<key> == value` (e.g. grad_steps)."""
    return path.exists() and json.loads(path.read_text()).get("finetune", {}).get(key) == value


def write_final_eval(path: Path, *, command: str, run_config: dict, seed: int, eval_config, results,
                     run_dir: Path, step: int, arch: str, num_params: int, finetune: dict) -> dict:
    """RUN/eval/final.json: the eval result schema (docs/architecture.md) plus the fine-tuning block."""
    from sqlcli_core.evaluation import evaluate as evaluation
    from sqlcli_core.provenance import provenance

    result = {
        "provenance": provenance(command, {**run_config, "eval": eval_config.play_settings()}, seed),
        "protocol": evaluation.protocol_block(eval_config),
        "policy": {"kind": "checkpoint", "run": str(Path(run_dir).absolute()), "step": step, "arch": arch,
                   "num_params": int(num_params)},
        **evaluation.summarize(results, eval_config),
        "finetune": finetune,
    }
    write_json(path, result)
    from sqlcli_core.evaluation.eval_events import write_eval_events

    write_eval_events(run_dir, result)  # and into the run's TensorBoard events
    return result

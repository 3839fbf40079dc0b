"""One run lifecycle for the three training commands (pretrain, finetune-offline, finetune-online).

    validate settings -> check_resume_settings -> TrainingRun(...)    lock taken, run.json written or checked,
                                                                      Orbax opened
      -> run.resume(abstract_for) + the runner's own checks           newest intact checkpoint (checksums
                                                                      verified), metrics.jsonl cut back to it
         -> run.accept(), or start_fresh()                            run.json (re)written: only now
      -> the command's own loop, calling run.log(record) and run.save(step, state, meta)
         (records go to RUN/metrics.jsonl and RUN/tensorboard/: runs/metrics.py)
      -> run.wait() -> write_final_eval(...) for the fine-tuning commands -> run.close()   lock released

A non-finite state is never saved (NonFiniteError, exit 6); the error leaving the `with TrainingRun` block
names the last good checkpoint.

Each runner (training/pretrain.py, finetune_offline.py, finetune_online.py) reads as its recipe: what it
builds, what it feeds the loop; opening, resuming and closing the run directory are written here once.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core import locks
from sqlcli_core.atomic import write_json
from sqlcli_core.errors import NonFiniteError, SqlError, UsageError, from_os_error
from sqlcli_core.runs.checkpointer import Checkpointer
from sqlcli_core.runs.metrics import MetricsLog
from sqlcli_core.runs.run_record import RUN_FILE, prepare_run_dir


class TrainingRun:
    """An open run directory: the writer lock taken, run.json checked against the identity (and written by
    `accept` once the resume is accepted, or at a fresh start), an Orbax checkpointer, and the metrics file.

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
        # A directory this invocation creates is removed again if the run fails before its first checkpoint
        # (out of memory, a refusal, an interrupt): nothing half-created is left behind.
        self._created = write and not self.run_dir.exists()
        self._lock = contextlib.ExitStack()
        self._locked = False
        try:
            self._take_lock(command)
            # Checked now (a run of another identity is refused here), written by `accept`: a resume the
            # runner then refuses (its sampler or data changed) must leave run.json describing the
            # checkpoints that are there.
            self.record = prepare_run_dir(self.run_dir, identity=identity, config=config,
                                          parameter_counts=parameter_counts, seed=seed, command=command, write=False)
            self._accepted = False
            self.checkpointer = Checkpointer(self.run_dir, identity, every=checkpoint_every, keep=keep)
        except BaseException:
            self._remove_if_created()
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
                self._locked = True
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

    def resume_or_start(self, abstract_for: Callable[[dict], Any], *, restore: Callable[[Any, dict, int], Any],
                        start: Callable[[], Any], metrics_step_for: Callable[[dict], int] | None = None
                        ) -> tuple[Any, int | None]:
        """(what restore or start returned, the step resumed from or None): the one resume-or-fresh of the runners.

        restore(state, meta, step) gets the newest intact checkpoint (`resume`) and puts the runner's own state
        back (the sampler's position, the replay...); its refusal leaves run.json as it was, since the resume is
        accepted only once it returns. start() builds a fresh run's state; run.json is then written and the
        metric lines of an attempt killed before its first save are dropped."""
        resumed = self.resume(abstract_for, metrics_step_for=metrics_step_for)
        if resumed is None:
            value = start()
            self.start_fresh()
            return value, None
        value = restore(*resumed)
        self.accept()
        return value, resumed[2]

    def accept(self) -> None:
        """Record this invocation's settings in RUN/run.json: called once the runner has accepted the resume
        (restored its own state from the checkpoint's meta) or starts fresh. Idempotent; saving and logging
        call it too, so that no checkpoint or metric line exists without run.json describing it."""
        if self._accepted:
            return
        self._accepted = True
        if not self.write:
            return
        path = self.run_dir / RUN_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(path, self.record)
        except OSError as exc:
            raise from_os_error(exc, f"writing {path}") from None

    def start_fresh(self) -> None:
        """A run without a checkpoint: record its settings and drop the metric lines of an attempt killed before
        its first save."""
        self.accept()
        self.metrics.reset()

    def log(self, record: dict) -> dict:
        """Append a metrics record (flat columns, `kind` train unless given); returns the record as written."""
        self.accept()
        try:
            return self.metrics.log(record)
        except OSError as exc:
            raise from_os_error(exc, f"writing {self.metrics_path}") from None

    def save(self, step: int, state: Any, meta: Any, *, force: bool = False) -> bool:
        self.accept()
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
            try:
                self.metrics.close()
                self.checkpointer.close()  # finishes the saves in flight: they hold finite states
            except SqlError:
                pass  # the error that stopped the run is the one to report
            if isinstance(exc, NonFiniteError):
                exc.with_checkpoint(self.run_dir, self.checkpointer.latest_step())
            elif self.checkpointer.latest_step() is None:
                self._remove_if_created()
        finally:
            self._lock.close()

    def _remove_if_created(self) -> None:
        """Remove the run directory when this invocation created it and holds its lock: a fresh run that
        failed before its first checkpoint leaves nothing (a refused second writer never touches it)."""
        if self._created and self._locked:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _sync_processes(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)





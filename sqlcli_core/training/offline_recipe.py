"""The offline recipe, shared by `sql pretrain` and `sql finetune-offline`: a sampler feeds the method's update step
in a run directory, resumable at any checkpoint.

    TrainingRun(run_dir, identity, run.json config)        lock, run.json checked, Orbax opened (runs/lifecycle.py)
      -> resume_or_start: the newest intact checkpoint     train state + every process's sampler position
         or the initial state                              (run.json written only once accepted)
      -> Prefetcher(sampler) -> fit(train_step)            metrics lines (run.log), checkpoints (run.save)
      -> wait -> finish(run, state)                        the caller's last act in the open run (finetune's eval)

Each runner builds what differs (network and train state, sampler, identity and run.json config; its summary)
and hands it here; the lifecycle is written once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from sqlcli_core.errors import UsageError
from sqlcli_core.methods.registry import Method
from sqlcli_core.runs.lifecycle import TrainingRun
from sqlcli_core.training.loop import Prefetcher, fit
from sqlcli_core.training.mesh import batch_sharding
from sqlcli_core.training.update import TrainState


@dataclasses.dataclass(frozen=True)
class OfflineRun:
    """One offline run: where it is written and what run.json records (`TrainingRun`'s arguments), and how long
    it trains, logs and checkpoints."""

    run_dir: str | Path
    command: str
    identity: dict
    config: dict  # run.json's `config`
    parameter_counts: dict
    seed: int
    steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    keep: int
    prefetch: int = 2
    write: bool = True  # this process writes run.json and metrics (process 0 of a distributed job)


@dataclasses.dataclass(frozen=True)
class OfflineResult:
    state: TrainState
    start_step: int
    resumed_from: int | None
    last_metrics: dict | None
    checkpoint_step: int | None
    metrics_path: Path
    finished: Any  # what `finish` returned


def train_offline(run: OfflineRun, *, sampler, mesh, train_step: Callable, method: Method,
                  game_names: Sequence[str], abstract_state: Any, initial_state: Callable[[], TrainState],
                  on_start: Callable[[int, int | None], None] | None = None,
                  on_log: Callable[[dict], None] | None = None, on_step: Callable[[int], None] | None = None,
                  finish: Callable[[TrainingRun, TrainState], Any] | None = None) -> OfflineResult:
    """Train (or resume) `run` up to `run.steps` gradient steps on batches of `sampler`; the caller closes it.

    abstract_state: the train state's shapes and shardings (the restore target); initial_state() the state of a
    fresh run. A resumed run continues exactly as an uninterrupted one: parameters, Adam state, step, RNG and
    every process's sampler position come back from the checkpoint. on_start(start_step, resumed_from) runs
    before the first step, on_log(record) with each metrics record (also in RUN/metrics.jsonl), on_step(step)
    after each step; finish(run, state) after the last save, with the run still open.
    """
    with TrainingRun(run.run_dir, command=run.command, identity=run.identity, config=run.config,
                     parameter_counts=run.parameter_counts, seed=run.seed, checkpoint_every=run.checkpoint_every,
                     keep=run.keep, write=run.write) as training:

        def restore(state, meta: dict, step: int) -> TrainState:
            saved = meta.get("sampler_states") or []
            if len(saved) != jax.process_count() or saved[jax.process_index()] is None:
                raise UsageError(f"checkpoint {step} was written by {len(saved)} processes, this run has "
                                 f"{jax.process_count()}", hint="resume with the same number of processes (devices may differ)")
            sampler.load_state_dict(saved[jax.process_index()])
            return TrainState(*state)

        state, resumed_from = training.resume_or_start(lambda meta: abstract_state, restore=restore,
                                                       start=initial_state)
        start_step = int(jax.device_get(state.step))
        if on_start is not None:
            on_start(start_step, resumed_from)

        def log(record: dict) -> None:
            record = {**record, "time": time.time()}
            training.log(record)
            if on_log is not None:
                on_log(record)

        def after_step(step: int, state: TrainState, sampler_state: dict) -> None:
            training.save(step, state, sampler_state, force=step == run.steps)  # else at multiples of checkpoint_every
            if on_step is not None:
                on_step(step)

        last = None
        if start_step < run.steps:
            with Prefetcher(sampler, batch_sharding(mesh), depth=run.prefetch) as batches:
                state, last = fit(train_step, state, batches, num_steps=run.steps, batch_size=run.batch_size,
                                  game_names=list(game_names), log_every=run.log_every, method=method, on_log=log,
                                  on_step=after_step, checkpoint_every=run.checkpoint_every)
        training.wait()
        finished = finish(training, state) if finish is not None else None
        return OfflineResult(state=state, start_step=start_step, resumed_from=resumed_from, last_metrics=last,
                             checkpoint_step=training.latest_step(), metrics_path=training.metrics_path,
                             finished=finished)

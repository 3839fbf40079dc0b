"""Feeding and driving the update: a device prefetcher, metric windows, and the step loop.

`fit` drives any jitted step of the form (state, batch) -> (state, metrics) from an iterator of
(device batch, sampler state) pairs; the method (`sqlcli_core.methods`) names the metrics it averages.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from sqlcli_core.errors import NonFiniteError
from sqlcli_core.methods.registry import Method, get_method
from sqlcli_core.training.mesh import put_batch
from sqlcli_core.training.update import TrainState


class Prefetcher:
    """Draws batches from a sampler and copies them to the devices in a background thread, `depth` ahead.

    Each item is (device batch, sampler state right after drawing it), so a checkpoint taken after
    consuming a batch records exactly the sampler position to resume from, however far ahead the thread
    has read. Errors in the thread are re-raised by `next()`.
    """

    def __init__(self, sampler, sharding: NamedSharding, depth: int = 2):
        self._sampler = sampler
        self._sharding = sharding
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sql-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                host_batch = self._sampler.next_batch()
                sampler_state = self._sampler.state_dict()
                item = (put_batch(host_batch, self._sharding), sampler_state)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._queue.put(exc)

    def __iter__(self) -> Iterator[tuple[Any, dict]]:
        return self

    def __next__(self) -> tuple[Any, dict]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the prefetch thread stopped without an error") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch in hand) and drop what it prefetched."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def summarize_metrics(window: list[dict], game_names: Sequence[str], method: Method | None = None) -> dict:
    """Average the step metrics of one logging window (host numpy dicts) into one JSON-able record.

    Scalars (`method.scalar_metrics`) are plain means over the steps; the per-game loss (step metric
    `method.game_metric`) becomes one column per game, `<per_game_metric>/<Game>` (e.g. `td_loss/Pong`),
    weighted by each game's sample count, next to `samples/<Game>`; games without samples in the window are
    left out.
    """
    method = get_method(None) if method is None else method
    record = {k: float(np.mean([m[k] for m in window])) for k in method.scalar_metrics}
    counts = np.sum([m["game_count"] for m in window], axis=0)
    sums = np.sum([m[method.game_metric] * m["game_count"] for m in window], axis=0)
    sampled = [(g, name) for g, name in enumerate(game_names) if counts[g] > 0]
    record.update({f"{method.per_game_metric}/{name}": float(sums[g] / counts[g]) for g, name in sampled})
    record.update({f"samples/{name}": int(counts[g]) for g, name in sampled})
    return record


def check_finite(metrics: Sequence[dict], first_step: int, unit: str = "step") -> None:
    """Raise NonFiniteError naming the first step whose `finite` flag is false (host metric dicts of the
    consecutive steps first_step, first_step + 1, ...; `unit` names them in the message)."""
    for offset, m in enumerate(metrics):
        if "finite" in m and not bool(m["finite"]):
            raise NonFiniteError(f"training diverged: the loss or the parameters became non-finite at {unit} "
                                 f"{first_step + offset}", step=first_step + offset)


def fit(step_fn, state: TrainState, batches: Iterator[tuple[Any, dict]], *, num_steps: int,
        batch_size: int, game_names: Sequence[str], log_every: int = 100, method: Method | None = None,
        on_log: Callable[[dict], None] | None = None,
        on_step: Callable[[int, TrainState, dict], None] | None = None,
        checkpoint_every: int | None = None) -> tuple[TrainState, dict | None]:
    """Run `step_fn` from `state.step` up to `num_steps`, logging every `log_every` steps.

    on_log(record) receives the averaged metrics of each window plus `step`, `steps_per_s`, `samples_per_s`
    (rates exclude the first step of the invocation, which compiles; None for a window of only that step);
    on_step(step, state, sampler_state) runs after every step (checkpointing, progress). method: the
    method of `step_fn` (names the metrics; default scaled-ql). Metrics are
    fetched from the devices only once per window, so dispatch runs ahead of the host.
    Divergence: each step's `finite` flag (loss and parameters) is read with the window at log points, and
    also before on_step at multiples of `checkpoint_every` (and the last step), where on_step may save: a
    non-finite step raises NonFiniteError naming it, before anything of it is logged or saved.
    Returns the final state and the last record (None when no step ran).
    """
    step = int(jax.device_get(state.step))
    pending: list[dict] = []
    unchecked: list[Any] = []  # `finite` flags not yet read, of steps step - len + 1 .. step
    last_record = None
    tick, tick_step, timed = time.perf_counter(), step, False
    while step < num_steps:
        batch, sampler_state = next(batches)
        state, metrics = step_fn(state, batch)
        step += 1
        pending.append(metrics)
        unchecked.append(metrics.get("finite", True))
        if not timed:  # the first step of an invocation includes compilation: rates start after it
            jax.block_until_ready(metrics)
            tick, tick_step, timed = time.perf_counter(), step, True
        logging_now = step % log_every == 0 or step == num_steps
        saving = checkpoint_every is not None and (step % checkpoint_every == 0 or step == num_steps)
        if saving and not logging_now:
            check_finite([{"finite": f} for f in jax.device_get(unchecked)], step - len(unchecked) + 1)
            unchecked = []
        if logging_now:
            window = jax.device_get(pending)
            check_finite(window, step - len(window) + 1)
            pending, unchecked = [], []
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9) if step > tick_step else None
            tick, tick_step = now, step
            last_record = {"step": step, **summarize_metrics(window, game_names, method), "steps_per_s": rate,
                           "samples_per_s": None if rate is None else rate * batch_size}
            if on_log is not None:
                on_log(last_record)
        if on_step is not None:
            on_step(step, state, sampler_state)
    return state, last_record

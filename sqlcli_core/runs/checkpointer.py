"""Run directories, Orbax checkpoints, resuming, and loading a trained policy.

    RUN/run.json          config (network, learner, games, num_actions, data), parameter counts, provenance
    RUN/metrics.jsonl     one JSON object per logging step
    RUN/checkpoints/N/    Orbax checkpoint of step N: item `state` (params, target params, Adam state, step,
                          RNG) and item `meta` (JSON: the run's identity and every process's sampler state)

A checkpoint is only ever restored into a run of the same identity (network config and game list): the
identity is compared before any array is read, so a mismatch is a one-line error, not a shape error deep in
Orbax. Arrays are restored with the caller's shardings, so a run saved on 8 devices resumes on 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sqlcli_core.errors import DataError, NonFiniteError, SqlError, SqlWarning, UsageError, from_os_error
from sqlcli_core.runs import checksums
from sqlcli_core.runs.run_record import _identity_difference

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged-checkpoints"










# ---------------------------------------------------------------------------------------------------------
# The run directory








# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _gather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-able), in process order. Collective: all processes must call it."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    longest = int(np.max(lengths))
    padded = np.zeros((longest,), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), longest)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, np.ravel(lengths))]


class Checkpointer:
    """An Orbax CheckpointManager for one run: async saves every `every` steps, keeps the newest `keep`.

    `save` is collective (every process calls it; Orbax writes each array once); the sampler states of
    all processes are gathered into the JSON item, indexed by process. Every save carries the checksums of
    what it saves (`integrity`) and refuses a non-finite state; `restore_intact` verifies them and falls
    back to the newest intact checkpoint.
    """

    def __init__(self, run_dir: str | os.PathLike, identity: dict, *, every: int = 1000, keep: int = 3,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        if every < 1 or keep < 1:
            raise UsageError("--checkpoint-every and --keep must be at least 1", hint="e.g. --checkpoint-every 1000 --keep 3")
        self.directory = Path(run_dir).absolute() / CHECKPOINT_DIR
        self.identity = identity
        self.every = every
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # `save` decides; Orbax would also save the first step it sees
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=not read_only, read_only=read_only)
        with orbax_errors(f"opening the checkpoints in {self.directory}"):
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, sampler_state: dict | None, *, force: bool = False) -> bool:
        """Save when `step` is a multiple of `every` (or `force`); returns whether a save started.

        A state with a non-finite float in its params, target params or optimizer state is never saved
        (NonFiniteError, exit 6).
        """
        if not force and step % self.every:
            return False
        if step in self.manager.all_steps():
            return False
        bad = checksums.first_non_finite(state)
        if bad is not None:
            raise NonFiniteError(f"training diverged: the {bad} hold non-finite values at step {step}",
                                 step=step)
        sampler_states = _gather_json(sampler_state)
        meta = checksums.seal_meta({"step": int(step), "identity": self.identity, "process_count": jax.process_count(),
                                    "sampler_states": sampler_states}, checksums.state_checksums(state))
        ocp = self._ocp
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            return bool(self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True))

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON item of checkpoint `step` (default: newest), checked against its own checksum."""
        step = self._step_or_latest(step)
        ocp = self._ocp
        try:
            meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as exc:  # Orbax raises many kinds for a missing or unparsable item
            raise checksums.CheckpointDamaged(f"its JSON item cannot be read ({_first_line(exc)})") from None
        checksums.verify_meta(meta)
        return meta

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of checkpoint `step` (default: newest), arrays placed as `abstract_state` says.

        Refuses, before reading arrays, a checkpoint whose identity differs from this run's; a damaged
        checkpoint is a DataError naming it (`restore_intact` falls back instead).
        """
        step = self._step_or_latest(step)
        try:
            return self._restore_verified(lambda meta: abstract_state, step)
        except checksums.CheckpointDamaged as exc:
            raise damaged_error(self.directory / str(step), exc.reason) from None

    def restore_intact(self, abstract_for: Callable[[dict], Any], step: int | None = None
                       ) -> tuple[Any, dict, int, list[tuple[int, str]]]:
        """(state, meta, step, damaged) of the newest intact checkpoint (or of `step`, which must be intact).

        abstract_for(meta) gives the restore target (shapes and shardings) of a checkpoint. damaged: the
        (step, reason) of every newer checkpoint that failed verification; each is also a SqlWarning.
        None of them intact: a DataError (exit 3) naming them.
        """
        candidates = [self._step_or_latest(step)] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not candidates:
            raise DataError(f"no checkpoint in {self.directory}", hint="train with `sql pretrain` first")
        damaged: list[tuple[int, str]] = []
        for candidate in candidates:
            try:
                state, meta = self._restore_verified(abstract_for, candidate)
            except checksums.CheckpointDamaged as exc:
                damaged.append((candidate, exc.reason))
                continue
            for bad, reason in damaged:
                warnings.warn(f"checkpoint {self.directory / str(bad)} is damaged ({reason}); using checkpoint "
                              f"{candidate} instead", SqlWarning, stacklevel=2)
            return state, meta, candidate, damaged
        bad, reason = damaged[0]
        raise damaged_error(self.directory / str(bad), reason, others=len(damaged) - 1)

    def _restore_verified(self, abstract_for: Callable[[dict], Any], step: int):
        meta = self.read_meta(step)
        diff = _identity_difference(meta.get("identity", {}), self.identity)
        if diff is not None:
            raise UsageError(f"checkpoint {self.directory / str(step)} belongs to a different run ({diff})",
                             hint="restore it with the settings it was trained with, or pass another --run-dir")
        abstract = abstract_for(meta)
        ocp = self._ocp
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as exc:  # a truncated or missing array file: Orbax raises many kinds
            raise checksums.CheckpointDamaged(f"its arrays cannot be read ({_first_line(exc)})") from None
        state = jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(restored.state))
        checksums.verify_items(checksums.top_items(state), meta)
        return state, meta

    def set_aside(self, steps: Sequence[int]) -> Path | None:
        """Move damaged checkpoints out of the way (to RUN/damaged-checkpoints/), so that new saves can take
        their steps; returns the folder. Only the writing process calls this."""
        if not steps:
            return None
        aside = self.directory.parent / DAMAGED_DIR
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.directory / str(step), target)
            except OSError as exc:
                raise from_os_error(exc, f"moving the damaged checkpoint {step} aside") from None
        self.manager.reload()
        return aside

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.manager.latest_step()
        if step is None:
            raise DataError(f"no checkpoint in {self.directory}", hint="train with `sql pretrain` first")
        if step not in self.manager.all_steps():
            raise DataError(f"no checkpoint of step {step} in {self.directory}",
                            hint=f"available steps: {self.manager.all_steps()}")
        return step

    def wait(self) -> None:
        """Block until async saves are on disk."""
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            self.manager.wait_until_finished()
            self.manager.close()


def damaged_error(path: Path, reason: str, others: int = 0) -> DataError:
    more = f" (and {others} older checkpoint{'s' if others > 1 else ''} too)" if others else ""
    return DataError(f"checkpoint {path} is damaged: {reason}{more}",
                     hint="no intact checkpoint to use; restore the run directory from a copy or train again")


def _first_line(exc: BaseException) -> str:
    """`Type: first sentence` of an exception, short enough for a one-line error."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". See full")[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError that caused `exc`, if any: Orbax wraps them, and TensorStore reports them as a ValueError
    whose text carries `[os_error_code='28']`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        found = re.search(r"os_error_code='(\d+)'", str(exc))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def orbax_errors(action: str):
    """OS errors raised by Orbax (directly, wrapped, or from its background save thread) as one-line
    SqlErrors: a full disk is exit 5, a read-only or unusable path exit 2 (`errors.from_os_error`)."""
    try:
        yield
    except SqlError:
        raise
    except Exception as exc:
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        raise from_os_error(os_error, action) from None


# ---------------------------------------------------------------------------------------------------------
# Loading a policy














def saved_param_shapes(directory: Path) -> dict[str, dict[str, tuple]]:
    """{module: {name: shape}} of the `params` saved in a checkpoint's state item, from Orbax's metadata only."""
    import orbax.checkpoint as ocp

    try:
        meta = ocp.PyTreeCheckpointer().metadata(directory)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        params = tree.get("params") if hasattr(tree, "get") else None
    except Exception as exc:  # Orbax raises many kinds for unreadable metadata
        raise checksums.CheckpointDamaged(f"its array metadata cannot be read ({_first_line(exc)})") from None
    if not params:
        raise DataError(f"checkpoint {directory} holds no network parameters",
                        hint="pass a run written by `sql pretrain`")
    return {module: {name: tuple(getattr(leaf, "shape", ()) or ()) for name, leaf in leaves.items()}
            for module, leaves in params.items()}

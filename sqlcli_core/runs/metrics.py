"""The metrics of a run: RUN/metrics.jsonl, the record of truth, and TensorBoard event files beside it.

Every record is one flat JSON object (docs/metrics.md): `step` (int: gradient steps, agent steps for
finetune-online), `kind` ("train" or "eval"), scalar columns, and per-game values as `<metric>/<Game>`
columns (`td_loss/Pong`), so that `pandas.read_json("RUN/metrics.jsonl", lines=True)` is a usable frame.
The same scalars go to RUN/tensorboard/ as `<kind>/<column>` tags (tensorboardX: no TensorFlow needed).

A resumed run keeps the lines up to its checkpoint and tells TensorBoard to hide the later events of the
attempt that died (`purge_step`); a fresh start removes both.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlcli_core.atomic import append_jsonl, atomic_output

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
KINDS = ("train", "eval")
# Columns that index a record rather than measure something: not TensorBoard scalars.
INDEX_COLUMNS = ("step", "kind", "time", "final")


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become `outer/inner` columns: {"td_loss": {"Pong": 0.1}} -> {"td_loss/Pong": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """{`<kind>/<column>`: value} of a flat record's numeric columns (not booleans, lists or the index)."""
    kind = record.get("kind", "train")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in INDEX_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool)}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN/metrics.jsonl (a line cut by a crash is skipped); [] when there is none."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """RUN/metrics.jsonl plus RUN/tensorboard/, written by the primary process only (`write`).

    Call `resume(step)` or `reset()` once before the first `log`: the TensorBoard writer is opened then,
    knowing from which step on the events of an earlier attempt are stale.
    """

    def __init__(self, run_dir: str | Path, *, write: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.tensorboard_dir = self.run_dir / TENSORBOARD_DIR
        self.write = write
        self.tensorboard = tensorboard
        self._purge_step: int | None = None
        self._writer = None

    def resume(self, step: int) -> None:
        """Continue after checkpoint `step`: lines past it are dropped, TensorBoard hides later events."""
        if not self.write:
            return
        self.drop(lambda record: record.get("step", 0) > step)
        self._purge_step = step + 1

    def reset(self) -> None:
        """A run without a checkpoint: drop what an attempt killed before its first save had logged."""
        if not self.write:
            return
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.tensorboard_dir, ignore_errors=True)
        self._purge_step = None

    def drop(self, unwanted: Callable[[dict], bool]) -> None:
        """Rewrite metrics.jsonl without the records `unwanted` picks (and lines cut by a crash), atomically."""
        if not self.write or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if not unwanted(json.loads(line)):
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        if len(kept) != len(lines):
            with atomic_output(self.path, "w") as f:
                f.write("".join(line + "\n" for line in kept))

    def log(self, record: Mapping[str, Any]) -> dict:
        """Append one record (flattened; `kind` "train" unless given) and its scalars; returns what was written."""
        flat = flatten(record)
        flat = {"step": flat.get("step"), "kind": flat.get("kind", "train"), **flat}  # the index first
        if flat["kind"] not in KINDS:
            raise ValueError(f"metrics record kind must be one of {KINDS}, got {flat['kind']!r}")
        if self.write:
            append_jsonl(self.path, flat)
            if self.tensorboard:
                self._write_event(flat)
        return flat

    def _write_event(self, flat: Mapping[str, Any]) -> None:
        """One event with the record's finite scalars, written and flushed at once (tensorboardX's
        SummaryWriter queues events for a background thread: a kill would lose what the metrics file has)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars(flat).items()
                  if math.isfinite(value)]
        writer = self._tensorboard_writer()
        writer.write_event(Event(wall_time=flat.get("time") or time.time(), step=int(flat["step"]),
                                 summary=Summary(value=values)))
        writer.flush()

    def _tensorboard_writer(self):
        if self._writer is None:
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            # Each invocation writes its own file; the number orders files made within the same second.
            number = len(list(self.tensorboard_dir.glob("events.out.tfevents.*")))
            self._writer = EventsWriter(str(self.tensorboard_dir / "events"), filename_suffix=f".{number:04d}")
            if self._purge_step is not None:  # TensorBoard hides the earlier events at steps >= purge_step
                self._writer.write_event(Event(wall_time=time.time(), step=self._purge_step,
                                               session_log=SessionLog(status=SessionLog.START)))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

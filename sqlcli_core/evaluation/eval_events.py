"""An eval result of a run, in the run's TensorBoard events (RUN/tensorboard/) beside its training scalars.

Whenever an eval result is written for a run (`sql eval RUN`, the fine-tuning final evaluations), its numbers
go into one event at the checkpoint's step, with tags that follow the result file's layout:

- `eval/games/<Game>/mean` (raw score, mean over episodes), `eval/games/<Game>/human_normalized` (where the
  game has reference scores);
- `eval/aggregates/<iqm|median|mean>` (human-normalized) and `.../<name>_ci95_low`, `..._ci95_high`.

The step is the one the run's training scalars use: the checkpoint's step (gradient steps; agent steps for
finetune-online, whose final result records them in `finetune.agent_steps`). The run's settings from run.json
go in as TensorBoard hparams with the aggregates as their metrics, so the HParams tab compares runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # the folder training/metrics.py writes (RUN/tensorboard)


def eval_step(result: Mapping[str, Any]) -> int | None:
    """The step an eval result belongs to on the run's axis (None for a result without a checkpoint step)."""
    finetune = result.get("finetune") or {}
    step = finetune.get("agent_steps", (result.get("policy") or {}).get("step"))
    return None if step is None else int(step)


def eval_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """{tag: value} of an eval result's per-game scores and aggregates (finite values only)."""
    scalars: dict[str, float] = {}
    for game, block in result.get("games", {}).items():
        scalars[f"eval/games/{game}/mean"] = block.get("mean")
        scalars[f"eval/games/{game}/human_normalized"] = block.get("human_normalized")
    for name, block in result.get("aggregates", {}).items():
        scalars[f"eval/aggregates/{name}"] = block.get("value")
        low, high = block.get("ci95") or (None, None)
        scalars[f"eval/aggregates/{name}_ci95_low"] = low
        scalars[f"eval/aggregates/{name}_ci95_high"] = high
    return {tag: float(v) for tag, v in scalars.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_hparams(run_record: Mapping[str, Any]) -> dict[str, str | float | bool]:
    """Flat TensorBoard hparams from run.json: the method, the network settings, the number of games and
    parameters, the seed and the command's scalar settings (lists and nested blocks left out)."""
    identity = run_record.get("identity") or {}
    hparams: dict[str, Any] = {"method": identity.get("method") or "scaled-ql",
                               "num_games": len(identity.get("games") or ()),
                               "num_parameters": run_record.get("num_parameters"),
                               "seed": run_record.get("seed")}
    for key, value in (identity.get("network") or {}).items():
        hparams[f"network/{key}"] = value
    for key, value in (run_record.get("config") or {}).items():
        hparams[f"config/{key}"] = value
    return {k: v for k, v in hparams.items() if isinstance(v, (str, bool, int, float))
            and not (isinstance(v, float) and not math.isfinite(v))}


def write_eval_events(run_dir: str | Path, result: Mapping[str, Any]) -> Path | None:
    """Append one event file to RUN/tensorboard with the result's scalars (and the run's hparams) at its step.

    Returns the file, or None when the result has no step or no scalars. Written and closed at once (the
    training writer's file is not touched: each writer owns its file, TensorBoard reads them all)."""
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.summary import hparams as hparams_summaries

    step = eval_step(result)
    scalars = eval_scalars(result)
    if step is None or not scalars:
        return None
    folder = Path(run_dir) / TENSORBOARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob("events.out.tfevents.*")))  # orders files written within the same second
    writer = EventsWriter(str(folder / "events"), filename_suffix=f".{number:04d}.eval")
    try:
        now = time.time()
        writer.write_event(Event(wall_time=now, step=step, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()])))
        try:
            record = json.loads((Path(run_dir) / "run.json").read_text())
        except (OSError, ValueError):
            record = None
        if record:
            # the HParams tab's metric columns: the aggregates, or each game's score where there are none
            metrics = {tag: value for tag, value in scalars.items() if tag.startswith("eval/aggregates/")} or scalars
            for summary in hparams_summaries(run_hparams(record), metrics):
                writer.write_event(Event(wall_time=now, step=step, summary=summary))
        writer.flush()
    finally:
        writer.close()
    return Path(writer._file_name)

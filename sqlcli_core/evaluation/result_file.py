"""Reading evaluation numbers back from files: numbers where numbers belong, intervals as two ordered numbers.

scale-report reads RUN/eval/*.json (the eval result schema, docs/eval.md) and `sql plot` the `eval` records of
RUN/metrics.jsonl. A value of the wrong shape there (a hand edit, a truncated copy, another tool's file) must
not be dropped quietly, which would draw a point without its error bar or fit a score that is not one: each
check below raises one DataError (exit 3) naming the file and the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlcli_core.errors import DataError


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict)) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(value: Any, path: str | Path, key: str, *, hint: str) -> float:
    """`value` as a float, or a DataError: '{path}: {key} is "x", not a finite number'."""
    if not is_number(value):
        raise DataError(f"{path}: {key} is {_shown(value)}, not a finite number", hint=hint)
    return float(value)


def interval(value: Any, path: str | Path, key: str, *, hint: str) -> tuple[float, float]:
    """`value` as (low, high): a list of two finite numbers with low <= high, or a DataError naming the key."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(is_number(v) for v in value)
            or value[0] > value[1]):
        raise DataError(f"{path}: {key} is {_shown(value)}, not an interval [low, high] of two ordered finite "
                        "numbers", hint=hint)
    return float(value[0]), float(value[1])


def aggregate(result: Mapping[str, Any], path: str | Path, metric: str, *,
              hint: str) -> tuple[float | None, tuple[float, float] | None]:
    """(value, ci95) of `aggregates.<metric>` in an eval result.

    (None, None) when the file has no such aggregate (an eval of games without human reference scores: the
    caller says so in its own words). Present but malformed is a DataError naming the file and the key: an
    aggregate that is not an object, a value that is not a finite number, a ci95 that is not two ordered
    numbers.
    """
    aggregates = result.get("aggregates")
    if aggregates is None:
        return None, None
    if not isinstance(aggregates, Mapping):
        raise DataError(f"{path}: aggregates is {_shown(aggregates)}, not an object", hint=hint)
    block = aggregates.get(metric)
    if block is None:
        return None, None
    if not isinstance(block, Mapping):
        raise DataError(f"{path}: aggregates.{metric} is {_shown(block)}, not an object {{value, ci95}}", hint=hint)
    value = number(block.get("value"), path, f"aggregates.{metric}.value", hint=hint)
    return value, interval(block.get("ci95"), path, f"aggregates.{metric}.ci95", hint=hint)


def eval_record(record: Mapping[str, Any], path: str | Path, *, hint: str) -> tuple[float, float, float]:
    """(step, mean, std) of an `eval` record of metrics.jsonl; a DataError names the file, the step and the key."""
    step = number(record.get("step"), path, "an eval record's step", hint=hint)
    where = f"the eval record at step {step:g}"
    return (step, number(record.get("mean"), path, f"{where}: mean", hint=hint),
            number(record.get("std"), path, f"{where}: std", hint=hint))

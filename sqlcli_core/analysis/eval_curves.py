"""Evaluation score against training step, from a run's eval result files (RUN/eval/*.json), for `sql plot`.

Each result file is one point at its checkpoint's step (`evaluation.eval_events.eval_step`: gradient steps,
agent steps for finetune-online). Its value is the human-normalized IQM with its 95% stratified bootstrap
interval where the result has aggregates, or else, for a one-game result without reference scores, that game's
raw mean with a bootstrap interval over runs. Several results at the same step (other seeds or games): the
newest file counts. Results whose play deviated from the protocol (capped episodes) are marked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlcli_core.analysis.eval_chart import game_intervals
from sqlcli_core.evaluation import result_file
from sqlcli_core.evaluation.eval_events import eval_step

EVAL_FOLDER = "eval"
NORMALIZED, RAW = "eval IQM", "eval raw score"  # the two panels these points go to


def eval_point(result: dict, path: str | Path = "the eval result") -> dict[str, Any] | None:
    """{step, panel, value, ci95, deviates} of one result, None when it has no step or no single value.

    An aggregate of the wrong shape (a ci95 that is not two ordered numbers, a value that is not a number) is
    a DataError (exit 3) naming `path` and the key: a point is drawn with its error bar or not at all."""
    step = eval_step(result)
    if step is None:
        return None
    deviates = bool((result.get("protocol") or {}).get("deviates_from_protocol"))
    value, ci95 = result_file.aggregate(result, path, "iqm", hint=f"re-run `sql eval`, or remove {Path(path).name}")
    if value is not None:
        return {"step": step, "panel": NORMALIZED, "value": value, "ci95": list(ci95), "deviates": deviates}
    if len(result.get("games") or {}) == 1:
        (row,) = game_intervals(result)
        return {"step": step, "panel": RAW, "value": row["value"], "ci95": row["ci95"], "deviates": deviates}
    return None


def eval_points(run_dir: str | Path) -> list[dict[str, Any]]:
    """The points of RUN/eval/*.json in step order (newest file per step and panel); [] when there are none."""
    found: dict[tuple[str, int], tuple[str, dict]] = {}
    for path in sorted((Path(run_dir) / EVAL_FOLDER).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # not a result file (or one being written by another process): nothing to draw
        if not isinstance(result, dict) or "games" not in result:
            continue
        point = eval_point(result, path)
        if point is None:
            continue
        created = str((result.get("provenance") or {}).get("created", ""))
        key = (point["panel"], point["step"])
        if key not in found or created >= found[key][0]:
            found[key] = (created, {**point, "file": path.name})
    return sorted((p for _, p in found.values()), key=lambda p: (p["panel"], p["step"]))


def panels_of(points: Sequence[dict]) -> list[str]:
    return [panel for panel in (NORMALIZED, RAW) if any(p["panel"] == panel for p in points)]


def draw_eval_points(ax, panel: str, runs: Sequence[tuple[str, Sequence[dict]]], colors: Sequence[str]) -> None:
    """One line per run through its points, with 95% error bars; hollow markers where the play was capped."""
    import numpy as np

    scale = 100.0 if panel == NORMALIZED else 1.0
    capped = False
    for (_, points), color in zip(runs, colors):
        mine = [p for p in points if p["panel"] == panel]
        if not mine:
            continue
        steps = np.array([p["step"] for p in mine], float)
        values = np.array([p["value"] for p in mine]) * scale
        low = np.array([p["ci95"][0] for p in mine]) * scale
        high = np.array([p["ci95"][1] for p in mine]) * scale
        ax.errorbar(steps, values, yerr=np.stack([values - low, high - values]).clip(min=0), fmt="-", color=color,
                    capsize=3, lw=1.2)
        for step, value, p in zip(steps, values, mine):
            ax.plot([step], [value], "o", ms=5, color=color, mfc="white" if p["deviates"] else color)
            capped = capped or p["deviates"]
    if panel == NORMALIZED:
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        ax.set_title("eval: IQM human-normalized (%), 95% CI", fontsize=9)
    else:
        ax.set_title("eval: raw score (one game), 95% CI", fontsize=9)
    if capped:
        ax.plot([], [], "o", color="0.3", mfc="white", label="capped episodes (not the protocol)")

"""PNG figures of runs: learning curves (one run or several); eval results' figures are analysis/eval_chart.py.

Every figure is drawn on matplotlib's Agg canvas directly (no pyplot): no display needed, no global backend
set. Functions return PNG bytes; `write_*` put them on disk atomically.

Learning curves read RUN/metrics.jsonl (runs/metrics.py): one panel per scalar column of the training
records (loss first), one panel for the per-game metric (`td_loss/<Game>` columns: one line per game, for
a single run), and one for the evaluation score (kind "eval" records: mean with a +-std band).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.analysis import eval_curves
from sqlcli_core.analysis.figures import new_figure, png_bytes
from sqlcli_core.atomic import atomic_output
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.evaluation import result_file
from sqlcli_core.runs.metrics import INDEX_COLUMNS, read_metrics

LEARNING_CURVES_FILE = "learning_curves.png"
# Training columns that count or index rather than measure: not curves of their own.
NOT_CURVES = frozenset({*INDEX_COLUMNS, "grad_steps", "episodes", "samples_per_s"})
EVAL_PANEL = "eval score"
EVAL_RESULT = "eval_result"  # the kind of the records `compare_runs` makes of RUN/eval/*.json (eval_curves)
# What the common columns measure, for the panel titles (other columns are titled by their name).
PANEL_TITLES = {
    "loss": "loss (what the optimizer minimises)", "td_loss": "td_loss: distributional TD loss",
    "cql_loss": "cql_loss: conservative term", "q_data": "q_data: Q of the data's actions",
    "q_other": "q_other: Q of the other actions", "q_max": "q_max: max Q", "grad_norm": "grad_norm (before clipping)",
    "ce_loss": "ce_loss: cross-entropy", "steps_per_s": "throughput (gradient steps/s)",
    "agent_steps_per_s": "throughput (agent steps/s)", "episode_return_mean": "training episode return (mean)",
    "epsilon": "epsilon (exploration)",
}
MAX_GAME_LEGEND = 12  # more games than this: thin lines, no legend entry per game
COLUMNS = 3


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve_panels(records: Sequence[Mapping[str, Any]], per_game: bool = True) -> list[str]:
    """Panel names, in order: loss, the other scalar training columns, per-game metrics (`td_loss/*`), eval."""
    scalars: list[str] = []
    games: list[str] = []
    for record in records:
        if record.get("kind", "train") != "train":
            continue
        for key, value in record.items():
            if key in NOT_CURVES or not _is_number(value):
                continue
            if "/" in key:
                prefix = key.split("/", 1)[0]
                if per_game and prefix != "samples" and f"{prefix}/*" not in games:
                    games.append(f"{prefix}/*")
            elif key not in scalars:
                scalars.append(key)
    scalars.sort(key=lambda k: k != "loss")  # loss first, the rest in record order
    evals = [EVAL_PANEL] if any(r.get("kind") == "eval" for r in records) else []
    files = eval_curves.panels_of([r for r in records if r.get("kind") == EVAL_RESULT])
    return scalars + games + evals + files


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records
              if r.get("kind", "train") == "train" and _is_number(r.get(key))]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps, float), np.asarray(values, float)


def _draw_panel(ax, panel: str, runs: Sequence[tuple[str, Sequence[Mapping]]], colors: Sequence[str]) -> None:
    single = len(runs) == 1
    if panel in (eval_curves.NORMALIZED, eval_curves.RAW):
        eval_curves.draw_eval_points(ax, panel, [(label, [r for r in records if r.get("kind") == EVAL_RESULT])
                                                 for label, records in runs], colors)
    elif panel == EVAL_PANEL:
        for (_, records), color in zip(runs, colors):
            evals = [r for r in records if r.get("kind") == "eval" and _is_number(r.get("mean"))]
            if not evals:
                continue
            steps = np.array([r["step"] for r in evals], float)
            mean = np.array([r["mean"] for r in evals], float)
            std = np.array([r.get("std") or 0.0 for r in evals], float)
            ax.plot(steps, mean, "o-", color=color, ms=4)
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
            finals = [i for i, r in enumerate(evals) if r.get("final")]
            if finals:
                ax.plot(steps[finals], mean[finals], "*", color=color, ms=11,
                        label="final evaluation" if single else None)
        ax.set_title("evaluation score (mean +- std)", fontsize=9)
    elif panel.endswith("/*"):
        prefix = panel[:-2]
        label, records = runs[0]
        games = sorted({k.split("/", 1)[1] for r in records for k in r if k.startswith(f"{prefix}/")})
        many = len(games) > MAX_GAME_LEGEND
        cmap = [f"C{i % 10}" for i in range(len(games))]
        for game, color in zip(games, cmap):
            steps, values = _series(records, f"{prefix}/{game}")
            ax.plot(steps, values, "-", color=color, lw=0.7 if many else 1.2, alpha=0.6 if many else 1.0,
                    label=None if many else game)
        if many:  # 40 games: the spread, and the mean over games that had samples
            steps = sorted({r["step"] for r in records if r.get("kind", "train") == "train"})
            by_step = {s: [v for r in records if r.get("step") == s for k, v in r.items()
                           if k.startswith(f"{prefix}/") and _is_number(v)] for s in steps}
            kept = [s for s in steps if by_step[s]]
            ax.plot(kept, [np.mean(by_step[s]) for s in kept], "k-", lw=2, label=f"mean of {len(games)} games")
        ax.set_title(f"{prefix} per game", fontsize=9)
    else:
        for (_, records), color in zip(runs, colors):
            steps, values = _series(records, panel)
            ax.plot(steps, values, "-", color=color, lw=1.2)
        ax.set_title(PANEL_TITLES.get(panel, panel), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="y", useOffset=False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best", ncol=2 if panel.endswith("/*") else 1)


def learning_curves(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], *, panels: Sequence[str] | None = None,
                    step_label: str = "step", title: str | None = None) -> bytes:
    """PNG of learning curves. runs: (label, metrics records) each; one colour per run, one panel per metric.

    panels: metric names to draw (default: `curve_panels` of the first run, and of all runs together when
    comparing; per-game panels only for a single run).
    """
    if not runs or not any(records for _, records in runs):
        raise DataError("no metrics to plot", hint="train first: the run's metrics.jsonl is empty or missing")
    if panels is None:
        merged = [r for _, records in runs for r in records]
        panels = curve_panels(merged, per_game=len(runs) == 1)
    if not panels:
        raise DataError("the metrics hold no numeric columns to plot", hint="check RUN/metrics.jsonl")
    rows = math.ceil(len(panels) / COLUMNS)
    cols = min(COLUMNS, len(panels))
    top = 0.45 if len(runs) > 1 or title else 0.0  # inches for the title or the runs' legend
    fig = new_figure(4.2 * cols, 2.9 * rows + top)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, panel, runs, colors)
        if i >= len(panels) - cols:
            ax.set_xlabel(step_label, fontsize=8)
    if len(runs) > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, lw=2) for c in colors]
        fig.legend(handles, [label for label, _ in runs], loc="upper center", ncol=min(len(runs), 5), fontsize=8,
                   frameon=False)
    elif title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - top / fig.get_figheight()))
    return png_bytes(fig)


def step_label(run_dir: str | Path) -> str:
    """What `step` counts in a run's metrics: agent steps for finetune-online, gradient steps otherwise."""
    import json

    try:
        command = json.loads((Path(run_dir) / "run.json").read_text()).get("config", {}).get("command")
    except (OSError, ValueError):
        command = None
    return "agent steps" if command == "finetune-online" else "gradient steps"


def write_learning_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """RUN/learning_curves.png (or `out`) from RUN/metrics.jsonl; None when the run has no metrics yet."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return None
    png = learning_curves([(run_dir.name, records)], step_label=step_label(run_dir), title=str(run_dir.name))
    path = Path(out) if out is not None else run_dir / LEARNING_CURVES_FILE
    with atomic_output(path, "wb") as f:
        f.write(png)
    return path


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Base names of the runs, or the paths as given where two share a base name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, *, metrics: Sequence[str] | None = None) -> dict:
    """`sql plot`: one PNG comparing runs' learning curves. metrics: panel names (`loss`, `td_loss`, `eval`,
    per-game `td_loss/*` for a single run, or one game's column `td_loss/Pong`); default: every panel of
    `curve_panels` (per-game panels only for a single run)."""
    runs = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            raise UsageError(f"run {path} does not exist", hint="pass run directories of `sql pretrain` or `sql finetune-*`")
        records = read_metrics(path) + [{"kind": EVAL_RESULT, **p} for p in eval_curves.eval_points(path)]
        if not records:
            raise DataError(f"{path} has no metrics ({path / 'metrics.jsonl'} missing or empty) and no eval results",
                            hint="pass a run that has trained for at least one logging step")
        for record in records:  # an eval point is drawn with its band or refused (exit 3), never without it
            if record.get("kind") == "eval":
                result_file.eval_record(record, path / "metrics.jsonl",
                                        hint="the eval records were edited or damaged; re-run the evaluation")
        runs.append(records)
    labels = run_labels(run_dirs)
    available = curve_panels([r for records in runs for r in records], per_game=True)
    if metrics:
        eval_panels = [p for p in (EVAL_PANEL, eval_curves.NORMALIZED, eval_curves.RAW) if p in available]
        wanted = [p for m in metrics for p in ((eval_panels or [EVAL_PANEL]) if m == "eval" else [m])]
        columns = {k for records in runs for r in records for k in r}
        unknown = [m for m in wanted if m not in available and m not in columns]
        if "eval" in metrics and EVAL_PANEL in unknown:
            raise UsageError("no evaluation in these runs (no eval records in metrics.jsonl, no RUN/eval/*.json)",
                             hint="evaluate a checkpoint first: sql eval RUN")
        if unknown:
            raise UsageError(f"no metric {', '.join(unknown)} in these runs",
                             hint=f"choose from: {', '.join('eval' if p == EVAL_PANEL else p for p in available)}")
        panels = wanted
    else:
        panels = [p for p in available if len(runs) == 1 or not p.endswith("/*")]
    if len(runs) > 1 and any(p.endswith("/*") for p in panels):
        raise UsageError("a per-game panel (one line per game) shows one run",
                         hint="compare one game's column across runs instead, e.g. --metric td_loss/Pong")
    steps = {step_label(d) for d in run_dirs}
    png = learning_curves(list(zip(labels, runs)), panels=panels,
                          step_label=steps.pop() if len(steps) == 1 else "step (gradient or agent)")
    with atomic_output(out, "wb") as f:
        f.write(png)
    return {"out": str(out), "runs": [str(d) for d in run_dirs],
            "panels": ["eval" if p == EVAL_PANEL else p for p in panels]}

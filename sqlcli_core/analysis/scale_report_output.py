"""The scale report's outputs: the markdown and CSV tables, the plot and the JSON, written together by
`write_report` (the points and fits come from `scale_report`)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.analysis.power_law import CONFIDENCE
from sqlcli_core.analysis.scale_report import OUTPUT_STEM, PARAM_COUNTS, PowerLawFit, RunPoint
from sqlcli_core.atomic import atomic_output, write_json

POINT_COLUMNS = (
    "run", "arch", "width", "family", "method", "composition", "num_games", "params", "param_count", "metric",
    "score",
    "ci95_low", "ci95_high", "in_fit", "eval_file", "eval_step", "data_store",
)


def _point_rows(points: Sequence[RunPoint], fits: Sequence[PowerLawFit]) -> list[dict[str, Any]]:
    fitted = {name for f in fits if f.status != "none" for name in f.used}
    return [{
        "run": p.name, "arch": p.arch, "width": p.width, "family": p.family, "method": p.method,
        "composition": p.composition, "num_games": p.num_games, "params": p.params,
        "param_count": p.param_count, "metric": p.metric,
        "score": p.score, "ci95_low": p.ci_low, "ci95_high": p.ci_high,
        "in_fit": p.name in fitted, "eval_file": p.eval_file,
        "eval_step": p.eval_step, "data_store": p.data_store,
    } for p in points]


def fit_to_dict(fit: PowerLawFit) -> dict[str, Any]:
    d = dataclasses.asdict(fit)
    d["left_out"] = [{"run": r, "reason": why} for r, why in fit.left_out]
    d["used"] = list(fit.used)
    return d


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def render_markdown(points: Sequence[RunPoint], fits: Sequence[PowerLawFit], metric: str,
                    prov: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """The report as Markdown: one table of fits, one of points, and the provenance line."""
    out = io.StringIO()
    count = points[0].param_count if points else "total"
    out.write(f"# Scaling report: human-normalized {metric.upper()} vs parameters ({count})\n\n")
    out.write(f"x axis: {PARAM_COUNTS[count]}.\n")
    out.write(f"Fit: score = a * params^b (least squares in log-log space); b interval: "
              f"{CONFIDENCE:.0%} pairs-bootstrap percentile.\n\n")
    out.write("| group | status | points used | a | b | b 95% CI | R² (log) | left out |\n")
    out.write("|---|---|---|---|---|---|---|---|\n")
    for f in fits:
        ci = "-" if f.b_ci95 is None else f"[{f.b_ci95[0]:.4g}, {f.b_ci95[1]:.4g}]"
        left = "; ".join(f"{r} ({why})" for r, why in f.left_out) or "-"
        status = f.status if not f.note else f"{f.status}: {f.note}"
        out.write(f"| {f.label} | {status} | {len(f.used)}/{f.n_points} | {_fmt(f.a)} | {_fmt(f.b)} | {ci} "
                  f"| {_fmt(f.r2_log, 3)} | {left} |\n")
    out.write("\n| run | arch | width | method | composition | params | "
              f"{metric} | 95% CI | in fit | eval file |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for row in _point_rows(points, fits):
        ci = "-" if row["ci95_low"] is None else f"[{row['ci95_low']:.3g}, {row['ci95_high']:.3g}]"
        out.write(f"| {row['run']} | {row['arch']} | {_fmt(row['width'])} | {row['method']} | "
                  f"{row['composition']} | {row['params']:,} | {row['score']:.4g} | {ci} | "
                  f"{'yes' if row['in_fit'] else 'no'} | {Path(row['eval_file']).name} |\n")
    if notes:
        out.write("\nNotes:\n\n" + "".join(f"- {n}\n" for n in notes))
    versions = prov.get("versions", {})
    out.write(f"\nMade by `sql scale-report` (sql {versions.get('sql', '?')}, seed {prov.get('seed')}, "
              f"{prov.get('created', '')}); full provenance in {OUTPUT_STEM}.json.\n")
    return out.getvalue()


def render_csv(points: Sequence[RunPoint], fits: Sequence[PowerLawFit]) -> str:
    """One row per run, plain CSV (header first); the provenance is in the JSON beside it."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=POINT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in _point_rows(points, fits):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def render_plot(points: Sequence[RunPoint], fits: Sequence[PowerLawFit], group_by: Sequence[str],
                metric: str) -> bytes:
    """PNG bytes: score vs parameters (log x), eval CIs as error bars, each group's fitted curve.

    Uses the Agg canvas directly (no pyplot), so it never needs a display and sets no global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    by_label = {f.label: f for f in fits}
    groups: dict[str, list[RunPoint]] = {}
    for p in points:
        groups.setdefault(", ".join(p.group_key(group_by)) or "all runs", []).append(p)
    for i, (label, members) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        fit = by_label.get(label)
        left = {name for name, _ in fit.left_out} if fit else set()
        for kept in (True, False):
            sel = [p for p in members if (p.name not in left) == kept]
            if not sel:
                continue
            x = np.array([p.params for p in sel], float)
            y = np.array([p.score for p in sel], float)
            y = 100 * y  # percent, as the tables
            lo = np.array([p.score - p.ci_low if p.ci_low is not None else 0.0 for p in sel]) * 100
            hi = np.array([p.ci_high - p.score if p.ci_high is not None else 0.0 for p in sel]) * 100
            ax.errorbar(x, y, yerr=np.stack([np.maximum(lo, 0), np.maximum(hi, 0)]), fmt="o", color=color,
                        mfc=color if kept else "none", ms=6, capsize=5, capthick=1.5, elinewidth=1.5, zorder=3,
                        label=None if kept else f"{label}: left out (score <= 0)")
        if fit is not None and fit.b is not None:
            used = [p.params for p in members if p.name in fit.used]
            grid = np.geomspace(min(used) / 1.3, max(used) * 1.3, 200)
            ci = "" if fit.b_ci95 is None else f" [{fit.b_ci95[0]:.3f}, {fit.b_ci95[1]:.3f}]"
            ax.plot(grid, 100 * fit.a * grid ** fit.b, "-", color=color, label=f"{label}: b = {fit.b:.3f}{ci}")
        elif fit is not None:
            ax.plot([], [], "o", color=color, label=f"{label}: no fit")
    ax.set_xscale("log")
    ax.axhline(0.0, color="0.35", lw=1.0, ls="--", zorder=1, label="random policy (0%)")
    ax.set_xlabel(f"parameters ({points[0].param_count if points else 'total'}, log scale)")
    ax.set_ylabel(f"human-normalized {metric.upper()} (%)")
    ax.set_title("score = a * params^b (error bars: eval 95% intervals)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_paths(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {kind: out / f"{OUTPUT_STEM}.{kind}" for kind in ("png", "md", "csv", "json")}


def write_report(out_dir: str | Path, points: Sequence[RunPoint], fits: Sequence[PowerLawFit],
                 group_by: Sequence[str], metric: str, prov: Mapping[str, Any],
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write PNG, Markdown, CSV and JSON into `out_dir`, each atomically. Returns their paths."""
    paths = report_paths(out_dir)
    png = render_plot(points, fits, group_by, metric)   # render everything before writing anything
    md = render_markdown(points, fits, metric, prov, notes)
    table = render_csv(points, fits)
    with atomic_output(paths["png"], "wb") as f:
        f.write(png)
    with atomic_output(paths["md"], "w") as f:
        f.write(md)
    with atomic_output(paths["csv"], "w") as f:
        f.write(table)
    write_json(paths["json"], {
        "provenance": dict(prov), "metric": metric, "group_by": list(group_by),
        "confidence": CONFIDENCE, "fits": [fit_to_dict(f) for f in fits],
        "points": [dataclasses.asdict(p) for p in points], "notes": list(notes),
        "files": {k: str(v) for k, v in paths.items()},
    })
    return paths

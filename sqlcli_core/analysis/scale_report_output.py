"""The scale report's outputs: the markdown and CSV tables, the plot and the JSON, written together by
`write_report` (the points and fits come from `scale_report`)."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
                metric: str, *, n_bootstrap: int = 10_000, seed: int = 0) -> bytes:
    """PNG bytes: score vs parameters on log-log axes, eval 95% intervals, each group's fit and its band."""
    from sqlcli_core.analysis.scale_plot import render_scale_plot

    return render_scale_plot(points, fits, group_by, metric, n_bootstrap=n_bootstrap, seed=seed)


def report_paths(out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    return {kind: out / f"{OUTPUT_STEM}.{kind}" for kind in ("png", "md", "csv", "json")}


def write_report(out_dir: str | Path, points: Sequence[RunPoint], fits: Sequence[PowerLawFit],
                 group_by: Sequence[str], metric: str, prov: Mapping[str, Any],
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write PNG, Markdown, CSV and JSON into `out_dir`, each atomically. Returns their paths."""
    paths = report_paths(out_dir)
    config = prov.get("config") or {}
    # render everything before writing anything; the band from the resamples of the fit's interval
    png = render_plot(points, fits, group_by, metric, n_bootstrap=int(config.get("n_bootstrap", 10_000)),
                      seed=int(prov.get("seed") or 0))
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

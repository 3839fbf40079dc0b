"""`sql scale-report`: score vs parameter count over run directories, with power-law fits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors
from sqlcli_core.analysis.power_law import CONFIDENCE
from sqlcli_core.analysis.scale_report import (
    DEFAULT_GROUP_BY,
    GROUP_FIELDS,
    METRICS,
    PARAM_COUNTS,
    consistency_notes,
    fit_all,
    gather,
    parse_group_by,
)
from sqlcli_core.analysis.scale_report_output import _fmt, fit_to_dict, write_report
from sqlcli_core.provenance import provenance

MetricChoice = o.choices("MetricChoice", METRICS)
ParamsChoice = o.choices("ParamsChoice", PARAM_COUNTS)


EXAMPLE = "Example: sql scale-report runs/r18 runs/r34 runs/r50 --out report"

@handles_errors
def scale_report(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Run directories made by `sql pretrain`, each with RUN/run.json and RUN/eval/*.json."),
    out: Path = typer.Option(
        Path("scale-report"), "--out", rich_help_panel=o.OUTPUT,
        help="Output directory for scale_report.{png,md,csv,json}; created if missing. Default: ./scale-report."),
    metric: MetricChoice = typer.Option(
        "iqm", "--metric", rich_help_panel=o.FIT, help="Human-normalized aggregate to plot and fit: iqm, median or mean. Default: iqm."),
    param_count: ParamsChoice = typer.Option(
        "total", "--params", rich_help_panel=o.FIT,
        help="Parameters on the x axis: total (as the paper counts its 80M model), shared (all but the "
        "per-game heads, which are the same ~26M for every atari40 model) or torso. Default: total."),
    eval_name: str = typer.Option(
        None, "--eval-name", rich_help_panel=o.DATA,
        help="Which RUN/eval/NAME.json to use in every run (file name with or without .json). "
        "Default: each run's newest (by provenance.created, then file time)."),
    group_by: str = typer.Option(
        ",".join(DEFAULT_GROUP_BY), "--group-by", rich_help_panel=o.FIT,
        help=f"Comma-separated fields; one fit per distinct combination. Fields: {', '.join(GROUP_FIELDS)}. "
        f"Default: {','.join(DEFAULT_GROUP_BY)}."),
    n_bootstrap: int = typer.Option(
        10_000, "--bootstrap", rich_help_panel=o.FIT, help="Bootstrap resamples for the 95% interval on the exponent b. Default: 10000."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=o.FIT, help="Seed of the bootstrap resampling. Default: 0."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fit score = a * params^b per method and data composition; write a plot, tables and a JSON."""
    metric, param_count = o.plain(metric), o.plain(param_count)
    fields = parse_group_by(group_by)
    points = gather(run_dirs, metric, eval_name, param_count)
    fits = fit_all(points, fields, n_bootstrap, seed)
    config = {
        "run_dirs": [str(d) for d in run_dirs], "out": str(out), "metric": metric, "params": param_count,
        "eval_name": eval_name,
        "group_by": list(fields), "n_bootstrap": n_bootstrap, "confidence": CONFIDENCE,
        "eval_files": [p.eval_file for p in points],
    }
    notes = consistency_notes(points, fields)
    paths = write_report(out, points, fits, fields, metric, provenance("scale-report", config, seed), notes)

    table = Table(title=f"human-normalized {metric} = a * ({param_count} params)^b")
    for col in ("group", "status", "points", "a", "b", "b 95% CI", "R² (log)"):
        table.add_column(col, justify="left" if col in ("group", "status") else "right", no_wrap=col != "group")
    for f in fits:
        ci = "-" if f.b_ci95 is None else f"[{f.b_ci95[0]:.3f}, {f.b_ci95[1]:.3f}]"
        table.add_row(f.label, f.status, f"{len(f.used)}/{f.n_points}", _fmt(f.a), _fmt(f.b), ci,
                      _fmt(f.r2_log, 3))
    console.print(table)
    for f in fits:
        for run, why in f.left_out:
            console.print(f"warning: {f.label}: left {run} out of the fit: {why}", style="yellow", markup=False)
        if f.note:
            console.print(f"note: {f.label}: {f.note}", style="yellow", markup=False)
    for note in notes:
        console.print(f"warning: {note}", style="yellow", markup=False)
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}", markup=False)
    emit_summary({
        "metric": metric, "group_by": list(fields),
        "fits": [fit_to_dict(f) for f in fits],
        "points": [{"run": p.name, "arch": p.arch, "params": p.params, "score": p.score,
                    "eval_file": p.eval_file} for p in points],
        "notes": notes, "files": {k: str(v) for k, v in paths.items()},
    }, as_json)

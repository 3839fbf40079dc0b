"""`sql plot`: learning curves of one or more training runs in one PNG (from their RUN/metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

import typer

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors
from sqlcli_core.errors import UsageError

EXAMPLE = "Example: sql plot runs/r18 runs/r50 --metric loss --metric td_loss --out compare.png"


@handles_errors
def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories of `sql pretrain` or `sql finetune-*`."),
    out: Path = typer.Option(Path("learning_curves.png"), "--out", rich_help_panel=o.OUTPUT,
                             help="PNG to write. Default: ./learning_curves.png."),
    metric: list[str] = typer.Option(
        None, "--metric", rich_help_panel=o.OUTPUT,
        help="A metrics.jsonl column to draw, repeatable: loss, td_loss, q_data, steps_per_s, eval (the evaluation "
        "score), one game's column (td_loss/Pong), or td_loss/* (one line per game, one run only). "
        "Default: every training column, and the evaluation score when there is one."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Draw the learning curves of training runs, one colour per run, one panel per metric."""
    from sqlcli_core.analysis.plots import compare_runs

    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out} must end in .png", hint="e.g. --out compare.png")
    result = compare_runs(run_dirs, out, metrics=metric or None)
    console.print(f"wrote {out}: {len(run_dirs)} run(s), panels {', '.join(result['panels'])}", markup=False,
                  highlight=False)
    emit_summary(result, as_json)


"""The learning-curve figure each training command writes into its run directory at the end."""

from __future__ import annotations

from pathlib import Path

from sqlcli.console import console


def write_curves(run_dir: str | Path) -> str | None:
    """RUN/learning_curves.png at the end of a training command (its path, None when nothing was logged)."""
    from sqlcli_core.analysis.plots import write_learning_curves

    path = write_learning_curves(run_dir)
    if path is not None:
        console.print(f"learning curves: {path}", markup=False, highlight=False)
    return None if path is None else str(path)

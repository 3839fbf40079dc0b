"""Shared CLI plumbing: consoles, the --json summary, and turning SqlErrors into one-line exits."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from sqlcli_core.errors import SqlError

# Progress and tables go to stderr so that `--json` output on stdout stays machine-readable.
console = Console(stderr=True)
err_console = Console(stderr=True, style="bold red", soft_wrap=True)  # errors stay on one line

JSON_OPTION = typer.Option(False, "--json", help="Print a final JSON summary object on stdout (for scripts).")


def emit_summary(summary: dict[str, Any], as_json: bool) -> None:
    """Print the command's final summary: one JSON object on stdout with --json."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        sys.stdout.flush()


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Decorator for commands: a SqlError becomes `error: <one line>` on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SqlError as exc:
            fail(exc.one_line(), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted: re-run the same command to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def metrics_line(record: dict[str, Any], method, sep: str = "  ") -> str:
    """`loss 0.1234  td 0.1200  cql 0.070  Q 0.512`: a training record's loss and its method's progress fields
    (`Method.progress`), so that no command names a method's metrics."""
    parts = [f"loss {record['loss']:.4f}"]
    parts += [f"{label} {record[key]:{fmt}}" for key, label, fmt in method.progress if key in record]
    return sep.join(parts)

"""The CLI's consoles and what goes to them: stderr for progress and tables, stdout for the one `--json`
summary (or a table that is the result), and third-party logging kept quiet unless `--verbose`."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any

import typer
from rich.console import Console

from sqlcli_core.errors import SqlWarning

# Set by the `sql` entry point (a process of its own) and by `sql --verbose`.
PROCESS_STATE = {"entry_point": False, "verbose": False}
_default_unraisablehook = sys.unraisablehook
_default_showwarning = warnings.showwarning

# Progress and tables go to stderr so that `--json` output on stdout stays machine-readable. Into a log file
# (nohup, SLURM, Kubernetes) lines keep their full length: rich would wrap them at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000)


err_console = Console(stderr=True, style="bold red", soft_wrap=True)  # errors stay on one line


JSON_OPTION = typer.Option(False, "--json", help="Print a final JSON summary object on stdout (for scripts).")


def emit_summary(summary: dict[str, Any], as_json: bool) -> None:
    """Print the command's final summary: one JSON object on stdout with --json."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        sys.stdout.flush()


def result_console(as_json: bool) -> Console:
    """Where a command's result table goes: stdout, so it can be piped (`sql games | grep Pong`), and at its
    full width when stdout is not a terminal (rich would cut it to 80 columns); stderr when --json owns stdout."""
    if as_json:
        return console
    return Console(width=None if sys.stdout.isatty() else 10_000)


# Loggers of the libraries that print on normal runs (orbax logs through absl: "WARNING:absl:...").
THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "chex", "haiku", "optax", "zarr", "numcodecs", "asyncio")


def quiet_third_party(verbose: bool) -> None:
    """Third-party log lines and Python warnings stay out of normal runs; `sql --verbose` keeps them.

    Only the CLI does this: the library leaves global logging and warning filters alone."""
    warnings.showwarning = _show_warning
    PROCESS_STATE["verbose"] = verbose
    if verbose:
        return
    for name in THIRD_PARTY_LOGGERS:
        # CRITICAL, not ERROR: Orbax logs the errors of its background save threads (a full disk) with
        # tracebacks; the command reports them itself, as one line.
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")  # other libraries' warnings stay out of normal runs
    warnings.simplefilter("always", SqlWarning)  # the library's own: one `warning:` line each
    sys.unraisablehook = _quiet_foreign_thread_errors


def _quiet_foreign_thread_errors(unraisable) -> None:
    """"Exception ignored" reports that come from other libraries are dropped (without --verbose): Orbax's
    read coroutines collected after a damaged checkpoint was skipped, TensorStore callbacks into a closed
    asyncio loop after a save failed on a full disk. The failure itself reaches the command, which reports
    it as one line. Reports that involve sql's own code are printed as Python does."""
    files = []
    tb = unraisable.exc_traceback
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    code = getattr(unraisable.object, "cr_code", None) or getattr(unraisable.object, "gi_code", None)
    if code is not None:
        files.append(code.co_filename)
    if any(f"{os.sep}sqlcli" in f for f in files):
        _default_unraisablehook(unraisable)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """sql's own warnings (SqlWarning) as one `warning: ...` line on stderr; others as Python prints them."""
    if issubclass(category, SqlWarning):
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)



"""Shared CLI plumbing: consoles, the --json summary, one-line errors (ours and click's), quiet third parties."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from sqlcli_core.errors import SqlError, SqlWarning, UsageError, from_os_error

# Progress and tables go to stderr so that `--json` output on stdout stays machine-readable.
console = Console(stderr=True)
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


def print_error(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False)


# Set by the `sql` entry point (a process of its own) and by `sql --verbose`.
_process = {"entry_point": False, "verbose": False}


def exit_quietly_after_errors() -> None:
    """Called by the `sql` entry point: after an error line, late noise on stderr is dropped (see `fail`)."""
    _process["entry_point"] = True


def fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` and exit with `code`.

    In the `sql` process (not under a test runner) and without --verbose, stderr is then pointed at
    /dev/null: background threads of the libraries (Orbax's async save threads after a full disk, asyncio
    loops closing) would otherwise print tracebacks around the one error line while the interpreter exits.
    Every file sql writes is atomic, so nothing is lost by not hearing from them."""
    print_error(message)
    if _process["entry_point"] and not _process["verbose"]:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    raise typer.Exit(code)


def require_path(path: str | Path | None, what: str, hint: str) -> None:
    """A path the user named that must exist. A missing one is bad input, exit 2, in every command; a path
    that exists but holds the wrong thing is left to the library (bad data, exit 3). URLs (`scheme://`)
    are left to the source that opens them."""
    if path is not None and "://" not in str(path) and not Path(path).exists():
        raise UsageError(f"{what} {path} does not exist", hint=hint)


# Loggers of the libraries that print on normal runs (orbax logs through absl: "WARNING:absl:...").
THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "chex", "haiku", "optax", "zarr", "numcodecs")


def quiet_third_party(verbose: bool) -> None:
    """Third-party log lines and Python warnings stay out of normal runs; `sql --verbose` keeps them.

    Only the CLI does this: the library leaves global logging and warning filters alone."""
    warnings.showwarning = _show_warning
    _process["verbose"] = verbose
    if verbose:
        return
    for name in THIRD_PARTY_LOGGERS:
        # CRITICAL, not ERROR: Orbax logs the errors of its background save threads (a full disk) with
        # tracebacks; the command reports them itself, as one line.
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")  # other libraries' warnings stay out of normal runs
    warnings.simplefilter("always", SqlWarning)  # the library's own: one `warning:` line each
    sys.unraisablehook = _quiet_foreign_thread_errors


_default_unraisablehook = sys.unraisablehook


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


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """sql's own warnings (SqlWarning) as one `warning: ...` line on stderr; others as Python prints them."""
    if issubclass(category, SqlWarning):
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


# click's base exception, whether typer uses click or its own vendored copy (typer >= 0.2x).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_error_line(exc: Exception) -> str:
    """click's usage error as one line in our style: `<what is wrong> (see 'sql CMD --help')`."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path if ctx is not None else 'sql'} --help')"


class OneLineErrors(TyperGroup):
    """The `sql` command group: click's parse errors print like our own errors, one `error:` line on stderr
    and exit 2, instead of typer's boxed panel. Runs as click's standalone mode otherwise."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # `sql` alone: click printed the help already
                print_error(_usage_error_line(exc))
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def handles_errors(fn: Callable) -> Callable:
    """Decorator for commands: a SqlError becomes `error: <one line>` on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SqlError as exc:
            fail(exc.one_line(), exc.exit_code)
        except OSError as exc:  # a safety net: call sites that know the path say more (from_os_error)
            err = from_os_error(exc, f"running `sql {fn.__name__.removesuffix('_command').replace('_', '-')}`")
            fail(err.one_line(), err.exit_code)
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

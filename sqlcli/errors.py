"""Errors as the CLI prints them: one `error:` line and the documented exit code, for our own errors
(`handles_errors`), click's parse errors (`OneLineErrors`) and a missing path (`require_path`); and how every
option reads in --help (`plain_help`)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from typer.core import TyperGroup

from sqlcli.console import PROCESS_STATE, err_console
from sqlcli_core.errors import SqlError, UsageError, from_os_error, memory_error

# click's base exception, whether typer uses click or its own vendored copy (typer >= 0.2x).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def print_error(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False)


def exit_quietly_after_errors() -> None:
    """Called by the `sql` entry point: after an error line, late noise on stderr is dropped (see `fail`)."""
    PROCESS_STATE["entry_point"] = True


def fail(message: str, code: int = 2) -> None:
    """Print `error: <message>` and exit with `code`.

    In the `sql` process (not under a test runner) and without --verbose, stderr is then pointed at
    /dev/null: background threads of the libraries (Orbax's async save threads after a full disk, asyncio
    loops closing) would otherwise print tracebacks around the one error line while the interpreter exits.
    Every file sql writes is atomic, so nothing is lost by not hearing from them."""
    print_error(message)
    if PROCESS_STATE["entry_point"] and not PROCESS_STATE["verbose"]:
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


def _usage_error_line(exc: Exception) -> str:
    """click's usage error as one line in our style: `<what is wrong> (see 'sql CMD --help')`."""
    # typer's enumerations say "Value error, 'x' is not one of ..."; the first two words add nothing
    message = " ".join(exc.format_message().split()).rstrip(".").replace(": Value error, ", ": ")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path if ctx is not None else 'sql'} --help')"


def _usage_name(param) -> str:
    return param.metavar if param.required else f"[{param.metavar}]"


def plain_help(command) -> None:
    """How every option reads in `--help`: our help text states the default (typer would print it a second
    time) and a flag shows no `<bool>` value it does not take."""
    for param in command.params:
        if param.param_type_name == "argument" and param.metavar is None:
            # named as the usage line and `--help` show it (RUN_DIRS..., [DST]), also in "missing argument"
            # errors: typer's own names are the Python ones ('run_dirs', `{src} [dst]`)
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            if hasattr(param, "_usage_display_name"):  # typer >= 0.2x writes `{src} [dst]`; click's `SRC [DST]`
                param._usage_display_name = functools.partial(_usage_name, param)
        if hasattr(param, "show_default"):
            param.show_default = False
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help_option = command.get_help_option  # --help is made per call, not a param

    def get_help_option(ctx):
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)


class OneLineErrors(TyperGroup):
    """The `sql` command group: click's parse errors print like our own errors, one `error:` line on stderr
    and exit 2, instead of typer's boxed panel (and `plain_help` for every command's help). Runs as click's
    standalone mode otherwise."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain_help(self)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:  # typer's completion options join late
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params

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
        except Exception as exc:  # running out of host or device memory: exit 5, one line; anything else is a bug
            err = memory_error(exc, f"running `sql {fn.__name__.removesuffix('_command').replace('_', '-')}`")
            if err is None:
                raise
            fail(err.one_line(), err.exit_code)

    return wrapper



"""Shared CLI plumbing: consoles, progress, the --json summary, one-line errors (ours and click's), quiet third
parties."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from sqlcli_core.errors import SqlError, SqlWarning, UsageError, from_os_error

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
THIRD_PARTY_LOGGERS = ("absl", "jax", "orbax", "chex", "haiku", "optax", "zarr", "numcodecs", "asyncio")


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

    return wrapper


def write_curves(run_dir: str | Path) -> str | None:
    """RUN/learning_curves.png at the end of a training command (its path, None when nothing was logged)."""
    from sqlcli_core.analysis.plots import write_learning_curves

    path = write_learning_curves(run_dir)
    if path is not None:
        console.print(f"learning curves: {path}", markup=False, highlight=False)
    return None if path is None else str(path)


def metrics_line(record: dict[str, Any], method, sep: str = "  ") -> str:
    """`loss 0.1234  td 0.1200  cql 0.070  Q 0.512`: a training record's loss and its method's progress fields
    (`Method.progress`), so that no command names a method's metrics."""
    parts = [f"loss {record['loss']:.4f}"]
    parts += [f"{label} {record[key]:{fmt}}" for key, label, fmt in method.progress if key in record]
    return sep.join(parts)


# ---------------------------------------------------------------------------------------------------------
# Progress of long commands

PROGRESS_SECONDS_ENV = "SQL_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 30.0


def progress_seconds() -> float:
    """Seconds between the plain progress lines of a command whose stderr is not a terminal."""
    text = os.environ.get(PROGRESS_SECONDS_ENV, "")
    try:
        value = float(text) if text else DEFAULT_PROGRESS_SECONDS
    except ValueError:
        raise UsageError(f"{PROGRESS_SECONDS_ENV}={text!r} is not a number of seconds", hint="e.g. 60") from None
    return max(value, 0.05)


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m05s', 65 -> '1m05s', 7 -> '7s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_amount(n: float, unit: str) -> str:
    """A count in its unit: bytes in kB/MB/GB (powers of 1000), anything else with thousands separators."""
    if unit == "bytes":
        for name in ("B", "kB", "MB", "GB", "TB"):
            if abs(n) < 1000 or name == "TB":
                return f"{n:.0f} {name}" if name == "B" else f"{n:.1f} {name}"
            n /= 1000
    return f"{n:,.0f}"


def format_rate(rate: float, unit: str) -> str:
    """35.2 -> '35.2 steps/s'; bytes as '12.3 MB/s'."""
    if unit == "bytes":
        return f"{format_amount(rate, unit)}/s"
    digits = 0 if rate >= 100 else 1 if rate >= 1 else 2
    return f"{rate:,.{digits}f} {unit}/s"


@dataclasses.dataclass
class _Task:
    name: str
    total: float | None
    completed: float
    status: str = ""
    first: float = 0.0  # completed when this invocation started (a resumed command does not count it in rates)
    origin: tuple[float, float] | None = None  # (time, completed) of its first move
    rich_id: Any = None


class ProgressReport:
    """Progress of a long command, one helper for all of them.

    On a terminal: rich bars (one per task). Otherwise (nohup, SLURM, Kubernetes: stderr is a file or a
    pipe): one plain line every `every` seconds (env SQL_PROGRESS_SECONDS, default 30), plus one at the
    start and one at the end, never wrapped:

        12:03:04 pretrain 1,200/10,000 steps (12.0%)  35.2 steps/s  ETA 4m10s  elapsed 34s  loss 0.1234  td 0.1200

    Rates and the ETA count only what this invocation did (a resumed run starts from its checkpoint), from the
    first move on (the first unit of work often includes compilation) or, with `rate_from="start"`, from
    `start()`: for work that finishes in bursts (eval's emulators end episodes together), where the time of the
    first burst would make the rate jump (67.6 episodes/s, then 0.25/s).
    Several tasks (collect's game/runs) are summed on the plain line, with the unfinished ones named.
    """

    def __init__(self, label: str, *, unit: str = "steps", every: float | None = None,
                 interactive: bool | None = None, enabled: bool = True, stream=None,
                 clock: Callable[[], float] = time.monotonic, rate_from: str = "first"):
        if rate_from not in ("first", "start"):
            raise ValueError(f"rate_from must be 'first' or 'start', got {rate_from!r}")
        self.label, self.unit, self.enabled = label, unit, enabled
        self.rate_from = rate_from
        self.every = progress_seconds() if every is None else every
        self.interactive = (console.is_terminal and not console.is_dumb_terminal) if interactive is None else interactive
        self.stream = stream
        self.clock = clock
        self.tasks: list[_Task] = []
        self.status = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rich = None
        self._started_at: float | None = None
        self._origin: tuple[float, float] | None = None  # (time, amount) of the first move: rates start there

    # --- feeding it

    def add(self, name: str, total: float | None = None, completed: float = 0, status: str = "") -> int:
        with self._lock:
            task = _Task(name, total, completed, status, first=completed)
            self.tasks.append(task)
            if self._rich is not None:
                task.rich_id = self._rich.add_task(name, total=total, completed=completed, **self._fields(task))
            return len(self.tasks) - 1

    def update(self, task: int = 0, *, completed: float | None = None, advance: float = 0,
               total: float | None = None, status: str | None = None, restart: bool = False) -> None:
        """Move task `task`; `restart`: the amount given is where this invocation starts (resumed work)."""
        with self._lock:
            t = self.tasks[task]
            if completed is not None:
                t.completed = completed
            t.completed += advance
            if total is not None:
                t.total = total
            if status is not None:
                t.status = status
            if restart:
                t.first = t.completed
            elif self._started_at is not None and t.completed > t.first:
                # the first unit of work often includes start-up (compilation): rates count from after it
                if self.rate_from == "start":  # counted from start(): nothing done then
                    t.origin = t.origin or (self._started_at, t.first)
                    self._origin = self._origin or (self._started_at, 0.0)
                if t.origin is None:
                    t.origin = (self.clock(), t.completed)
                if self._origin is None:
                    self._origin = (self.clock(), sum(x.completed - x.first for x in self.tasks))
            if self._rich is not None:
                self._rich.update(t.rich_id, completed=t.completed, total=t.total, **self._fields(t))

    def set_status(self, status: str) -> None:
        """The status of the command as a whole (the plain line's tail)."""
        with self._lock:
            self.status = status

    def print(self, message: str) -> None:
        """A message line that does not break the bars."""
        if self.enabled:
            (self._rich.console if self._rich is not None else console).print(message, markup=False, highlight=False)

    # --- showing it

    def start(self) -> ProgressReport:
        if not self.enabled or self._started_at is not None:
            return self
        self._started_at = self.clock()
        if self.interactive:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                  TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[status]}"),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            with self._lock:
                for t in self.tasks:
                    t.rich_id = self._rich.add_task(t.name, total=t.total, completed=t.completed, **self._fields(t))
            self._rich.start()
        else:
            self._emit()
            self._thread = threading.Thread(target=self._tick, name="sql-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._started_at is None:
            return
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._emit()
        self._started_at = None

    def __enter__(self) -> ProgressReport:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._emit()

    def _emit(self) -> None:
        line = self.line()
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    @staticmethod
    def _rate(amount: float, origin: tuple[float, float] | None, now: float) -> float | None:
        """Amount per second since the first move (None until there is a second one to measure)."""
        if origin is None:
            return None
        since, base = origin
        return (amount - base) / (now - since) if now > since and amount > base else None

    def _fields(self, t: _Task) -> dict:
        rate = self._rate(t.completed, t.origin, self.clock())
        count = format_amount(t.completed, self.unit) + (f"/{format_amount(t.total, self.unit)}" if t.total else "")
        return {"count": count, "status": t.status,
                "rate": "" if rate is None else format_rate(rate, self.unit)}

    def line(self) -> str:
        """The plain progress line for the state now."""
        with self._lock:
            now = self.clock()
            tasks = list(self.tasks)
            done = sum(t.completed for t in tasks)
            fresh = sum(t.completed - t.first for t in tasks)
            totals = [t.total for t in tasks]
            total = sum(totals) if tasks and all(x for x in totals) else None
            parts = [time.strftime("%H:%M:%S"), self.label]
            amount = format_amount(done, self.unit)
            unit = "" if self.unit == "bytes" else f" {self.unit}"
            amount += f"/{format_amount(total, self.unit)}{unit} ({100 * done / total:.1f}%)" if total else unit
            parts.append(amount)
            rate = self._rate(fresh, self._origin, now)
            parts.append("-" if rate is None else format_rate(rate, self.unit))
            if total and rate:
                parts.append(f"ETA {format_duration(max(total - done, 0) / rate)}")
            if self._started_at is not None:
                parts.append(f"elapsed {format_duration(now - self._started_at)}")
            if len(tasks) > 1:
                running = [t for t in tasks if t.completed > t.first and (not t.total or t.completed < t.total)]
                if running:
                    parts.append("[" + ", ".join(f"{t.name} {format_amount(t.completed, self.unit)}"
                                                 + (f"/{format_amount(t.total, self.unit)}" if t.total else "")
                                                 for t in running) + "]")
            statuses = [self.status] + ([tasks[0].status] if len(tasks) == 1 else [])
            parts += [s for s in statuses if s]
            return "  ".join(parts)

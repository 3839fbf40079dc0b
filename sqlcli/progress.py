"""Progress as every long command reports it: rich bars on a terminal, one plain line every
SQL_PROGRESS_SECONDS otherwise (docs/logging.md), and the metrics line of the training commands."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlcli.console import console
from sqlcli_core.errors import UsageError


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

"""Papercuts of issue 24: arguments named as the user types them, and a progress rate that does not jump when
work finishes in bursts (eval's emulators end episodes together)."""

from __future__ import annotations

import io
import re

import pytest

from sqlcli.progress import ProgressReport
from tests.test_cli import sql_all


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rate_of(line: str) -> float | None:
    match = re.search(r"([\d,.]+) episodes/s", line)
    return None if match is None else float(match.group(1).replace(",", ""))


def bursty_rates(rate_from: str) -> list[float | None]:
    """32 emulators that end their episodes together every 10 s; the line read just after each burst, a little
    later, and in the quiet before the next burst."""
    clock = Clock()
    report = ProgressReport("eval", unit="episodes", every=1e9, interactive=False, stream=io.StringIO(), clock=clock,
                            rate_from=rate_from)
    report.add("episodes", total=128)
    rates = []
    with report:
        for burst in range(1, 5):
            clock.now = 10.0 * burst
            for _ in range(32):  # one call per finished episode, as eval's on_episode makes them
                report.update(advance=1)
            clock.now += 0.01
            rates.append(rate_of(report.line()))
            clock.now += 9.0
            rates.append(rate_of(report.line()))
    return rates


def test_eval_rate_counted_from_the_start_is_steady_under_bursts():
    rates = bursty_rates("start")
    # 32 episodes per 10 s is 3.2/s: every reading lies between the quiet low and the burst high of that rate
    assert all(1.6 <= r <= 3.3 for r in rates), rates
    assert rates[-2] == pytest.approx(128 / 40.01, rel=1e-3)
    # from the first move (the training default) the first burst reads as a spike
    first = bursty_rates("first")
    assert first[0] > 1000  # the "3,699 episodes/s" of the issue


def test_rate_from_must_be_known():
    with pytest.raises(ValueError):
        ProgressReport("x", rate_from="never")


def test_arguments_are_named_as_typed_in_errors_and_usage():
    plot_missing, shard_missing, shard_help, eval_help, plot_help = sql_all([
        ["plot"], ["shard"], ["shard", "--help"], ["eval", "--help"], ["plot", "--help"]])
    assert plot_missing.returncode == 2
    # (run as `python -m sqlcli.main`, the program name in the hint is that)
    assert plot_missing.stderr.startswith("error: missing argument 'RUN_DIRS...' (see '")
    assert shard_missing.stderr.startswith("error: missing argument 'SRC' (see '")
    assert "shard [OPTIONS] SRC [DST]" in shard_help.stdout and "{" + "src}" not in shard_help.stdout
    assert "eval [OPTIONS] [CHECKPOINT_OR_RUN]" in eval_help.stdout
    assert "plot [OPTIONS] RUN_DIRS..." in plot_help.stdout

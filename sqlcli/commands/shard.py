"""`sql shard`: DQN-Replay gz checkpoints -> the Zarr v3 replay store (and `--verify` of a store)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors, require_path
from sqlcli.progress import ProgressReport
from sqlcli_core.data import store as st
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import resolve_games
from sqlcli_core.provenance import provenance
from sqlcli_core.ranges import parse_range_set


class _Bars:
    """One progress task per game/run, fed with row counts."""

    def __init__(self, report: ProgressReport):
        self.report = report
        self.tasks: dict[str, int] = {}

    def plan(self, totals: dict[str, int]) -> None:
        for key, total in totals.items():
            self.tasks[key] = self.report.add(key, total=total)
        self.report.start()  # idempotent: verify plans once, shard may plan again after a scan

    def advance(self, key: str, rows: int) -> None:
        if key in self.tasks:
            self.report.update(self.tasks[key], advance=rows)


EXAMPLE = "Example: sql shard dqn-replay store --games atari40 --checkpoints 0-9"

@handles_errors
def shard(
    src: str = typer.Argument(..., help="Directory with {Game}/{run}/replay_logs/*.gz (the bucket's layout); "
                              "with --verify: the store to check (a path or URL)."),
    dst: str | None = typer.Argument(None, help="Zarr v3 store to create or extend: a directory, or an s3:// or "
                                     "gs:// URL (object storage; see docs/store-format.md)."),
    verify: bool = typer.Option(False, "--verify", rich_help_panel=o.RUN, help="Re-read the store SRC and check it against its recorded "
                                "content hashes and counts; writes nothing."),
    games: str | None = typer.Option(None, "--games", rich_help_panel=o.DATA, help="Games or game sets, comma-separated (default: every "
                                        "game directory under SRC)."),
    runs: str | None = typer.Option(None, "--runs", rich_help_panel=o.DATA, help="Run numbers, e.g. 1-5 or 1,3 (default: all)."),
    checkpoints: str | None = typer.Option(None, "--checkpoints", rich_help_panel=o.DATA, help="Checkpoint suffixes, e.g. 0-9 for the "
                                              "sub-optimal 20% (default: all present)."),
    jobs: int = typer.Option(min(4, os.cpu_count() or 1), "--jobs", rich_help_panel=o.RUN, min=1, help="Game/runs sharded in parallel "
                             "worker processes (default: min(4, CPUs))."),
    frame_chunk: int = typer.Option(st.FRAME_CHUNK, "--frame-chunk", rich_help_panel=o.STORE, min=8, help=f"Frames per Zarr chunk of a new "
                                    f"run's frames array (default {st.FRAME_CHUNK}; see docs/store-format.md)."),
    n_step: int = typer.Option(st.DEFAULT_N_STEP, "--n-step", rich_help_panel=o.STORE, min=1, help="n of the 'sampleable transitions' count "
                               f"in the summary (default {st.DEFAULT_N_STEP})."),
    lease_seconds: float = typer.Option(st.ShardConfig.lease_seconds, "--lease-seconds", rich_help_panel=o.STORE, min=1.0,
                                        help="Object storage only: lease time of the one writer of each run "
                                        f"group (default {st.ShardConfig.lease_seconds:g}; see docs/store-format.md)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Convert DQN-Replay checkpoints into a resumable, verified Zarr v3 store for the sampler."""
    game_names = [g.name for g in resolve_games(games)] if games else None
    run_set = parse_range_set(runs, "--runs", lo=1, example="1-5 or 1,3")
    if verify:
        if dst is not None:
            raise UsageError("--verify takes one path, the store", hint="sql shard --verify DST")
        require_path(src, "store", hint="pass a Zarr store written by `sql shard SRC DST`")
        _verify(src, game_names, run_set, as_json)
        return
    if dst is None:
        raise UsageError("missing DST", hint="sql shard SRC DST")
    ckpt_set = parse_range_set(checkpoints, "--checkpoints", example="0-9 or 0-9,20")
    config = st.ShardConfig(frame_chunk=frame_chunk, n_step=n_step, lease_seconds=lease_seconds)
    prov = provenance("shard", {"src": str(src), "dst": str(dst), "games": games, "runs": runs,
                                "checkpoints": checkpoints, "frame_chunk": frame_chunk}, seed=None)
    bars = _Bars(ProgressReport("shard", unit="rows"))  # shown from the plan on: earlier errors stay one line
    try:
        result = st.shard(Path(src), dst, games=game_names, runs=run_set, checkpoints=ckpt_set, jobs=jobs, config=config,
                          provenance_block=prov, on_plan=bars.plan, progress=bars.advance)
    finally:
        bars.report.stop()
    for note in result["notes"]:
        console.print(note, style="dim", markup=False, highlight=False)
    table = Table(title=f"{dst}: {result['transitions_selected']:,} transitions selected, "
                        f"{result['appended']} checkpoint(s) appended")
    cols = {"game": "game", "run": "run", "rows": "rows", "sampleable_transitions": "sampleable", "episodes": "episodes",
            "return_mean": "return", "return_min": "min", "return_max": "max", "segments": "segments",
            "bytes_on_disk": "bytes", "compression_ratio": "ratio"}
    for c, title in cols.items():
        table.add_column(title, justify="left" if c == "game" else "right")
    for r in result["runs"]:
        table.add_row(*(("-" if r.get(c) is None else f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r[c])) for c in cols))
    console.print(table)
    emit_summary({"provenance": prov, **result}, as_json)


def _verify(store: str, game_names, run_set, as_json: bool) -> None:
    bars = _Bars(ProgressReport("shard --verify", unit="rows"))  # shown from the plan on: earlier errors stay one line
    try:
        result = st.verify(store, games=game_names, runs=run_set, on_plan=bars.plan, progress=bars.advance)
    finally:
        bars.report.stop()
    for r in result["runs"]:
        status = "ok" if r["ok"] else "FAILED: " + "; ".join(r["problems"])
        console.print(f"{r['game']}/{r['run']}: {r['rows']:,} rows, checkpoints {r['checkpoints']}: {status}",
                      markup=False, highlight=False)
    emit_summary({"provenance": provenance("shard --verify", {"store": str(store)}, seed=None), **result}, as_json)
    if not result["ok"]:
        bad = [f"{r['game']}/{r['run']}" for r in result["runs"] if not r["ok"]]
        first = next(p for r in result["runs"] for p in r["problems"])
        raise st.DataError(f"{store}: {', '.join(bad)} failed verification (first problem: {first})",
                           hint="re-shard the failed runs into a new store")

"""`sql fetch-data`: download DQN-Replay checkpoints into the bucket's layout, resumably and verified."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import typer
from rich.table import Table

from sqlcli import options as o
from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors
from sqlcli.progress import ProgressReport
from sqlcli_core.data import fetch as F
from sqlcli_core.errors import DataError, SourceUnavailable, UsageError

LinkChoice = o.choices("LinkChoice", ("hard", "symlink"))


EXAMPLE = "Example: sql fetch-data --games atari40 --subset sub-optimal --out dqn-replay"

@handles_errors
def fetch_data(
    games: str = typer.Option(..., "--games", rich_help_panel=o.DATA, help="Game sets (e.g. dqn-replay60, atari40) or comma-separated "
                              "names; only the 60 DQN-Replay games exist in the bucket."),
    out: Path = typer.Option(..., "--out", rich_help_panel=o.OUTPUT, help="Root directory; files land in OUT/{Game}/{run}/replay_logs/."),
    runs: str | None = typer.Option(None, "--runs", rich_help_panel=o.DATA, help="Runs 1-5 as a list or ranges, e.g. 1,2 or 1-3, or all. "
                                    "Default: run 1 for --subset sub-optimal (the paper's 400M over atari40; "
                                    "--runs 1-5 for the 5-run variant), all five otherwise."),
    checkpoints: str | None = typer.Option(None, "--checkpoints", rich_help_panel=o.DATA, help="Checkpoint suffixes 0-50 as ranges, "
                                              "e.g. 0-9 or 0-9,20, or 'all'. Give this or --subset."),
    subset: str | None = typer.Option(None, "--subset", rich_help_panel=o.DATA, help="sub-optimal (checkpoints 0-9, a run's first 20%, of "
                                         "run 1 unless --runs), near-optimal (0-50) or last:N (the last N checkpoints)."),
    base_url: str | None = typer.Option(None, "--base-url", rich_help_panel=o.SOURCE, help=f"Mirror base URL (http/https) or gs://BUCKET/PATH "
                                           f"(needs: pip install 'scaled-ql\\[gcs]'). Default: {F.PUBLIC_BUCKET_URL}."),
    from_dir: Path | None = typer.Option(None, "--from", rich_help_panel=o.SOURCE, help="Copy from a local directory with the same layout "
                                            "instead of downloading."),
    link: LinkChoice | None = typer.Option(None, "--link", rich_help_panel=o.SOURCE, help="With --from: 'hard' (hard links) or 'symlink' "
                                       "instead of copying. Default: copy."),
    jobs: int = typer.Option(4, "--jobs", rich_help_panel=o.TRANSFER, min=1, max=64, help="Files transferred in parallel (threads). Default 4."),
    retries: int = typer.Option(5, "--retries", rich_help_panel=o.TRANSFER, min=0, help="Further tries per file after a failure (5xx, dropped "
                                "connection, damaged bytes); a try that received bytes does not count. Default 5."),
    backoff_base: float = typer.Option(1.0, "--backoff-base", rich_help_panel=o.TRANSFER, min=0.0, help="Seconds before the first retry; "
                                       "doubles per consecutive failure, capped at 60 s. Default 1.0."),
    timeout: float = typer.Option(60.0, "--timeout", rich_help_panel=o.TRANSFER, min=0.1, help="Seconds without any data before a connection "
                                  "counts as dropped. Default 60."),
    verify_existing: bool = typer.Option(False, "--verify-existing", rich_help_panel=o.RUN, help="Re-hash every file already here against "
                                         "the md5 its manifest recorded (and re-check its gzip CRC and .npy header) "
                                         "instead of trusting an unchanged size and mtime; damaged files are fetched "
                                         "again."),
    dry_run: bool = typer.Option(False, "--dry-run", rich_help_panel=o.RUN, help="Only list what would be fetched, with sizes (HEAD "
                                 "requests, or stat for --from); writes nothing."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Download DQN-Replay checkpoints (six files each) into OUT, verifying every file; re-runs resume."""
    if (checkpoints is None) == (subset is None):
        raise UsageError("give exactly one of --checkpoints and --subset",
                         hint="e.g. --checkpoints 0-9 or --subset sub-optimal")
    default_runs = F.subset_runs(subset) if subset is not None else tuple(range(1, F.NUM_RUNS + 1))
    selection = F.Selection(
        games=F.select_games(games),
        runs=F.parse_runs(runs) if runs is not None else default_runs,
        checkpoints=F.parse_checkpoints(checkpoints) if checkpoints is not None else F.subset_checkpoints(subset),
    )
    chosen = {"games": list(selection.games), "runs": list(selection.runs),
              "checkpoints": list(selection.checkpoints), "transitions": selection.transitions}
    source = F.open_source(base_url, from_dir, o.plain(link), timeout=timeout)
    cfg = F.FetchConfig(jobs=jobs, retries=retries, backoff_base=backoff_base, dry_run=dry_run,
                        verify_existing=verify_existing)
    console.print(f"fetch-data: {len(selection.games)} games x {len(selection.runs)} runs x "
                  f"{len(selection.checkpoints)} checkpoints = {selection.num_files} files, "
                  f"{selection.transitions / 1e6:,.0f}M transitions, from {source.description}", highlight=False)

    if dry_run:
        try:
            with console.status("asking the source for sizes..."):
                report = F.fetch(selection, out, source, cfg)
        except SourceUnavailable as exc:  # the selection is known without the source: report it, then fail
            emit_summary({"source": source.description, "dry_run": True, "transitions_selected": selection.transitions,
                          "selection": chosen, "source_error": str(exc)}, as_json)
            raise
        _print_dry_run(report)
    else:
        report = _fetch_with_progress(selection, out, source, cfg)
        _print_result(report)
    summary = report.summary()
    summary["transitions_selected"] = selection.transitions
    summary["selection"] = chosen
    emit_summary(summary, as_json)
    failed = report.by_status("failed")
    if failed:
        first = failed[0]
        cls = DataError if any(r.content_error for r in failed) else SourceUnavailable
        raise cls(f"{len(failed)} of {len(report.results)} files failed; first: {first.task.rel}: {first.error}",
                  hint="verified files are kept; re-run the same command to retry the rest")


def _fetch_with_progress(selection, out, source, cfg) -> F.FetchReport:
    report = ProgressReport("fetch-data", unit="bytes")
    bar = report.add("checking", total=None)
    lock = threading.Lock()
    files_done = [0]

    def on_event(event: str, n: int) -> None:
        with lock:
            if event == "total":
                report.update(bar, total=n, status="downloading" if n else "verifying")
            elif event == "total_add":
                report.update(bar, total=(report.tasks[bar].total or 0) + n)
            elif event == "bytes":
                report.update(bar, advance=n)
            elif event == "file":
                files_done[0] += n
                report.update(bar, status=f"{files_done[0]} of {selection.num_files} files done")

    with report:
        return F.fetch(selection, out, source, cfg, progress=on_event)


def _print_dry_run(report: F.FetchReport) -> None:
    groups: dict[tuple, list] = defaultdict(list)
    for r in report.results:
        groups[(r.task.game, r.task.run)].append(r)
    table = Table(title=f"would fetch from {report.source}")
    for col in ("game", "run", "files", "size", "already here", "to fetch", "missing", "failed"):
        table.add_column(col, justify="left" if col == "game" else "right")
    for (game, run), rs in groups.items():
        size = sum(r.size or 0 for r in rs)
        have = sum(r.have_bytes for r in rs)
        table.add_row(game, str(run), str(len(rs)), F.format_bytes(size), F.format_bytes(have),
                      F.format_bytes(size - have), str(sum(r.status == "missing" for r in rs)),
                      str(sum(r.status == "failed" for r in rs)))
    console.print(table)
    console.print(f"total {F.format_bytes(report.total_bytes)}, to fetch {F.format_bytes(report.bytes_to_fetch)}",
                  highlight=False)
    _print_problems(report)


def _print_result(report: F.FetchReport) -> None:
    s = report.summary()
    f = s["files"]
    if s["reverified"] or s["damaged_existing"]:
        console.print(f"--verify-existing: {s['reverified']} files re-hashed and intact, "
                      f"{len(s['damaged_existing'])} damaged and fetched again", highlight=False)
    console.print(f"fetched {f['fetched']}, skipped {f['skipped']} (already verified), failed {f['failed']}, "
                  f"missing {f['missing']}; {F.format_bytes(s['bytes_transferred'])} in {s['seconds']:.1f} s "
                  f"({s['mb_per_s']:.1f} MB/s) -> {report.out}", highlight=False)
    _print_problems(report)


def _print_problems(report: F.FetchReport) -> None:
    missing = report.missing_checkpoints
    if missing:
        console.print(f"missing at the source (skipped, not an error): {len(missing)} checkpoints: " +
                      ", ".join(f"{g}/{r} ckpt {c}" for g, r, c in missing[:20]) +
                      (" ..." if len(missing) > 20 else ""), style="yellow", highlight=False)
    for r in report.by_status("failed")[:20]:
        console.print(f"failed: {r.task.rel}: {r.error}", style="red", markup=False, highlight=False)

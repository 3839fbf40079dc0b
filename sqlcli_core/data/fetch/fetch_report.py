"""What `fetch` is told and what it reports: `FetchConfig`, one `FileResult` per file, the `FetchReport`,
and the disk-space check made before downloading."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from sqlcli_core.data.fetch.selection import FileTask
from sqlcli_core.errors import ResourceError

REVERIFIED = "re-verified against the manifest"  # notes of --verify-existing


REFETCHED_DAMAGED = "damaged on disk since it was verified: fetched again"


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    """How to fetch: parallelism, retry policy (seconds), chunk size (bytes), whether to only look."""

    jobs: int = 4
    retries: int = 5  # further tries per file after the first; a try that received bytes does not count
    backoff_base: float = 1.0  # seconds; the k-th consecutive failure waits ~ backoff_base * 2**k
    backoff_max: float = 60.0
    chunk_bytes: int = 1 << 20
    dry_run: bool = False
    check_disk: bool = True
    verify_existing: bool = False  # re-hash files the manifest vouches for, instead of trusting size and mtime


@dataclasses.dataclass
class FileResult:
    """What happened to one file: status is fetched | skipped | failed | missing | planned (dry run)."""

    task: FileTask
    status: str
    size: int | None = None
    bytes_transferred: int = 0
    error: str | None = None
    content_error: bool = False  # failed verification (vs could not transfer)
    have_bytes: int = 0  # already on disk before this run (verified file or resumable part)
    note: str | None = None


@dataclasses.dataclass
class FetchReport:
    """The outcome of one fetch (or dry run), with a JSON-ready summary."""

    source: str
    out: Path
    results: list[FileResult]
    seconds: float
    dry_run: bool

    def by_status(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def bytes_transferred(self) -> int:
        return sum(r.bytes_transferred for r in self.results)

    @property
    def total_bytes(self) -> int:
        return sum(r.size or 0 for r in self.results)

    @property
    def bytes_to_fetch(self) -> int:
        return sum((r.size or 0) - r.have_bytes for r in self.results if r.status == "planned")

    @property
    def missing_checkpoints(self) -> list[tuple[str, int, int]]:
        return sorted({(r.task.game, r.task.run, r.task.checkpoint) for r in self.by_status("missing")})

    def summary(self) -> dict:
        mb_s = self.bytes_transferred / 1e6 / self.seconds if self.seconds > 0 else 0.0
        out = {
            "source": self.source,
            "out": str(self.out),
            "dry_run": self.dry_run,
            "files": {s: len(self.by_status(s)) for s in ("planned", "fetched", "skipped", "failed", "missing")},
            "total_bytes": self.total_bytes,
            "bytes_transferred": self.bytes_transferred,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(mb_s, 3),
            "missing_checkpoints": [{"game": g, "run": r, "checkpoint": c} for g, r, c in self.missing_checkpoints],
            "failures": [{"file": r.task.rel, "error": r.error, "content": r.content_error}
                         for r in self.by_status("failed")],
            "reverified": sum(r.note == REVERIFIED for r in self.results),
            "damaged_existing": [r.task.rel for r in self.results if r.note == REFETCHED_DAMAGED],
        }
        if self.dry_run:
            out["bytes_to_fetch"] = self.bytes_to_fetch
            out["planned"] = [{"file": r.task.rel, "bytes": r.size, "have_bytes": r.have_bytes, "note": r.note}
                              for r in self.by_status("planned")]
        return out


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk_space(out: str | os.PathLike, need_bytes: int, what: str = "the selected files") -> None:
    """Raise ResourceError (with the numbers) if the filesystem under `out` has less than `need_bytes` free."""
    free = shutil.disk_usage(_existing_ancestor(Path(out))).free
    if need_bytes > free:
        raise ResourceError(
            f"{what} need {format_bytes(need_bytes)} ({need_bytes} bytes) under {out}, "
            f"but only {format_bytes(free)} ({free} bytes) is free",
            hint="free space, pick another --out, or fetch fewer games/runs/checkpoints (see --dry-run)",
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover

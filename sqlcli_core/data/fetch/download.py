"""Fetching a selection: stat, check the disk, download into `.NAME.part` with resume and retries, verify,
and publish under the final name."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from sqlcli_core.atomic import not_writable, writable_directory
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.fetch.checksums import ObjectInfo
from sqlcli_core.data.fetch.fetch_report import (
    REFETCHED_DAMAGED,
    REVERIFIED,
    FetchConfig,
    FetchReport,
    FileResult,
    check_disk_space,
)
from sqlcli_core.data.fetch.manifest import Manifests
from sqlcli_core.data.fetch.selection import FileTask, Selection, plan_files
from sqlcli_core.data.fetch.sources import (
    CLOSED_BUCKET_HINT,
    Denied,
    LocalSource,
    Missing,
    Permanent,
    Source,
    Stopped,
    Transient,
)
from sqlcli_core.data.fetch.verification import BadPayload, ChecksumMismatch, verify_file
from sqlcli_core.errors import SourceUnavailable, from_os_error
from sqlcli_core.locks import LOCK_NAME, writer_lock
from sqlcli_core.provenance import provenance

try:  # POSIX advisory locks keep two concurrent fetches from writing into the same part file.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

# ------------------------------------------------------------------------------------------ fetching









ProgressFn = Callable[[str, int], None]  # (event, amount): ("total", bytes) once, then ("bytes", n), ("file", 1)


def _sleep_backoff(cfg: FetchConfig, failures: int) -> None:
    delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** max(0, failures - 1))
    time.sleep(delay * (0.5 + random.random() / 2))  # jitter: parallel workers do not retry in lockstep


def _stat_with_retries(source: Source, rel: str, cfg: FetchConfig) -> ObjectInfo:
    failures = 0
    while True:
        try:
            return source.stat(rel)
        except Transient:
            failures += 1
            if failures > cfg.retries:
                raise
            _sleep_backoff(cfg, failures)








class _PartLock:
    """An exclusive advisory lock on a part file, so two processes never interleave writes into it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        if fcntl is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._f.close()
                raise Permanent(f"{self.path} is being written by another fetch-data process") from None
        return self._f

    def __exit__(self, *exc):
        self._f.close()


def _download_part(task: FileTask, info: ObjectInfo, source: Source, cfg: FetchConfig,
                   progress: ProgressFn, part_file: BinaryIO, stop: threading.Event) -> int:
    """Bring `task.part` to `info.size` bytes, resuming from its current size. Returns bytes received.

    Raises Transient on a dropped connection (the part keeps what arrived, for the next try).
    """
    have = os.fstat(part_file.fileno()).st_size
    if have > info.size:
        part_file.truncate(0)
        progress("bytes", -have)
        have = 0
    if have == info.size:
        return 0
    stream = source.open_from(task.rel, have)
    received = 0
    try:
        if stream.total is not None and stream.total != info.size:
            raise Permanent(f"the source now says {stream.total} bytes, it said {info.size} before; re-run")
        if stream.start != have:
            if stream.start != 0:
                raise Permanent(f"asked for bytes from {have}, the source sent bytes from {stream.start}")
            part_file.truncate(0)  # the server ignored Range: start over from its first byte
            progress("bytes", -have)
            have = 0
        part_file.seek(have)
        while have + received < info.size:
            if stop.is_set():
                raise Stopped()
            block = stream.read(min(cfg.chunk_bytes, info.size - have - received))
            if not block:
                break
            part_file.write(block)
            received += len(block)
            progress("bytes", len(block))
    finally:
        part_file.flush()
        stream.close()
    if have + received < info.size:
        raise Transient(f"connection dropped after {have + received} of {info.size} bytes")
    os.fsync(part_file.fileno())
    return received


def _fetch_one(task: FileTask, info: ObjectInfo, source: Source, cfg: FetchConfig,
               manifests: Manifests, progress: ProgressFn, stop: threading.Event) -> FileResult:
    """Download (or link), verify, and atomically publish one file."""
    result = FileResult(task, "failed", size=info.size)
    if isinstance(source, LocalSource) and source.link:
        return _link_one(task, info, source, manifests, result, progress)
    failures = 0
    try:
        with _PartLock(task.part) as part_file:
            while True:
                before = os.fstat(part_file.fileno()).st_size
                try:
                    result.bytes_transferred += _download_part(task, info, source, cfg, progress, part_file, stop)
                    verified = verify_file(task.part, task.kind, info, stop=stop)
                    os.replace(task.part, task.dest)
                    manifests.record(task.dest, verified, source.description)
                    result.status = "fetched"
                    progress("file", 1)
                    return result
                except Transient as exc:
                    after = os.fstat(part_file.fileno()).st_size
                    result.bytes_transferred += max(0, after - before)
                    if after <= before:  # a try that brought bytes does not use up a retry
                        failures += 1
                    if failures > cfg.retries:
                        result.error = f"gave up after {failures} failed tries: {exc}"
                        return result
                    _sleep_backoff(cfg, max(failures, 1))
                except (ChecksumMismatch, BadPayload) as exc:
                    # Bytes that contradict the server's hash were damaged in transit: fetch again from
                    # byte 0. A bad payload whose bytes the server's hash (or a local source) vouches
                    # for is bad at the source, and another copy would be just as bad.
                    size = os.fstat(part_file.fileno()).st_size
                    part_file.truncate(0)
                    progress("bytes", -size)
                    vouched = isinstance(exc, BadPayload) and (
                        info.md5 is not None or info.crc32c is not None or isinstance(source, LocalSource))
                    failures += 1
                    if vouched or failures > cfg.retries:
                        result.error = f"verification failed: {exc}"
                        result.content_error = True
                        with contextlib.suppress(FileNotFoundError):
                            task.part.unlink()
                        return result
                    _sleep_backoff(cfg, failures)
    except Missing as exc:  # it was there a moment ago (HEAD): not a checkpoint missing at the source
        result.error = f"vanished from the source during the run ({exc})"
    except (Denied, Permanent) as exc:
        result.error = str(exc)
    except OSError as exc:  # writing here failed (a full disk, a read-only mount): stops the whole run
        raise from_os_error(exc, f"writing {task.part}") from None
    return result


def _link_one(task: FileTask, info: ObjectInfo, source: LocalSource, manifests: Manifests,
              result: FileResult, progress: ProgressFn) -> FileResult:
    tmp = task.dest.with_name(f".{task.dest.name}.link")
    task.dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        source.make_link(task.rel, tmp)
        verified = verify_file(tmp, task.kind, info)
        os.replace(tmp, task.dest)
        manifests.record(task.dest, verified, source.description)
        result.status = "fetched"
    except (ChecksumMismatch, BadPayload) as exc:
        result.error, result.content_error = f"verification failed: {exc}", True
    except (Permanent, OSError) as exc:
        result.error = str(exc)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if result.status == "fetched":
        progress("file", 1)
    return result


def _verify_existing(task: FileTask, info: ObjectInfo, source: Source, manifests: Manifests) -> bool:
    """A final file without a matching record (placed by hand, or touched since): verify it again.

    Returns True (and records it) if it passes; otherwise removes it so that it is fetched again.
    """
    try:
        verified = verify_file(task.dest, task.kind, info)
    except (ChecksumMismatch, BadPayload):
        task.dest.unlink()
        manifests.forget(task.dest)
        return False
    manifests.record(task.dest, verified, source.description)
    return True


def fetch(selection: Selection, out: str | os.PathLike, source: Source, cfg: FetchConfig = FetchConfig(),
          progress: ProgressFn | None = None) -> FetchReport:
    """Fetch (or, with cfg.dry_run, survey) every file of `selection` from `source` into `out`.

    Steps: files already verified (manifest matches size and mtime) are skipped without touching the
    source; the rest are stat'ed in parallel (HEAD); a refusal (403) or a source holding none of them
    raises SourceUnavailable; the free disk space is checked against what remains to transfer; then
    `cfg.jobs` threads download, verify and publish. A checkpoint whose six files are all absent at
    the source is reported as missing (the spec: checkpoint 50 is missing for some runs); a
    checkpoint with only some files absent makes those files failures. Per-file failures do not stop
    the others; they are in the report.
    """
    out = Path(out)
    progress = progress or (lambda event, n: None)
    t0 = time.monotonic()
    cfg_dict = dataclasses.asdict(cfg)
    stamp = provenance("fetch-data", {"source": source.description, **cfg_dict,
                                      "selection": dataclasses.asdict(selection)}, None)
    manifests = Manifests(stamp)
    tasks = plan_files(selection, out)

    results: dict[FileTask, FileResult] = {}
    to_stat = []
    try:
        out.exists()  # a name too long for the file system fails here, before the source is asked
        for task in tasks:
            if manifests.is_verified(task.dest):
                size = task.dest.stat().st_size
                results[task] = FileResult(task, "skipped", size=size, have_bytes=size, note="verified before")
            else:
                to_stat.append(task)
    except OSError as exc:
        raise not_writable(out, "--out", exc) from None

    infos: dict[FileTask, ObjectInfo] = {}

    def stat_one(task: FileTask):
        if task in infos:
            return task, infos[task], None
        try:
            return task, _stat_with_retries(source, task.rel, cfg), None
        except Missing as exc:
            return task, None, ("missing", str(exc))
        except (Transient, Permanent) as exc:
            return task, None, ("failed", f"could not stat: {exc}")

    denied: Denied | None = None
    if to_stat:
        # One probe first: an unreachable or refusing source fails once, not once per file.
        try:
            infos[to_stat[0]] = _stat_with_retries(source, to_stat[0].rel, cfg)
        except Denied as exc:
            denied = exc
        except Transient as exc:
            raise SourceUnavailable(f"cannot reach {source.description} ({exc})",
                                    hint="check the address and the network, then re-run") from None
        except (Missing, Permanent):
            pass
    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs), thread_name_prefix="sql-stat") as pool:
        futures = [] if denied else [pool.submit(stat_one, t) for t in to_stat]
        for fut in futures:
            try:
                task, info, err = fut.result()
            except Denied as exc:
                denied = denied or exc
                pool.shutdown(wait=False, cancel_futures=True)
                continue
            if info is not None:
                infos[task] = info
            else:
                results[task] = FileResult(task, err[0], error=err[1])
    if denied is not None:
        raise SourceUnavailable(
            f"{source.description} refused to serve the data ({denied})",
            hint=CLOSED_BUCKET_HINT if getattr(source, "is_public_bucket", False)
            else "check the address and your access rights, or use --from DIR",
        )
    if to_stat and not infos and all(results[t].status == "missing" for t in to_stat) and \
            not any(r.status == "skipped" for r in results.values()):
        first = results[to_stat[0]].error
        raise SourceUnavailable(
            f"none of the {len(to_stat)} requested files exist at {source.description} (e.g. {first})",
            hint=CLOSED_BUCKET_HINT if getattr(source, "is_public_bucket", False)
            else "check that it holds {Game}/{run}/replay_logs/ and the games/runs/checkpoints asked for",
        )

    # A checkpoint missing only some of its six files is broken at the source, not just absent.
    missing_by_ckpt: dict[tuple, int] = defaultdict(int)
    for t, r in results.items():
        if r.status == "missing":
            missing_by_ckpt[(t.game, t.run, t.checkpoint)] += 1
    for t, r in results.items():
        if r.status == "missing" and missing_by_ckpt[(t.game, t.run, t.checkpoint)] < len(rf.FILE_KINDS):
            r.status = "failed"
            r.error = f"missing at the source while other files of checkpoint {t.checkpoint} exist ({r.error})"

    linking = isinstance(source, LocalSource) and source.link is not None
    pending = []
    for task, info in infos.items():
        have = 0
        note = None
        if task.dest.exists():
            note = "present, not verified yet"
        elif not linking and task.part.exists():
            have = min(task.part.stat().st_size, info.size)
            note = f"resumes a partial download ({have} bytes)"
        results[task] = FileResult(task, "planned", size=info.size, have_bytes=have, note=note)
        pending.append(task)

    if cfg.dry_run:
        ordered = [results[t] for t in tasks]
        return FetchReport(source.description, out, ordered, time.monotonic() - t0, True)
    if not pending and not cfg.verify_existing:  # everything verified before: nothing to write, nothing to lock
        return FetchReport(source.description, out, [results[t] for t in tasks], time.monotonic() - t0, False)
    writable_directory(out, "--out")
    with _writer_locks(out, tasks):
        manifests = Manifests(stamp)  # read again under the locks: another fetch may have recorded files since
        if cfg.verify_existing:
            for task, ok in _rehash_recorded(tasks, results, manifests, cfg):
                if ok:
                    results[task].note = REVERIFIED
                    continue
                try:  # damaged since it was verified: deleted, fetched again
                    infos[task] = _stat_with_retries(source, task.rel, cfg)
                except (Missing, Denied, Transient, Permanent) as exc:
                    results[task] = FileResult(task, "failed", error=f"damaged on disk, and could not stat: {exc}")
                    continue
                results[task] = FileResult(task, "planned", size=infos[task].size, note=REFETCHED_DAMAGED)
                pending.append(task)
        _download(tasks, pending, results, infos, out, source, cfg, manifests, progress, linking)
    ordered = [results[t] for t in tasks]
    return FetchReport(source.description, out, ordered, time.monotonic() - t0, False)


def _writer_locks(out: Path, tasks: list[FileTask]) -> contextlib.ExitStack:
    """One fetch-data per game/run directory: a lock on each OUT/{Game}/{run}/replay_logs of the selection
    (fetches of other games or runs into the same --out go on in parallel); the second is refused (exit 2)."""
    stack = contextlib.ExitStack()
    try:
        for directory in sorted({t.dest.parent for t in tasks}):
            where = directory.parent.relative_to(out) if directory.is_relative_to(out) else directory
            stack.enter_context(writer_lock(directory / LOCK_NAME, what=f"{where} under {out}",
                                            hint="wait for that fetch-data to finish, or fetch other games/runs"))
    except BaseException:
        stack.close()
        raise
    return stack


def _rehash_recorded(tasks, results, manifests: Manifests, cfg: FetchConfig):
    """(task, ok) for every file the manifest vouched for: its bytes re-hashed (md5 against the record) and
    re-verified (gzip CRC, .npy header and length), `cfg.jobs` at a time. A damaged file is deleted."""
    recorded = [t for t in tasks if results[t].status == "skipped"]

    def check(task: FileTask) -> tuple[FileTask, bool]:
        entry = manifests.recorded(task.dest) or {}
        try:
            ok = verify_file(task.dest, task.kind, None).md5 == entry.get("md5")
        except (ChecksumMismatch, BadPayload):
            ok = False
        except OSError as exc:
            raise from_os_error(exc, f"reading {task.dest}") from None
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                task.dest.unlink()
            manifests.forget(task.dest)
        return task, ok

    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs), thread_name_prefix="sql-rehash") as pool:
        return list(pool.map(check, recorded))


def _download(tasks, pending, results, infos, out, source, cfg, manifests, progress, linking) -> None:
    """Download, verify and publish the pending files (`cfg.jobs` threads), after the disk-space check."""
    need = 0 if linking else sum(results[t].size - results[t].have_bytes for t in pending if not t.dest.exists())
    if cfg.check_disk and need > 0:
        check_disk_space(out, need)

    resumed = sum(results[t].have_bytes for t in pending if not t.dest.exists())
    progress("total", need + resumed)
    if resumed:
        progress("bytes", resumed)

    stop = threading.Event()

    def work(task: FileTask) -> FileResult:
        if stop.is_set():
            raise Stopped()
        info = infos[task]
        if task.dest.exists():
            if _verify_existing(task, info, source, manifests):
                return FileResult(task, "skipped", size=info.size, have_bytes=info.size, note="verified existing file")
            progress("total_add", info.size)
        return _fetch_one(task, info, source, cfg, manifests, progress, stop)

    pool = ThreadPoolExecutor(max_workers=max(1, cfg.jobs), thread_name_prefix="sql-fetch")
    try:
        for res in pool.map(work, pending):
            res.note = res.note or results[res.task].note  # keeps "damaged on disk: fetched again"
            results[res.task] = res
    except BaseException:
        # Ctrl-C, a full disk: workers stop at their next chunk; part files stay for the next run to resume.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(OSError):  # the manifest is a cache: losing entries costs a re-verification
            manifests.flush()
        raise
    try:
        manifests.flush()
    except OSError as exc:
        raise from_os_error(exc, f"writing the fetch manifests under {out}") from None
    pool.shutdown(wait=True)
    # Stale parts of files that are now final (e.g. published by a concurrent run) are garbage.
    for task in tasks:
        if results[task].status in ("fetched", "skipped") and task.part.exists():
            with contextlib.suppress(FileNotFoundError):
                task.part.unlink()

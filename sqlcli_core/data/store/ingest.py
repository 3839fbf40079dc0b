"""`shard`: append DQN-Replay checkpoints to the store in stream order, resumably.

Appending is in stream order, one source checkpoint at a time; its completion record (with the array
length after it) is written last, so a killed run is resumed by truncating the arrays back to the last
record.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gzip
import hashlib
import multiprocessing as mp
import os
import queue
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sqlcli_core.atomic import writable_directory
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.store import remote
from sqlcli_core.data.store.scan import PlannedCheckpoint, SourceCheckpoint, plan_run, scan_source
from sqlcli_core.data.store.schema import (
    ARRAY_DTYPES,
    FRAME_BYTES,
    SOURCE_KIND,
    ShardConfig,
    _zarr,
    create_arrays,
    create_store,
    ensure_run_group,
    iter_runs,
    open_store,
    remove_partial_files,
    run_meta,
    segments_of,
    store_location,
    truncate_rows,
)
from sqlcli_core.data.store.stats import run_report, run_statistics
from sqlcli_core.errors import DataError, SqlError, UsageError, from_os_error
from sqlcli_core.games.catalog import minimal_action_set
from sqlcli_core.locks import LOCK_NAME, directory_flock, writer_lock

# ------------------------------------------------------------------------------------------- hashing


class _HashingReader:
    """A read-only file wrapper that feeds every byte read through sha256 (hash while gunzipping)."""

    def __init__(self, raw):
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


# ------------------------------------------------------------------------------------------- appending


def _check_small(path: Path, kind: str, arr: np.ndarray, num_actions: int) -> None:
    if kind == "terminal" and arr.size and arr.max() > 1:
        raise DataError(f"{path}: terminal values other than 0/1")
    if kind == "reward" and arr.size and (not np.all(np.isfinite(arr)) or np.abs(arr).max() > 1.0):
        raise DataError(f"{path}: rewards outside [-1, 1] (DQN-Replay rewards are clipped)")
    if kind == "action" and arr.size and (arr.min() < 0 or arr.max() >= num_actions):
        raise DataError(f"{path}: actions outside [0, {num_actions}) of the game's minimal action set",
                        hint="is this file from another game?")


def _frame_blocks(path: Path, capacity: int, block_rows: int, out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: gunzip the observation file in blocks of rows; put (row0, block) then ("end", sha, bytes)."""
    try:
        with open(path, "rb") as raw:
            hr = _HashingReader(raw)
            with gzip.GzipFile(fileobj=hr, mode="rb") as f:
                dtype, shape = rf.read_npy_header(f)
                if dtype != np.uint8 or shape != (capacity, *rf.FRAME_SHAPE):
                    raise DataError(f"{path}: {dtype} {shape}, expected uint8 ({capacity}, 84, 84)")
                row = 0
                while row < capacity and not stop.is_set():
                    n = min(block_rows, capacity - row)
                    want = n * FRAME_BYTES
                    buf = bytearray(want)
                    view = memoryview(buf)
                    got = 0
                    while got < want:
                        k = f.readinto(view[got:])
                        if not k:
                            raise DataError(f"{path}: truncated ({row + got // FRAME_BYTES} of {capacity} frames)",
                                            hint="delete it and fetch it again")
                        got += k
                    out.put((row, np.frombuffer(buf, np.uint8).reshape(n, *rf.FRAME_SHAPE)))
                    row += n
                if f.read(1):
                    # More bytes than the header announces: a damaged deflate stream can inflate to extra
                    # bytes before its CRC check fails, so read to the end first and blame the CRC if it does.
                    while f.read(1 << 20):
                        pass
                    raise DataError(f"{path}: data after the .npy payload", hint="this file is not DQN-Replay data")
            hr.drain()
        out.put(("end", hr.sha256.hexdigest(), hr.bytes))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        out.put(("error", DataError(f"{path}: {_gzip_problem(exc)}", hint="delete it and fetch it again")))
    except OSError as exc:  # reading the source failed (not its content): an I/O error of the disk
        out.put(("error", from_os_error(exc, f"reading {path}")))
    except ValueError as exc:
        out.put(("error", DataError(f"{path}: not a plain .npy payload ({exc})", hint="this file is not DQN-Replay data")))
    except BaseException as exc:  # noqa: BLE001 - handed to the writer thread, which re-raises it
        out.put(("error", exc))


def _gzip_problem(exc: BaseException) -> str:
    text = str(exc)
    if "CRC check failed" in text or "incorrect data check" in text:
        return "corrupt gzip stream: its CRC-32 does not match (damaged bytes)"
    return f"corrupt or truncated gzip stream ({text})"


def _runs_of(dest: np.ndarray) -> list[tuple[int, int]]:
    """Maximal [a, b) index ranges of `dest` where dest >= 0 and increases by exactly 1."""
    ok = dest >= 0
    if not ok.any():
        return []
    idx = np.flatnonzero(ok)
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    breaks = np.concatenate([breaks, np.flatnonzero(np.diff(dest[idx]) != 1) + 1])
    cuts = np.unique(np.concatenate([[0], breaks, [len(idx)]]))
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(cuts[:-1], cuts[1:])]


def append_checkpoint(group, item: PlannedCheckpoint, num_actions: int, config: ShardConfig,
                      progress: Callable[[int], None] | None = None, stop: threading.Event | None = None,
                      may_write: Callable[[], None] | None = None) -> dict:
    """Validate one checkpoint's files and write its new rows at store rows [rows_start, rows_end).

    Returns the completion record (not yet committed). On any error the caller truncates the arrays.
    `may_write()` is called before every write and raises when this writer must stop (a lost lease).
    """
    may_write = may_write or (lambda: None)
    c = item.source
    first, _, phys = rf.new_rows(c.add_count, c.capacity, item.first)
    sources: dict[str, dict] = {}
    small: dict[str, np.ndarray] = {}
    for kind in ("add_count", "invalid_range", "action", "reward", "terminal"):
        path = c.files[kind]
        sha, nbytes = _file_sha256(path)
        sources[kind] = {"name": path.name, "bytes": nbytes, "sha256": sha}
        small[kind] = rf.load_npy_gz(path, kind, capacity=c.capacity)
    if int(small["add_count"]) != c.stored_add_count:
        raise DataError(f"{c.files['add_count']}: changed while sharding", hint="re-run when the fetch has finished")
    want_ir = rf.invalid_range(c.add_count % c.capacity, c.capacity)
    if not np.array_equal(small["invalid_range"], want_ir):
        raise DataError(f"{c.files['invalid_range']}: {small['invalid_range'].tolist()} does not match add_count "
                        f"{c.stored_add_count} (expected {want_ir.tolist()})", hint="the checkpoint's files are from different saves")
    for kind in ("action", "reward", "terminal"):
        _check_small(c.files[kind], kind, small[kind], num_actions)

    n_new = item.rows_end - item.rows_start
    may_write()
    for name in ARRAY_DTYPES:
        arr = group[name]
        arr.resize((item.rows_end, *arr.shape[1:]))
    digests = {}
    order = np.sort(phys)  # file order of the new rows
    for name in ("actions", "rewards", "terminals"):
        data = small[SOURCE_KIND[name]]
        group[name][item.rows_start:item.rows_end] = data[phys]
        digests[name] = hashlib.sha256(np.ascontiguousarray(data[order]).tobytes()).hexdigest()

    dest_of_phys = np.full(c.capacity, -1, dtype=np.int64)
    dest_of_phys[phys] = np.arange(item.rows_start, item.rows_end, dtype=np.int64)
    frames = group["frames"]
    block_rows = config.block_chunks * frames.chunks[0]
    q: queue.Queue = queue.Queue(maxsize=2)
    reader_stop = threading.Event()
    reader = threading.Thread(target=_frame_blocks, args=(c.files["observation"], c.capacity, block_rows, q, reader_stop),
                              daemon=True)
    reader.start()
    h = hashlib.sha256()
    try:
        while True:
            msg = q.get()
            if msg[0] == "error":
                raise msg[1]
            if msg[0] == "end":
                sources["observation"] = {"name": c.files["observation"].name, "bytes": msg[2], "sha256": msg[1]}
                break
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            row0, block = msg
            dest = dest_of_phys[row0:row0 + len(block)]
            written = 0
            may_write()
            for a, b in _runs_of(dest):
                frames[int(dest[a]):int(dest[a]) + (b - a)] = block[a:b]
                h.update(block[a:b].tobytes())
                written += b - a
            if progress is not None and written:
                progress(written)
    finally:
        reader_stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        reader.join()
    digests["frames"] = h.hexdigest()
    assert n_new == len(phys)
    return {
        "checkpoint": c.checkpoint, "add_count": c.stored_add_count, "final_buffer": c.final_buffer,
        "capacity": c.capacity,
        "stream_start": item.first, "stream_end": c.add_count, "gap_before": item.gap,
        "rows_start": item.rows_start, "rows_end": item.rows_end, "rotation": item.rotation,
        "sources": {rf.file_name(k, c.checkpoint): sources[k] for k in rf.FILE_KINDS},
        "content_sha256": {k: digests[k] for k in ARRAY_DTYPES},
    }


def _same_source(record: dict, item: PlannedCheckpoint) -> bool:
    c = item.source
    if (record["checkpoint"], record["add_count"], record["capacity"], record["rows_start"], record["rows_end"]) != (
            c.checkpoint, c.stored_add_count, c.capacity, item.rows_start, item.rows_end):
        return False
    for _kind, path in c.files.items():
        rec = record["sources"].get(path.name)
        if rec is None or rec["bytes"] != path.stat().st_size:
            return False
    return True


def shard_run(dst: str | os.PathLike, game: str, run: int, ckpts: Sequence[SourceCheckpoint], config: ShardConfig,
              progress: Callable[[str, int], None] | None = None, stop: threading.Event | None = None) -> dict:
    """Bring DST/{game}/{run} up to date with `ckpts`: resume after the last completion record, append the rest.

    Returns {"game", "run", "appended": [checkpoints], "skipped": [already done], "notes": [...]}.
    """
    # zarr 3.1 compares every chunk with the fill value before writing it unless told not to; that check
    # runs at ~30 MB/s and was 80% of shard's time (154 vs 28 MB/s measured on real frames).
    with _zarr().config.set({"array.write_empty_chunks": True}):
        return _shard_run(dst, game, run, ckpts, config, progress, stop)


def _run_writer(root, dst, game: str, run: int, config: ShardConfig):
    """What keeps a run group to one writer: a lease in object storage (remote.writer_lease), an exclusive
    flock on a local disk (`_local_writer`)."""
    if isinstance(dst, str):
        leases, base = remote.lease_store(dst)  # beside the store, not in it
        return remote.writer_lease(leases, f"{base}/{game}/{run}".strip("/"), what=f"{dst}/{game}/{run}",
                                   seconds=config.lease_seconds)
    return _local_writer(dst, game, run)


def _local_writer(dst: Path, game: str, run: int):
    """One writer per run group of a local store: an exclusive flock on the run group's lock file
    (`run_group_lock`), released by the kernel when its holder dies (`sqlcli_core.locks`), so a killed shard
    leaves nothing to clean up and a second writer is refused with one line naming the first."""
    where = dst / game / str(run)
    return _migrating_lock(writer_lock(run_group_lock(dst, game, run), what=f"the run group {where}",
                                       hint="wait for that shard to finish, or shard into another DST"), where)


def run_group_lock(dst: str | os.PathLike, game: str, run: int) -> Path:
    """Where the writer lock of DST/{Game}/{run} lives: next to the store, never inside it
    (PARENT/.NAME.sql-locks/{Game}.{run}.lock). Zarr lists every entry of a group's directory, so a lock file
    in the store made every zarr/xarray listing warn and counted in the store's bytes on disk. The path is
    the store's real path, so two spellings of one store (a symlink, a relative path) share the lock."""
    real = Path(os.path.realpath(dst))
    return real.parent / f".{real.name}.sql-locks" / f"{game}.{run}.lock"


@contextlib.contextmanager
def _migrating_lock(lock, where: Path):
    """Hold `lock`; remove the lock file earlier versions kept inside the run group (`where`), so that a
    store written by them lists cleanly once a shard has run on it again."""
    with lock as path:
        with contextlib.suppress(OSError):
            (where / LOCK_NAME).unlink(missing_ok=True)
        yield path


def _shard_run(dst, game, run, ckpts, config, progress, stop) -> dict:
    dst = store_location(dst)
    root = open_store(dst, "a")
    with _run_writer(root, dst, game, run, config) as lease:
        try:
            return _shard_locked_run(root, dst, game, run, ckpts, config, progress, stop,
                                     lease.check if lease is not None and hasattr(lease, "check") else (lambda: None))
        except OSError as exc:  # a full disk, an I/O error: one line naming the run, exit 5 (or 2)
            raise from_os_error(exc, f"writing {dst}/{game}/{run}") from None


def _shard_locked_run(root, dst, game, run, ckpts, config, progress, stop, may_write) -> dict:
    group = root[game][str(run)]
    if isinstance(dst, Path):
        remove_partial_files(dst / game / str(run))
    plan = plan_run(ckpts)
    meta = run_meta(group)
    done = list(meta["checkpoints"])
    notes = []
    k = 0
    while k < min(len(done), len(plan)) and _same_source(done[k], plan[k]):
        k += 1
    if k < len(done):
        planned = {p.source.checkpoint for p in plan}
        extra = [r["checkpoint"] for r in done[k:] if r["checkpoint"] not in planned]
        if k == len(plan):
            notes.append(f"{game}/{run}: store already holds checkpoints {[r['checkpoint'] for r in done[k:]]} beyond the selection")
        elif extra:
            raise UsageError(f"{dst}/{game}/{run} holds checkpoints {extra} that the source or --checkpoints "
                             "does not provide", hint="select them too, or shard into a new DST")
        else:
            notes.append(f"{game}/{run}: sources changed from checkpoint {done[k]['checkpoint']} on; re-appending from there")
            done = done[:k]
    key = f"{game}/{run}"
    committed = done[-1]["rows_end"] if done else 0
    todo = plan[k:] if k == len(done) else []
    if progress and committed:
        progress(key, committed)
    if todo or done != meta["checkpoints"] or "frames" not in group or group["frames"].shape[0] != committed:
        may_write()
        create_arrays(group, config)
        truncate_rows(group, committed)
        if done != meta["checkpoints"]:
            meta = {**meta, "checkpoints": done, "rows": committed, "segments": segments_of(done)}
            meta.pop("summary", None)
            group.attrs["sql_run"] = meta
    num_actions = len(minimal_action_set(game))
    appended = []
    for item in todo:
        try:
            record = append_checkpoint(group, item, num_actions, config,
                                       progress=(lambda n: progress(key, n)) if progress else None, stop=stop,
                                       may_write=may_write)
            may_write()
        except BaseException:
            # A writer that lost its lease leaves the rows to the next one; a full disk may refuse the
            # truncation too: the next shard truncates, and readers never read past the committed rows.
            with contextlib.suppress(SqlError, OSError):
                may_write()
                truncate_rows(group, committed)
            raise
        done.append(record)
        committed = record["rows_end"]
        meta = {**meta, "capacity": record["capacity"], "checkpoints": done, "rows": committed,
                "segments": segments_of(done)}
        meta.pop("summary", None)
        group.attrs["sql_run"] = meta  # the completion record: written after the rows, atomically
        appended.append(item.source.checkpoint)
    if "summary" not in meta or meta["summary"].get("n_step") != config.n_step:
        may_write()
        meta = {**meta, "summary": run_statistics(group, meta, config.n_step)}
        group.attrs["sql_run"] = meta
    return {"game": game, "run": run, "appended": appended, "skipped": [r["checkpoint"] for r in done[:k]],
            "notes": notes}


# ------------------------------------------------------------------------------------------- shard


def _create_groups(dst: Path, found, provenance_block: dict | None) -> None:
    """Create the store's root and the selected game and run groups once, one process at a time (two
    shards of different games may start together), and refuse before anything is written when another
    shard holds one of the selected run groups."""
    try:
        with directory_flock(dst):
            root = create_store(dst, provenance_block)
            for game, run in found:
                ensure_run_group(root, game, run)
            for game, run in found:
                with _local_writer(dst, game, run):
                    pass
    except OSError as exc:
        raise from_os_error(exc, f"creating the store {dst}") from None



_worker_queue = None
_worker_stop = None


def _init_worker(q, stop) -> None:
    global _worker_queue, _worker_stop
    _worker_queue, _worker_stop = q, stop


def _worker_shard_run(dst, game, run, ckpts, config):
    return shard_run(dst, game, run, ckpts, config, progress=lambda key, n: _worker_queue.put((key, n)),
                     stop=_worker_stop)


def shard(src: str | os.PathLike, dst: str | os.PathLike, *, games: Sequence[str] | None = None,
          runs: set[int] | None = None, checkpoints: set[int] | None = None, jobs: int = 1,
          config: ShardConfig = ShardConfig(), provenance_block: dict | None = None,
          on_plan: Callable[[dict[str, int]], None] | None = None,
          progress: Callable[[str, int], None] | None = None) -> dict:
    """Shard every selected game/run of SRC into the store DST; runs go to `jobs` worker processes.

    Returns {"runs": [per-run report], "notes": [...], "appended": n, "transitions_selected": rows of the
    selected checkpoints (all runs), "store"}. Idempotent and resumable.
    """
    dst = store_location(dst)
    found, notes = scan_source(src, games, runs, checkpoints)
    plans = {k: plan_run(v) for k, v in found.items()}  # validates ordering before anything is written
    if isinstance(dst, str):  # object storage: conditional creates make the root and groups once
        root = create_store(dst, provenance_block)
        for game, run in found:
            ensure_run_group(root, game, run)
    else:
        writable_directory(dst, "the store")
        _create_groups(dst, found, provenance_block)
    if on_plan:
        on_plan({f"{g}/{r}": plans[(g, r)][-1].rows_end for g, r in found})
    results = []
    if jobs <= 1 or len(found) == 1:
        for (game, run), ckpts in found.items():
            results.append(shard_run(dst, game, run, ckpts, config, progress=progress))
    else:
        ctx = mp.get_context("spawn")  # zarr runs an event-loop thread; never fork a process that has one
        q = ctx.Queue()
        stop = ctx.Event()
        done_reading = threading.Event()

        def drain():
            while not done_reading.is_set() or not q.empty():
                try:
                    key, n = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if progress:
                    progress(key, n)

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        errors: list[BaseException] = []
        try:
            with cf.ProcessPoolExecutor(max_workers=min(jobs, len(found)), mp_context=ctx,
                                        initializer=_init_worker, initargs=(q, stop)) as pool:
                futs = {pool.submit(_worker_shard_run, str(dst), g, r, c, config): (g, r) for (g, r), c in found.items()}
                for fut in cf.as_completed(futs):
                    try:
                        results.append(fut.result())
                    except BaseException as exc:  # noqa: BLE001 - stop the others, then report the first
                        errors.append(exc)
                        stop.set()
        except KeyboardInterrupt:
            stop.set()
            raise
        finally:
            done_reading.set()
            drainer.join()
        real = [e for e in errors if not isinstance(e, KeyboardInterrupt)]
        if real or errors:
            raise (real or errors)[0]
    for r in results:
        notes.extend(r["notes"])
    root = open_store(dst, "r")
    reports = [run_report(dst, g, r, grp) for g, r, grp in iter_runs(root, games=None, runs=None)
               if (g, r) in found]
    return {"runs": reports, "notes": notes, "appended": sum(len(r["appended"]) for r in results),
            "transitions_selected": sum(p[-1].rows_end for p in plans.values()), "store": str(dst)}

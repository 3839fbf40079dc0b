"""The Zarr v3 replay store: schema, `shard` (DQN-Replay checkpoints -> store) and `verify`.

One group per game and run holds the run's temporal stream of rows (gaps from missing checkpoints
removed and recorded as segment boundaries):

    DST/zarr.json                      root group, attrs["sql_store"] (format, version, provenance)
    DST/{Game}/zarr.json               attrs["sql_game"] (name, num_actions)
    DST/{Game}/{run}/zarr.json         attrs["sql_run"]: rows, segments, checkpoint completion records
    DST/{Game}/{run}/frames            uint8   (rows, 84, 84), chunks (FRAME_CHUNK, 84, 84)
    DST/{Game}/{run}/actions|rewards|terminals   int32 | float32 | uint8 (rows,)

Appending is in stream order, one source checkpoint at a time; its completion record (with the array
length after it) is written last, so a killed run is resumed by truncating the arrays back to the last
record. Full schema: docs/store-format.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import gzip
import hashlib
import multiprocessing as mp
import os
import queue
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from sqlcli_core import __version__
from sqlcli_core.atari.games import canonical_name, minimal_action_set
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.transitions import valid_mask
from sqlcli_core.errors import DataError, UsageError

STORE_FORMAT = "sql-replay-store"
STORE_FORMAT_VERSION = 1
FRAME_CHUNK = 512  # frames per chunk: see docs/store-format.md ("Why this chunk and codec")
SCALAR_CHUNK = 1 << 16  # rows per chunk of actions/rewards/terminals
ZSTD_LEVEL = 3
ARRAY_DTYPES = {"frames": "uint8", "actions": "int32", "rewards": "float32", "terminals": "uint8"}
SOURCE_KIND = {"frames": "observation", "actions": "action", "rewards": "reward", "terminals": "terminal"}
FRAME_BYTES = rf.FRAME_SHAPE[0] * rf.FRAME_SHAPE[1]
DEFAULT_N_STEP = 3


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How `shard` lays out a new store (existing arrays keep the layout they were created with)."""

    frame_chunk: int = FRAME_CHUNK  # frames per chunk of `frames`
    scalar_chunk: int = SCALAR_CHUNK  # rows per chunk of actions/rewards/terminals
    zstd_level: int = ZSTD_LEVEL
    block_chunks: int = 8  # frames are streamed from the gzip file in blocks of this many chunks
    n_step: int = DEFAULT_N_STEP  # for the "sampleable transitions" count of the summary


# ------------------------------------------------------------------------------------------- scanning


@dataclasses.dataclass(frozen=True)
class SourceCheckpoint:
    """One checkpoint's six files, with the facts that can be read without decompressing the frames."""

    game: str
    run: int
    checkpoint: int
    files: dict  # kind -> Path
    add_count: int
    capacity: int


@dataclasses.dataclass(frozen=True)
class PlannedCheckpoint:
    """Where a checkpoint's new rows go: stream positions [first, add_count) -> store rows [rows_start, rows_end)."""

    source: SourceCheckpoint
    first: int
    gap: int
    rows_start: int
    rows_end: int
    rotation: int  # leading store rows that come last in the file (see content hashes)


def _read_header(path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        with gzip.open(path, "rb") as f:
            return rf.read_npy_header(f)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})", hint="delete it and fetch it again") from exc
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy payload ({exc})", hint="this file is not DQN-Replay data") from exc


def scan_run(directory: Path, game: str, run: int, checkpoints: set[int] | None) -> list[SourceCheckpoint]:
    """The checkpoints present in one `replay_logs` directory, checked cheaply, sorted by add_count.

    Checks: all six files present; dtypes and shapes from the .npy headers; one capacity; add_count
    a non-negative scalar; add_counts strictly increasing. Frames are not decompressed here.
    """
    by_ckpt: dict[int, dict[str, Path]] = {}
    for p in sorted(directory.iterdir()):
        parsed = rf.parse_file_name(p.name)
        if parsed is None:
            continue
        kind, ckpt = parsed
        if checkpoints is None or ckpt in checkpoints:
            by_ckpt.setdefault(ckpt, {})[kind] = p
    out = []
    for ckpt, files in sorted(by_ckpt.items()):
        missing = [rf.file_name(k, ckpt) for k in rf.FILE_KINDS if k not in files]
        if missing:
            raise DataError(f"{directory}: checkpoint {ckpt} lacks {', '.join(missing)}",
                            hint=f"fetch it again, or remove checkpoint {ckpt}'s files to treat it as missing")
        dtype, shape = _read_header(files["observation"])
        fk = rf.FILE_KINDS["observation"]
        if dtype != fk.dtype or len(shape) != 3 or shape[1:] != rf.FRAME_SHAPE:
            raise DataError(f"{files['observation']}: {dtype} {shape}, expected uint8 (rows, 84, 84)")
        capacity = shape[0]
        for kind in ("action", "reward", "terminal"):
            d, s = _read_header(files[kind])
            if d != rf.FILE_KINDS[kind].dtype or s != (capacity,):
                raise DataError(f"{files[kind]}: {d} {s}, expected {rf.FILE_KINDS[kind].dtype} ({capacity},) "
                                f"like its observation file")
        add_count = int(rf.load_npy_gz(files["add_count"], "add_count"))
        if add_count <= 0:
            raise DataError(f"{files['add_count']}: add_count {add_count} must be positive")
        out.append(SourceCheckpoint(game, run, ckpt, dict(files), add_count, capacity))
    out.sort(key=lambda c: c.add_count)
    for a, b in zip(out, out[1:]):
        if a.capacity != b.capacity:
            raise DataError(f"{b.files['observation']}: capacity {b.capacity} differs from checkpoint "
                            f"{a.checkpoint}'s {a.capacity}")
        if a.add_count == b.add_count:
            raise DataError(f"{b.files['add_count']}: same add_count as checkpoint {a.checkpoint}",
                            hint="one of the two is a copy; remove it")
    return out


def scan_source(src: str | os.PathLike, games: Sequence[str] | None = None, runs: set[int] | None = None,
                checkpoints: set[int] | None = None) -> tuple[dict[tuple[str, int], list[SourceCheckpoint]], list[str]]:
    """All selected (game, run) -> checkpoints under SRC/{Game}/{run}/replay_logs, and notes on what was skipped."""
    src = Path(src)
    if not src.is_dir():
        raise UsageError(f"source directory {src} does not exist", hint="pass the directory that holds {Game}/{run}/replay_logs")
    notes: list[str] = []
    wanted = set(games) if games is not None else None
    found: dict[tuple[str, int], list[SourceCheckpoint]] = {}
    for game_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        try:
            game = canonical_name(game_dir.name)
        except UsageError:
            notes.append(f"skipped {game_dir}: not a known game name")
            continue
        if wanted is not None and game not in wanted:
            continue
        for run_dir in sorted((p for p in game_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
            run = int(run_dir.name)
            if runs is not None and run not in runs:
                continue
            logs = rf.replay_dir(src, game_dir.name, run)
            if not logs.is_dir():
                notes.append(f"skipped {run_dir}: no replay_logs directory")
                continue
            ckpts = scan_run(logs, game, run, checkpoints)
            if ckpts:
                found[(game, run)] = ckpts
            else:
                notes.append(f"skipped {logs}: no selected checkpoints")
    if wanted is not None:
        for g in sorted(wanted - {k[0] for k in found}):
            notes.append(f"{g}: not found under {src}")
    if not found:
        raise UsageError(f"no DQN-Replay checkpoints selected under {src}",
                         hint="expected SRC/{Game}/{run}/replay_logs/$store$_observation_ckpt.N.gz; check --games/--runs/--checkpoints")
    return found, notes


def plan_run(ckpts: Sequence[SourceCheckpoint]) -> list[PlannedCheckpoint]:
    """Place each checkpoint's new rows in the run's stream (ring order, gaps from missing checkpoints)."""
    plan = []
    have = 0  # stream positions [0, have) are covered (or lost in a gap)
    rows = 0
    for c in ckpts:
        first, gap, phys = rf.new_rows(c.add_count, c.capacity, have)
        if len(phys) == 0:
            raise DataError(f"{c.files['add_count']}: add_count {c.add_count} adds no rows after {have}")
        rotation = int(np.count_nonzero(phys >= phys[0])) if phys[-1] < phys[0] else 0
        plan.append(PlannedCheckpoint(c, first, gap, rows, rows + len(phys), rotation))
        have = c.add_count
        rows += len(phys)
    return plan


# ------------------------------------------------------------------------------------------- store


def _zarr():
    import zarr

    return zarr


def store_path(store: str | os.PathLike) -> Path:
    """The local directory of a store given as a path or a `file://` URL.

    Remote schemes (`s3://`, `gs://`, `https://`, ...) raise a one-line UsageError for now: this is the
    one place that will map them to a zarr store backed by fsspec, so that readers (the data view, the
    sampler) need no change.
    """
    text = os.fspath(store)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Path(text)
    if scheme.lower() == "file":
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"{text}: a file:// URL names a local path", hint="write file:///absolute/path")
        return Path(urllib.parse.unquote(parsed.path))
    raise UsageError(f"{text}: {scheme}:// stores are not supported yet",
                     hint="use a local directory (or file:// URL): copy the store there first")


def open_store(path: str | os.PathLike, mode: str = "r"):
    """The root group of a store (a path or a URL, see `store_path`); DataError if it is not one."""
    zarr = _zarr()
    path = store_path(path)
    if mode == "r" and not (path / "zarr.json").exists():
        raise DataError(f"{path} is not a Zarr store", hint="create it with `sql shard SRC DST`")
    try:
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for a broken store
        raise DataError(f"{path}: cannot open as a Zarr v3 group ({exc})") from exc
    meta = root.attrs.get("sql_store")
    if mode == "r" and (not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT):
        raise DataError(f"{path} is a Zarr group but not an sql replay store", hint="create it with `sql shard SRC DST`")
    if isinstance(meta, dict) and meta.get("format_version", 0) > STORE_FORMAT_VERSION:
        raise DataError(f"{path}: store format version {meta['format_version']} is newer than this sql",
                        hint="upgrade sql")
    return root


def create_store(path: str | os.PathLike, provenance_block: dict | None = None):
    """Open DST for appending, creating the root group (with its format attrs) if it does not exist."""
    path = store_path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        open_store(path, "r")  # an existing DST must be an sql store: never adopt another directory
    root = _zarr().open_group(str(path), mode="a", zarr_format=3)
    if "sql_store" not in root.attrs:
        root.attrs["sql_store"] = {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
                                   "tool_version": __version__, "created_by": provenance_block or {}}
    return open_store(path, "a")


def ensure_run_group(root, game: str, run: int):
    """DST/{Game}/{run}, created with its game group's attrs if new."""
    if game not in root:
        g = root.create_group(game)
        g.attrs["sql_game"] = {"game": game, "num_actions": len(minimal_action_set(game))}
    g = root[game]
    if str(run) not in g:
        rg = g.create_group(str(run))
        rg.attrs["sql_run"] = {"game": game, "run": run, "rows": 0, "capacity": None, "segments": [],
                               "checkpoints": [], "tool_version": __version__}
    return g[str(run)]


def run_meta(group) -> dict:
    meta = group.attrs.get("sql_run")
    if not isinstance(meta, dict):
        raise DataError(f"{group.store_path}: not a run group of an sql store (no sql_run attrs)")
    return meta


def iter_runs(root, games: Iterable[str] | None = None, runs: set[int] | None = None):
    """(game, run, group) for every run group of the store, games and runs in sorted order."""
    for game in sorted(k for k in root.group_keys()):
        if games is not None and game not in games:
            continue
        g = root[game]
        for run in sorted((k for k in g.group_keys()), key=int):
            if runs is None or int(run) in runs:
                yield game, int(run), g[run]


def _create_arrays(group, config: ShardConfig) -> None:
    from zarr.codecs import ZstdCodec

    for name, dtype in ARRAY_DTYPES.items():
        if name in group:
            continue
        if name == "frames":
            shape, chunks = (0, *rf.FRAME_SHAPE), (config.frame_chunk, *rf.FRAME_SHAPE)
        else:
            shape, chunks = (0,), (config.scalar_chunk,)
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=[ZstdCodec(level=config.zstd_level)])


def truncate_rows(group, rows: int) -> None:
    """Cut every array back to `rows`, zeroing the cut part of the boundary chunk so that appending again
    produces the same chunk bytes as an uninterrupted run."""
    for name in ARRAY_DTYPES:
        if name not in group:
            continue
        arr = group[name]
        n = arr.shape[0]
        if n <= rows:
            continue
        chunk = arr.chunks[0]
        boundary_end = min(n, -(-rows // chunk) * chunk)
        if boundary_end > rows:
            arr[rows:boundary_end] = 0
        arr.resize((rows, *arr.shape[1:]))


def _remove_partial_files(group_dir: Path) -> None:
    # zarr's LocalStore writes `<key>.<uuid>.partial` and renames; a SIGKILL can leave one behind.
    if group_dir.is_dir():
        for p in group_dir.rglob("*.partial"):
            p.unlink(missing_ok=True)


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


def _file_order(rows_start: int, rows_end: int, rotation: int) -> list[tuple[int, int]]:
    """Store row ranges of one checkpoint in the order its source file holds them (the order of content hashes)."""
    if rotation == 0:
        return [(rows_start, rows_end)]
    return [(rows_start + rotation, rows_end), (rows_start, rows_start + rotation)]


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
                    raise DataError(f"{path}: data after the .npy payload", hint="this file is not DQN-Replay data")
            hr.drain()
        out.put(("end", hr.sha256.hexdigest(), hr.bytes))
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        out.put(("error", DataError(f"{path}: corrupt or truncated gzip stream ({exc})", hint="delete it and fetch it again")))
    except ValueError as exc:
        out.put(("error", DataError(f"{path}: not a plain .npy payload ({exc})", hint="this file is not DQN-Replay data")))
    except BaseException as exc:  # noqa: BLE001 - handed to the writer thread, which re-raises it
        out.put(("error", exc))


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
                      progress: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> dict:
    """Validate one checkpoint's files and write its new rows at store rows [rows_start, rows_end).

    Returns the completion record (not yet committed). On any error the caller truncates the arrays.
    """
    c = item.source
    first, _, phys = rf.new_rows(c.add_count, c.capacity, item.first)
    sources: dict[str, dict] = {}
    small: dict[str, np.ndarray] = {}
    for kind in ("add_count", "invalid_range", "action", "reward", "terminal"):
        path = c.files[kind]
        sha, nbytes = _file_sha256(path)
        sources[kind] = {"name": path.name, "bytes": nbytes, "sha256": sha}
        small[kind] = rf.load_npy_gz(path, kind, capacity=c.capacity)
    if int(small["add_count"]) != c.add_count:
        raise DataError(f"{c.files['add_count']}: changed while sharding", hint="re-run when the fetch has finished")
    want_ir = rf.invalid_range(c.add_count % c.capacity, c.capacity)
    if not np.array_equal(small["invalid_range"], want_ir):
        raise DataError(f"{c.files['invalid_range']}: {small['invalid_range'].tolist()} does not match add_count "
                        f"{c.add_count} (expected {want_ir.tolist()})", hint="the checkpoint's files are from different saves")
    for kind in ("action", "reward", "terminal"):
        _check_small(c.files[kind], kind, small[kind], num_actions)

    n_new = item.rows_end - item.rows_start
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
        "checkpoint": c.checkpoint, "add_count": c.add_count, "capacity": c.capacity,
        "stream_start": item.first, "stream_end": c.add_count, "gap_before": item.gap,
        "rows_start": item.rows_start, "rows_end": item.rows_end, "rotation": item.rotation,
        "sources": {rf.file_name(k, c.checkpoint): sources[k] for k in rf.FILE_KINDS},
        "content_sha256": {k: digests[k] for k in ARRAY_DTYPES},
    }


def segments_of(records: Sequence[dict]) -> list[list[int]]:
    """[[row_start, row_end, stream_start], ...]: maximal runs of records with no lost stream positions between."""
    segs: list[list[int]] = []
    for r in records:
        if segs and r["gap_before"] == 0:
            segs[-1][1] = r["rows_end"]
        else:
            segs.append([r["rows_start"], r["rows_end"], r["stream_start"]])
    return segs


def _same_source(record: dict, item: PlannedCheckpoint) -> bool:
    c = item.source
    if (record["checkpoint"], record["add_count"], record["capacity"], record["rows_start"], record["rows_end"]) != (
            c.checkpoint, c.add_count, c.capacity, item.rows_start, item.rows_end):
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


def _shard_run(dst, game, run, ckpts, config, progress, stop) -> dict:
    dst = store_path(dst)
    root = open_store(dst, "a")
    group = root[game][str(run)]
    _remove_partial_files(Path(dst) / game / str(run))
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
            raise UsageError(f"{Path(dst) / game / str(run)} holds checkpoints {extra} that the source or --checkpoints "
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
        _create_arrays(group, config)
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
                                       progress=(lambda n: progress(key, n)) if progress else None, stop=stop)
        except BaseException:
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
        meta = {**meta, "summary": run_statistics(group, meta, config.n_step)}
        group.attrs["sql_run"] = meta
    return {"game": game, "run": run, "appended": appended, "skipped": [r["checkpoint"] for r in done[:k]],
            "notes": notes}


# ------------------------------------------------------------------------------------------- statistics


def episode_returns(terminals: np.ndarray, rewards: np.ndarray, segments: Sequence[Sequence[int]]) -> np.ndarray:
    """Clipped returns of the complete episodes: those whose start is seen inside the same segment.

    An episode's start is seen when the previous terminal lies in the same segment, or the segment
    starts at stream position 0 (the first episode of the run). Padding rows carry reward 0.
    """
    out = []
    csum = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    for s, e, stream_start in segments:
        ends = s + np.flatnonzero(terminals[s:e])
        if len(ends) == 0:
            continue
        starts = np.concatenate([[s], ends[:-1] + 1])
        rets = csum[ends + 1] - csum[starts]
        out.append(rets if stream_start == 0 else rets[1:])
    return np.concatenate(out) if out else np.zeros(0)


def run_statistics(group, meta: dict, n_step: int) -> dict:
    """Counts the summary reports, from the store's terminals and rewards (5 bytes per row in memory)."""
    rows = meta["rows"]
    terminals = group["terminals"][:rows]
    rewards = group["rewards"][:rows]
    segs = meta["segments"]
    rets = episode_returns(terminals, rewards, segs)
    return {
        "rows": rows, "n_step": n_step,
        "sampleable_transitions": int(valid_mask(terminals, segs, n_step).sum()),
        "episodes": int(len(rets)),
        "return_mean": float(rets.mean()) if len(rets) else None,
        "return_min": float(rets.min()) if len(rets) else None,
        "return_max": float(rets.max()) if len(rets) else None,
        "checkpoints": [r["checkpoint"] for r in meta["checkpoints"]],
        "segments": len(segs),
        "lost_stream_rows": int(sum(r["gap_before"] for r in meta["checkpoints"])),
    }


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_report(dst: str | os.PathLike, game: str, run: int, group) -> dict:
    """The per-run --json entry: the stored summary plus bytes on disk and the frames compression ratio."""
    meta = run_meta(group)
    summary = dict(meta.get("summary") or {})
    base = Path(dst) / game / str(run)
    frames_bytes = disk_bytes(base / "frames")
    return {"game": game, "run": run, **summary, "bytes_on_disk": disk_bytes(base),
            "frames_bytes_on_disk": frames_bytes,
            "compression_ratio": round(meta["rows"] * FRAME_BYTES / frames_bytes, 2) if frames_bytes else None}


# ------------------------------------------------------------------------------------------- shard


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

    Returns {"runs": [per-run report], "notes": [...], "appended": n}. Idempotent and resumable.
    """
    dst = store_path(dst)
    found, notes = scan_source(src, games, runs, checkpoints)
    plans = {k: plan_run(v) for k, v in found.items()}  # validates ordering before anything is written
    root = create_store(dst, provenance_block)
    for game, run in found:
        ensure_run_group(root, game, run)
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
            "store": str(dst)}


# ------------------------------------------------------------------------------------------- verify


def verify(dst: str | os.PathLike, *, games: Sequence[str] | None = None, runs: set[int] | None = None,
           progress: Callable[[str, int], None] | None = None, on_plan: Callable[[dict[str, int]], None] | None = None) -> dict:
    """Re-read every run of a store; check array shapes, per-checkpoint content hashes, segments and counts.

    Returns {"runs": [{"game", "run", "ok", "problems": [...]}, ...], "ok": bool}. Never writes.
    """
    dst = store_path(dst)
    root = open_store(dst, "r")
    selected = list(iter_runs(root, games, runs))
    if not selected:
        raise UsageError(f"{dst}: no runs selected", hint="check --games/--runs")
    if on_plan:
        on_plan({f"{g}/{r}": run_meta(grp)["rows"] for g, r, grp in selected})
    reports = []
    for game, run, group in selected:
        meta = run_meta(group)
        problems = []
        rows = meta["rows"]
        for name, dtype in ARRAY_DTYPES.items():
            if rows and name not in group:
                problems.append(f"array {name} missing")
            elif name in group and (group[name].shape[0] != rows or str(group[name].dtype) != dtype):
                problems.append(f"array {name}: {group[name].dtype} {group[name].shape}, expected {dtype} with {rows} rows")
        recs = meta["checkpoints"]
        prev_end = 0
        for r in recs:
            if r["rows_start"] != prev_end:
                problems.append(f"checkpoint {r['checkpoint']}: rows start at {r['rows_start']}, previous ended at {prev_end}")
            prev_end = r["rows_end"]
        if prev_end != rows:
            problems.append(f"records end at row {prev_end} but rows = {rows}")
        if meta["segments"] != segments_of(recs):
            problems.append("segments do not match the checkpoint records")
        if not problems:
            for r in recs:
                for name in ARRAY_DTYPES:
                    h = hashlib.sha256()
                    arr = group[name]
                    step = 8 * arr.chunks[0] if name == "frames" else 1 << 20
                    for a, b in _file_order(r["rows_start"], r["rows_end"], r["rotation"]):
                        for lo in range(a, b, step):
                            h.update(np.ascontiguousarray(arr[lo:min(b, lo + step)]).tobytes())
                    if h.hexdigest() != r["content_sha256"][name]:
                        problems.append(f"checkpoint {r['checkpoint']}: {name} rows {r['rows_start']}-{r['rows_end']} "
                                        "do not match their recorded sha256")
                if progress:
                    progress(f"{game}/{run}", r["rows_end"] - r["rows_start"])
            summary = meta.get("summary")
            if summary is None:
                problems.append("no summary: the shard of this run did not finish (re-run `sql shard`)")
            else:
                fresh = run_statistics(group, meta, summary["n_step"])
                for key in ("sampleable_transitions", "episodes", "return_mean", "return_min", "return_max", "rows"):
                    if fresh[key] != summary[key]:
                        problems.append(f"{key}: recomputed {fresh[key]}, recorded {summary[key]}")
        reports.append({"game": game, "run": run, "rows": rows, "checkpoints": [r["checkpoint"] for r in recs],
                        "ok": not problems, "problems": problems})
    return {"store": str(dst), "runs": reports, "ok": all(r["ok"] for r in reports)}

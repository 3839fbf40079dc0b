"""The replay store's schema and its reader/writer API: open or create a store, its game and run groups,
their attributes, arrays and segments (docs/store-format.md). A store is given as a path or a URL
(`store_location`)."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlcli_core import __version__
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.store import remote
from sqlcli_core.errors import DataError, SqlError, UsageError
from sqlcli_core.games.catalog import minimal_action_set

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
    lease_seconds: float = remote.LEASE_SECONDS  # object storage: the writer lease time (docs/store-format.md)
    checksum: bool = True  # a crc32c of every chunk of new arrays, checked on every read (store/checked_arrays.py)


# ------------------------------------------------------------------------------------------- store


def _zarr():
    import zarr

    return zarr


def store_location(store: str | os.PathLike) -> Path | str:
    """Where a store lives: a local directory (`Path`, from a path or a `file://` URL), or the URL of a
    store in object storage (`s3://`, `gs://`, `https://`; str, without a trailing slash)."""
    text = os.fspath(store)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Path(text)
    if scheme.lower() == "file":
        parsed = urllib.parse.urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"{text}: a file:// URL names a local path", hint="write file:///absolute/path")
        return Path(urllib.parse.unquote(parsed.path))
    if scheme.lower() not in remote.REMOTE_SCHEMES:
        raise UsageError(f"{text}: {scheme}:// stores are not supported",
                         hint="use a path, file://, s3://, gs:// or https:// (read-only)")
    return f"{scheme.lower()}://{rest.rstrip('/')}"


def absolute_location(store: str | os.PathLike) -> str:
    """How records name a store: an absolute path for a local one (valid from any directory), else its URL."""
    where = store_location(store)
    return str(where.absolute()) if isinstance(where, Path) else where


def store_path(store: str | os.PathLike) -> Path:
    """The local directory of a store given as a path or a `file://` URL (UsageError for object storage)."""
    where = store_location(store)
    if isinstance(where, str):
        raise UsageError(f"{where}: this needs a store on a local file system", hint="copy the store to a directory")
    return where


def _open_group(where: Path | str, mode: str):
    zarr = _zarr()
    if isinstance(where, str):
        return zarr.open_group(remote.open_remote(where, read_only=mode == "r"), mode=mode, zarr_format=3)
    return zarr.open_group(str(where), mode=mode, zarr_format=3)


def _has_root(where: Path | str) -> bool:
    """Whether the store's root group exists; a missing bucket is named (exit 2) rather than "not a store"."""
    if isinstance(where, str):
        store = remote.open_remote(where, read_only=True)
        if remote.run_sync(store.exists("zarr.json")):
            return True
        remote.require_bucket(store)
        return False
    return (where / "zarr.json").exists()


def open_store(path: str | os.PathLike, mode: str = "r"):
    """The root group of a store (a path or a URL, see `store_location`); DataError if it is not one."""
    where = store_location(path)
    if mode == "r" and not _has_root(where):
        raise DataError(f"{where} is not a Zarr store", hint="create it with `sql shard SRC DST`")
    try:
        root = _open_group(where, mode)
    except SqlError:
        raise
    except Exception as exc:  # zarr raises several types for a broken store
        raise DataError(f"{where}: cannot open as a Zarr v3 group ({exc})") from exc
    meta = root.attrs.get("sql_store")
    if mode == "r" and (not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT):
        raise DataError(f"{where} is a Zarr group but not an sql replay store", hint="create it with `sql shard SRC DST`")
    if isinstance(meta, dict) and meta.get("format_version", 0) > STORE_FORMAT_VERSION:
        raise DataError(f"{where}: store format version {meta['format_version']} is newer than this sql",
                        hint="upgrade sql")
    return root


def _store_attrs(provenance_block: dict | None) -> dict:
    return {"sql_store": {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION,
                          "tool_version": __version__, "created_by": provenance_block or {}}}


def create_store(path: str | os.PathLike, provenance_block: dict | None = None):
    """Open DST for appending, creating the root group (with its format attrs) if it does not exist.

    In object storage the root group is written with a conditional create: when several hosts start
    sharding into one new store at once, exactly one root is written and every host opens it."""
    where = store_location(path)
    if isinstance(where, str):
        store = remote.open_remote(where, read_only=False)  # refuses read-only schemes before any request
        if not _has_root(where):
            if remote.run_sync(_lists_anything(store)):
                open_store(where, "r")  # objects but no root: never adopt another prefix
            _create_group_once(store, "", _store_attrs(provenance_block))
        return open_store(where, "a")
    if where.exists() and (not where.is_dir() or any(where.iterdir())):
        open_store(where, "r")  # an existing DST must be an sql store: never adopt another directory
    root = _zarr().open_group(str(where), mode="a", zarr_format=3)
    if "sql_store" not in root.attrs:
        root.attrs.update(_store_attrs(provenance_block))
    return open_store(where, "a")


async def _lists_anything(store) -> bool:
    async for _ in store.list_dir(""):
        return True
    return False


def _create_group_once(store, path: str, attributes: dict) -> None:
    """Write the zarr.json of group `path` with `attributes` unless one exists (one conditional write)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    buffers = GroupMetadata(attributes=attributes, zarr_format=3).to_buffer_dict(default_buffer_prototype())
    key = f"{path.strip('/')}/zarr.json" if path.strip("/") else "zarr.json"
    remote.run_sync(store.set_if_not_exists(key, buffers["zarr.json"]))


def ensure_run_group(root, game: str, run: int):
    """DST/{Game}/{run}, created with its game group's attrs if new."""
    # Conditional creates: several hosts may shard runs of one game into one store at once, and a run
    # group's attrs (its completion records) must never be overwritten by a late "create".
    base = root.store_path.path.strip("/")
    prefix = f"{base}/" if base else ""
    if game not in root:
        _create_group_once(root.store, prefix + game,
                           {"sql_game": {"game": game, "num_actions": len(minimal_action_set(game))}})
    g = root[game]
    if str(run) not in g:
        _create_group_once(root.store, f"{prefix}{game}/{run}",
                           {"sql_run": {"game": game, "run": run, "rows": 0, "capacity": None, "segments": [],
                                        "checkpoints": [], "tool_version": __version__}})
    return g[str(run)]


def run_meta(group) -> dict:
    meta = group.attrs.get("sql_run")
    if not isinstance(meta, dict):
        raise DataError(f"{group.store_path}: not a run group of an sql store (no sql_run attrs)")
    return meta


def iter_runs(root, games: Iterable[str] | None = None, runs: set[int] | None = None):
    """(game, run, group) for every run group of the store, games and runs in sorted order."""
    # One pass over two levels; zarr reads the groups' metadata concurrently (in object storage every
    # read is a round trip, and a store holds up to hundreds of run groups).
    groups = {path: node for path, node in root.members(max_depth=1) if hasattr(node, "group_keys")}
    for game in sorted(p for p in groups if "/" not in p):
        if games is not None and game not in games:
            continue
        run_names = [p.partition("/")[2] for p in groups if p.startswith(game + "/")]
        for run in sorted((r for r in run_names if r.isdigit()), key=int):
            if runs is None or int(run) in runs:
                yield game, int(run), groups[f"{game}/{run}"]


# The dimension names of each array of a run group (zarr v3 `dimension_names`).
DIMENSIONS = {"frames": ("row", "y", "x"), "actions": ("row",), "rewards": ("row",), "terminals": ("row",)}


def create_arrays(group, config: ShardConfig) -> None:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    codecs = [ZstdCodec(level=config.zstd_level), *([Crc32cCodec()] if config.checksum else [])]
    for name, dtype in ARRAY_DTYPES.items():
        if name in group:
            continue
        if name == "frames":
            shape, chunks = (0, *rf.FRAME_SHAPE), (config.frame_chunk, *rf.FRAME_SHAPE)
        else:
            shape, chunks = (0,), (config.scalar_chunk,)
        # Named dimensions (one `row` axis shared by a run's arrays) make a run group an xarray Dataset;
        # arrays of stores written before carry none and read as before.
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=codecs, dimension_names=DIMENSIONS[name])


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


def remove_partial_files(group_dir: Path) -> None:
    # zarr's LocalStore writes `<key>.<uuid>.partial` and renames; a SIGKILL can leave one behind.
    if group_dir.is_dir():
        for p in group_dir.rglob("*.partial"):
            p.unlink(missing_ok=True)



def segments_of(records: Sequence[dict]) -> list[list[int]]:
    """[[row_start, row_end, stream_start], ...]: maximal runs of records with no lost stream positions between."""
    segs: list[list[int]] = []
    for r in records:
        if segs and r["gap_before"] == 0:
            segs[-1][1] = r["rows_end"]
        else:
            segs.append([r["rows_start"], r["rows_end"], r["stream_start"]])
    return segs


def file_order(rows_start: int, rows_end: int, rotation: int) -> list[tuple[int, int]]:
    """Store row ranges of one checkpoint in the order its source file holds them (the order of content hashes)."""
    if rotation == 0:
        return [(rows_start, rows_end)]
    return [(rows_start + rotation, rows_end), (rows_start, rows_start + rotation)]




def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


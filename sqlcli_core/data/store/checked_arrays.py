"""Reading a store so that damage is an error, never data: missing chunks, corrupt chunks, missing metadata.

zarr answers a read of a chunk whose file is gone with the array's fill value (0): a deleted frames chunk
would read as 512 black frames. `shard` writes every chunk of `[0, rows)` (it turns
`write_empty_chunks` on), so within the committed rows a missing chunk is always damage. Readers
therefore open the store through `checked_root`, a store wrapper that raises `MissingChunk` instead of
answering "nothing", and read through `CheckedArray`, which turns that and any decode failure (the
crc32c codec's checksum mismatch, a zstd error, a chunk of the wrong size) into one `DataError` naming the
run, the array and the chunk. Arrays created by this version carry a crc32c checksum of every chunk
(`ShardConfig.checksum`), so a flipped byte is caught where it is read; arrays of older stores have none
and are checked for structure only (a missing chunk, a chunk that does not decode), while
`shard --verify` re-hashes every row of either against the completion records.

`structure_problems` lists game and run directories that have lost their `zarr.json` (zarr would skip
them silently) and run groups that have lost an array's metadata.
"""

from __future__ import annotations

from typing import Any

from sqlcli_core.errors import DataError, SqlError

DAMAGED_HINT = "the store is damaged: re-shard the run into a new store (`sql shard --verify STORE` lists every damaged run)"


class MissingChunk(Exception):
    """A chunk key that the store does not hold (zarr would have read the fill value)."""


def _is_chunk_key(key: str) -> bool:
    return "/c/" in f"/{key}"  # default chunk key encoding: ARRAY/c/i/j/k


def _guard_class():
    from zarr.storage import WrapperStore

    class ChunkGuard(WrapperStore):
        """A read-only view of a zarr store in which reading a missing chunk raises MissingChunk."""

        async def get(self, key: str, prototype, byte_range=None):
            out = await super().get(key, prototype, byte_range)
            if out is None and _is_chunk_key(key):
                raise MissingChunk(key)
            return out

    return ChunkGuard


def checked_root(root):
    """The same store's root group, opened through the missing-chunk guard (read-only)."""
    import zarr

    if type(root.store).__name__ == "ChunkGuard":
        return root
    return zarr.open_group(store=_guard_class()(root.store), path=root.path, mode="r", zarr_format=3)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "checksum" in text.lower():
        return "checksum mismatch"
    return f"does not decode: {type(exc).__name__}: {text[:120]}" if text else f"does not decode ({type(exc).__name__})"


class CheckedArray:
    """A zarr array whose reads fail with one DataError naming `where` (GAME/RUN), the array and the chunk."""

    def __init__(self, array, where: str):
        self._array = array
        self.where = where
        self.name = array.basename if hasattr(array, "basename") else str(array.path).rsplit("/", 1)[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self):
        return self._array.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._array.chunks

    def __len__(self) -> int:
        return self._array.shape[0]

    def __getitem__(self, selection: Any):
        try:
            return self._array[selection]
        except MissingChunk as exc:
            raise self._error(_chunk_of_key(str(exc.args[0])), "is missing (its file was deleted)") from None
        except SqlError:  # already one line: e.g. a remote store that stays unreachable (exit 4), not damage
            raise
        except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many types for a bad chunk
            chunk, why = self._locate(selection, exc)
            raise self._error(chunk, why) from None

    def _error(self, chunk: int | None, why: str) -> DataError:
        c = self._array.chunks[0]
        where = f"chunk {chunk} of {self.name} (rows {chunk * c}-{min(self.shape[0], (chunk + 1) * c)})" \
            if chunk is not None else f"{self.name}"
        return DataError(f"{self.where}: {where} {why}", hint=DAMAGED_HINT)

    def _locate(self, selection: Any, exc: BaseException) -> tuple[int | None, str]:
        """The first chunk of `selection` that fails on its own, and why (error path only)."""
        lo, hi = _row_range(selection, self.shape[0])
        c = self._array.chunks[0]
        for k in range(lo // c, -(-hi // c)):
            try:
                self._array[k * c:min(self.shape[0], (k + 1) * c)]
            except MissingChunk:
                return k, "is missing (its file was deleted)"
            except SqlError:
                raise
            except Exception as inner:  # noqa: BLE001 - see above
                return k, _reason(inner)
        return None, _reason(exc)


def _chunk_of_key(key: str) -> int | None:
    parts = key.split("/c/", 1)[-1].split("/")
    return int(parts[0]) if parts and parts[0].isdigit() else None


def _row_range(selection: Any, n: int) -> tuple[int, int]:
    first = selection[0] if isinstance(selection, tuple) else selection
    if isinstance(first, slice):
        lo, hi, _ = first.indices(n)
        return lo, max(lo, hi)
    if isinstance(first, int):
        return first, first + 1
    return 0, n


def checked_arrays(group, names, where: str) -> dict[str, CheckedArray]:
    return {k: CheckedArray(group[k], where) for k in names}


def structure_problems(root, games=None, arrays: bool = True) -> list[tuple[str, int | None, str]]:
    """Directories of the store that should be groups or arrays but have lost their metadata: a game or run
    directory without `zarr.json` (zarr would skip it silently), and with `arrays`, a run group with rows
    whose array is gone or has lost its `zarr.json`. `games`: only these games. Lists the store through
    zarr, so it works for any zarr store. Returns (game, run or None, what is wrong), in store order."""
    from zarr.core.sync import sync

    from sqlcli_core.data.store.schema import ARRAY_DTYPES

    store = root.store
    base = root.path.strip("/")

    def key(*parts: str) -> str:
        return "/".join(p for p in (base, *parts) if p)

    def children(*parts: str) -> list[str]:
        async def listing():
            return [k async for k in store.list_dir(key(*parts))]

        return sorted(k for k in sync(listing()) if k != "zarr.json" and not k.startswith("."))

    def is_node(*parts: str) -> bool:
        return sync(store.exists(key(*parts, "zarr.json")))

    problems = []
    for game in children():
        if games is not None and game not in games:
            continue
        if not is_node(game):
            problems.append((game, None, "its zarr.json (the game group's metadata) is missing"))
            continue
        for run in children(game):
            if not run.isdigit():
                continue
            if not is_node(game, run):
                problems.append((game, int(run), "its zarr.json (the run group's metadata and completion "
                                                 "records) is missing"))
                continue
            if not arrays:
                continue
            meta = root[game][run].attrs.get("sql_run")
            rows = meta.get("rows", 0) if isinstance(meta, dict) else 0
            present = set(children(game, run))
            for name in ARRAY_DTYPES:
                if name in present and not is_node(game, run, name):
                    problems.append((game, int(run), f"{name}/zarr.json (the array's metadata) is missing"))
                elif name not in present and rows:
                    problems.append((game, int(run), f"the {name} array is missing ({rows} rows recorded)"))
    return problems


def describe(problem: tuple[str, int | None, str]) -> str:
    game, run, what = problem
    return f"{game}{'' if run is None else f'/{run}'}: {what}"

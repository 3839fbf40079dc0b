"""The Zarr v3 replay store: its schema and reader/writer API, `shard` (DQN-Replay checkpoints -> store)
and `verify`.

One group per game and run holds the run's temporal stream of rows (gaps from missing checkpoints
removed and recorded as segment boundaries):

    DST/zarr.json                      root group, attrs["sql_store"] (format, version, provenance)
    DST/{Game}/zarr.json               attrs["sql_game"] (name, num_actions)
    DST/{Game}/{run}/zarr.json         attrs["sql_run"]: rows, segments, checkpoint completion records
    DST/{Game}/{run}/frames            uint8   (rows, 84, 84), chunks (FRAME_CHUNK, 84, 84)
    DST/{Game}/{run}/actions|rewards|terminals   int32 | float32 | uint8 (rows,)

Modules: `schema` (constants, open/create, groups, attributes, segments), `scan` (reading and placing
DQN-Replay checkpoints), `ingest` (appending, `shard`), `stats` (run summaries), `verify`. Full schema:
docs/store-format.md. Samplers read a store through `sqlcli_core.data.view`.
"""

from sqlcli_core.data.store.ingest import append_checkpoint, shard, shard_run
from sqlcli_core.data.store.scan import PlannedCheckpoint, SourceCheckpoint, plan_run, scan_run, scan_source
from sqlcli_core.data.store.schema import (
    ARRAY_DTYPES,
    DEFAULT_N_STEP,
    FRAME_BYTES,
    FRAME_CHUNK,
    SCALAR_CHUNK,
    SOURCE_KIND,
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    ZSTD_LEVEL,
    ShardConfig,
    absolute_location,
    create_arrays,
    create_store,
    disk_bytes,
    ensure_run_group,
    file_order,
    iter_runs,
    open_store,
    run_meta,
    segments_of,
    store_location,
    store_path,
    truncate_rows,
)
from sqlcli_core.data.store.stats import episode_returns, run_report, run_statistics
from sqlcli_core.data.store.verify import verify
from sqlcli_core.data.transitions import valid_mask
from sqlcli_core.errors import DataError, UsageError

__all__ = [
    "ARRAY_DTYPES", "DEFAULT_N_STEP", "FRAME_BYTES", "FRAME_CHUNK", "SCALAR_CHUNK", "SOURCE_KIND", "STORE_FORMAT",
    "STORE_FORMAT_VERSION", "ZSTD_LEVEL", "DataError", "PlannedCheckpoint", "ShardConfig", "SourceCheckpoint",
    "UsageError", "absolute_location", "append_checkpoint", "create_arrays", "create_store", "disk_bytes", "ensure_run_group",
    "episode_returns", "file_order", "iter_runs", "open_store", "plan_run", "run_meta", "run_report",
    "run_statistics", "scan_run", "scan_source", "segments_of", "shard", "shard_run", "store_location", "store_path", "truncate_rows",
    "valid_mask", "verify",
]

"""Download DQN-Replay checkpoints into the bucket's own layout, resumably, verifying every file.

Sources (one `Source` interface): the public bucket or any mirror over HTTP(S) (`HttpSource`), a `gs://`
path through the optional gcsfs extra (`GcsSource`), or a local directory that already holds the layout
(`LocalSource`, copy or hard/symbolic link).

Every file goes through the same steps: bytes land in `.NAME.part` beside the target (resumed from its size
with an HTTP Range request after an interruption), then the part is verified (length; the server's md5 /
crc32c from `x-goog-hash` when it sends one; the gzip stream's own CRC and length; the .npy header's dtype
and shape via `replay_format`; the payload's byte count) and only then renamed to its final name. A final
name therefore always means a verified file. Verified files are recorded (size, mtime, md5) in
`fetch_manifest.json` in each replay_logs directory, so a re-run skips them without re-reading gigabytes;
a file whose size or mtime changed since is verified again.

HTTP uses only the standard library (`http.client`, one keep-alive connection per thread per host).

Modules: `selection` (what to fetch), `checksums`, `sources`, `verification`, `manifest`, `download`
(`fetch`, the driver).
"""

from sqlcli_core.data.fetch.checksums import FAST_CRC32C, ObjectInfo, crc32c, crc32c_py, parse_goog_hash
from sqlcli_core.data.fetch.download import ProgressFn, fetch
from sqlcli_core.data.fetch.fetch_report import FetchConfig, FetchReport, FileResult, check_disk_space, format_bytes
from sqlcli_core.data.fetch.manifest import MANIFEST_NAME, Manifests
from sqlcli_core.data.fetch.selection import (
    LAST_CHECKPOINT,
    NUM_RUNS,
    SUBSET_RUNS,
    SUBSETS,
    TRANSITIONS_PER_CHECKPOINT,
    FileTask,
    Selection,
    parse_checkpoints,
    parse_runs,
    plan_files,
    select_games,
    subset_checkpoints,
    subset_runs,
)
from sqlcli_core.data.fetch.sources import (
    CLOSED_BUCKET_HINT,
    PUBLIC_BUCKET_URL,
    Denied,
    GcsSource,
    HttpSource,
    LocalSource,
    Missing,
    Permanent,
    Source,
    Stopped,
    Stream,
    Transient,
    open_source,
)
from sqlcli_core.data.fetch.verification import BadPayload, ChecksumMismatch, Verified, verify_file

__all__ = [
    "CLOSED_BUCKET_HINT", "FAST_CRC32C", "LAST_CHECKPOINT", "MANIFEST_NAME", "NUM_RUNS", "PUBLIC_BUCKET_URL", "SUBSETS",
    "SUBSET_RUNS", "TRANSITIONS_PER_CHECKPOINT",
    "BadPayload", "ChecksumMismatch", "Denied", "FetchConfig", "FetchReport", "FileResult", "FileTask", "GcsSource",
    "HttpSource", "LocalSource", "Manifests", "Missing", "ObjectInfo", "Permanent", "ProgressFn", "Selection", "Source",
    "Stopped", "Stream", "Transient", "Verified", "check_disk_space", "crc32c", "crc32c_py", "fetch", "format_bytes",
    "open_source", "parse_checkpoints", "parse_goog_hash", "parse_runs", "plan_files", "select_games",
    "subset_checkpoints", "subset_runs", "verify_file",
]

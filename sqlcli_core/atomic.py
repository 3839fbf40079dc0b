"""Write files so that a reader never sees a half-written one.

Every writer puts its bytes in a temporary file beside the target and renames it into place
(rename is atomic on POSIX within one filesystem), so an interrupted command leaves either the
old file or the new one, never a torso of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlcli_core.errors import SqlError, UsageError, from_os_error


def temp_path_for(path: Path) -> Path:
    """A unique temporary name in the same directory as `path` (same filesystem, so rename is atomic)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); results and datasets are meant to be shared like any file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file for writing; on clean exit fsync it and rename it to `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def make_directories(path: str | os.PathLike) -> list[Path]:
    """`mkdir -p path`, undone when it fails: the directories this call created are removed again (deepest
    first) before the OSError propagates, so a refused path (a name too long, a read-only parent) leaves no
    empty parent folder behind. Returns the directories created, outermost first."""
    path = Path(path)
    missing = []
    for candidate in (path, *path.parents):
        if _exists(candidate) or candidate == candidate.parent:
            break
        missing.append(candidate)
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            directory.mkdir(exist_ok=True)
            created.append(directory)
    except OSError:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return created


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long: it does not exist, and creating it gives the error to report
        return False


def writable_directory(path: str | os.PathLike, what: str) -> Path:
    """Create the directory `path` if needed and check that a file can be created in it, before a command
    writes anything there. `what` names it for the user ("--out", "the store"). A one-line SqlError, with
    the class and exit code of `errors.from_os_error`, when it is a regular file, read-only, not permitted,
    under a path that cannot hold files (/proc), or a name too long for the file system."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise UsageError(f"{what} {path} is a file, not a directory", hint="choose a directory path")
        created = make_directories(path)
        try:
            fd, probe = tempfile.mkstemp(prefix=".sql-probe.", dir=path)
        except OSError:
            for directory in reversed(created):  # nothing half-created: the folders made for nothing go again
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise not_writable(path, what, exc) from None
    return path


def not_writable(path: str | os.PathLike, what: str, exc: OSError) -> SqlError:
    """`{what} {path} is not writable (<reason>)`, with the class and exit code `errors.from_os_error` gives."""
    err = from_os_error(exc, f"creating a file in {path}")
    reason = exc.strerror or str(exc)
    return type(err)(f"{what} {path} is not writable ({reason[:1].lower()}{reason[1:]})", hint=err.hint)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically. Returns the path."""
    with atomic_output(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    return Path(path)


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line. Lines are small and written with one call, so a crash loses at most the last."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays, Paths and dataclasses show up in configs and metrics.
    import dataclasses

    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

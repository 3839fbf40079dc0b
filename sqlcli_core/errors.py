"""User-facing errors.

A `SqlError` carries one line that names the thing that is wrong and how to fix it. The CLI prints that
line and exits non-zero; library users can catch it. Anything else that escapes is a bug.
"""

from __future__ import annotations

import errno


class SqlError(Exception):
    """An error caused by input or environment, with a one-line message meant for the user.

    `exit_code` follows the CLI convention (docs/failure-behaviour.md): 2 bad input or usage, 3 data or
    integrity problem, 4 remote source unavailable, 5 resource problem (disk space, memory), 6 training
    diverged (non-finite loss or parameters), 130 interrupted.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(SqlError):
    """Bad option values, unknown names, incompatible settings."""

    exit_code = 2


class DataError(SqlError):
    """A file or store that is missing, truncated, corrupt or of the wrong shape."""

    exit_code = 3


class SourceUnavailable(SqlError):
    """A remote source refused or could not serve what was asked."""

    exit_code = 4


class ResourceError(SqlError):
    """Not enough disk space, memory or devices for what was asked."""

    exit_code = 5


class NonFiniteError(SqlError):
    """Training produced a non-finite loss or non-finite parameters: the run stopped without saving them.

    `step` is the first gradient step seen non-finite (None when unknown); the runner adds the last good
    checkpoint to the hint (`with_checkpoint`).
    """

    exit_code = 6

    def __init__(self, message: str, *, hint: str | None = None, step: int | None = None):
        self.step = step
        super().__init__(message, hint=hint)

    def with_checkpoint(self, run_dir, step: int | None) -> NonFiniteError:
        """The same error, its hint naming the newest checkpoint of `run_dir` (all of them are finite)."""
        where = (f"the last good checkpoint is {run_dir}/checkpoints/{step}; re-running resumes from it"
                 if step is not None else "no checkpoint was written; re-running starts afresh")
        self.hint = f"{where}; lower --lr or set --max-grad-norm, or check the data"
        return self


class SqlWarning(UserWarning):
    """Something the user should know that does not stop the command (e.g. a damaged checkpoint skipped).

    The library raises it with `warnings.warn`; the CLI prints it as one `warning:` line even when it
    silences other libraries' warnings.
    """


# errno -> (error class, what went wrong, what to do). Resources (space, memory, I/O) are exit 5; a path the
# user chose that cannot be used (read-only, permissions, a file where a folder is due, too long) is exit 2.
_OS_ERRORS: dict[int, tuple[type[SqlError], str, str]] = {
    errno.ENOSPC: (ResourceError, "no space left on the device", "free space or write to another place"),
    errno.EDQUOT: (ResourceError, "disk quota exceeded", "free space or write to another place"),
    errno.ENOMEM: (ResourceError, "out of memory", "use smaller settings or a larger machine"),
    errno.EIO: (ResourceError, "input/output error from the device", "check the disk or the mount"),
    errno.EROFS: (UsageError, "the file system is read-only", "write to a writable place"),
    errno.EACCES: (UsageError, "permission denied", "check the path's permissions or write elsewhere"),
    errno.EPERM: (UsageError, "operation not permitted", "check the path's permissions or write elsewhere"),
    errno.ENAMETOOLONG: (UsageError, "a file name is too long for the file system", "use shorter names"),
    errno.ENOTDIR: (UsageError, "a part of the path is a file, not a directory", "choose a directory path"),
    errno.EISDIR: (UsageError, "the path is a directory, not a file", "name a file"),
    errno.ENOENT: (UsageError, "no such file or directory", "check the path"),
    errno.EEXIST: (UsageError, "the path already exists", "remove it or choose another"),
}


def from_os_error(exc: OSError, action: str) -> SqlError:
    """A one-line SqlError for an OSError met while doing `action` ("writing the store data/x.zarr")."""
    cls, what, hint = _OS_ERRORS.get(exc.errno or -1, (ResourceError, exc.strerror or str(exc), "check the path"))
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return cls(f"{what} while {action}{where}", hint=hint)


def memory_error(exc: BaseException, action: str) -> ResourceError | None:
    """A one-line ResourceError (exit 5) for running out of memory while doing `action`, or None when `exc` is
    something else: a MemoryError (numpy's allocation failures included) is host memory; XLA's
    RESOURCE_EXHAUSTED (a runtime error whose text carries that status) is device memory."""
    if isinstance(exc, MemoryError):
        detail = str(exc).splitlines()[0] if str(exc) else "an allocation failed"
        return ResourceError(f"out of host memory while {action} ({detail})",
                             hint="lower --batch-size, --cache-bytes or --prefetch, or free memory")
    text = str(exc)
    if "RESOURCE_EXHAUSTED" in text:
        detail = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), text)[:200]
        return ResourceError(f"out of device memory while {action} ({detail})",
                             hint="lower --batch-size, or use a smaller --arch/--width or more devices")
    return None

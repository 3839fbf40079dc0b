"""User-facing errors.

A `SqlError` carries one line that names the thing that is wrong and how to fix it. The CLI prints that
line and exits non-zero; library users can catch it. Anything else that escapes is a bug.
"""

from __future__ import annotations


class SqlError(Exception):
    """An error caused by input or environment, with a one-line message meant for the user.

    `exit_code` follows the CLI convention: 2 bad input or usage, 3 data or integrity problem,
    4 remote source unavailable, 5 interrupted/resource problem (disk space, etc.).
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

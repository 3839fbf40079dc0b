"""One grammar for sets of small non-negative integers on the command line: `0-9,20`, `1,3`, `all`.

- Items are separated by commas; spaces around them and empty items are ignored.
- An item is `N` or `A-B` (both ends included, A <= B).
- `all` (any case) alone means every value; what that is, is the caller's business (`parse_ranges`
  returns None for it), and callers with no meaning for it refuse it.
Values come back sorted, without repeats. Used by fetch-data and shard (runs, checkpoints), eval
(seeds) and finetune-offline (runs, checkpoints).
"""

from __future__ import annotations

import re

from sqlcli_core.errors import UsageError

_ITEM = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


def parse_ranges(text: str | None, what: str, *, lo: int = 0, hi: int | None = None, allow_all: bool = True,
                 example: str = "0-9,20") -> tuple[int, ...] | None:
    """`"0-9,20"` -> (0, ..., 9, 20); `"all"` (or `text` None) -> None, i.e. every value.

    `what` names the option in messages (e.g. "--runs"); values must lie in [lo, hi] (hi None: no upper
    bound). Raises UsageError (one line, with an example) for anything else.
    """
    if text is None:
        return None
    spec = str(text).strip()
    if spec.lower() == "all":
        if not allow_all:
            raise UsageError(f"bad {what} '{spec}'", hint=f"list the values, e.g. {example}")
        return None
    values: set[int] = set()
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        where = "" if item == spec else f" in '{spec}'"
        m = _ITEM.fullmatch(item)
        if not m:
            raise UsageError(f"bad {what} '{item}'{where}", hint=f"use numbers and ranges such as {example}")
        a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if a > b:
            raise UsageError(f"bad {what} range '{item}': start after end", hint=f"write it as {b}-{a}")
        if a < lo or (hi is not None and b > hi):
            bounds = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            raise UsageError(f"{what} '{item}' is outside {bounds}", hint=f"use values {bounds}, e.g. {example}")
        values.update(range(a, b + 1))
    if not values:
        raise UsageError(f"no {what} in '{spec}'", hint=f"use numbers and ranges such as {example}")
    return tuple(sorted(values))


def parse_range_set(text: str | None, what: str, **kw) -> set[int] | None:
    """`parse_ranges` as a set (None: every value), for filters."""
    values = parse_ranges(text, what, **kw)
    return None if values is None else set(values)


def format_ranges(values) -> str:
    """The inverse: sorted ints -> "0-9,20" (the shortest text of this grammar)."""
    numbers = sorted(set(int(v) for v in values))
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(f"{start}" if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)

"""Row selections of a game's runs for offline fine-tuning: a budget of rows, taken one of two ways.

- `spread` (the default): the budget split evenly over every chosen checkpoint of the chosen runs, the
  first rows of each checkpoint, each piece its own segment (pieces that touch in the stream stay one).
  The paper's "about 1% of the game's data" experiments (2M transitions) load an equal small slice from
  every checkpoint across the run; this rule is our reading of that, not a published recipe.
- `first`: the first rows of the chosen runs and checkpoints in stream order (run 1's earliest, near-random
  checkpoints first).

The result is a `RunSet` whose runs list only the selected rows as segments (`RunView.select`): nothing is
copied, and the sampler's validity rule keeps every stack and n-step window inside one piece.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlcli_core.data.store import absolute_location
from sqlcli_core.data.view import RunSet, RunView, open_run_set
from sqlcli_core.errors import UsageError
from sqlcli_core.ranges import parse_range_set

SLICE_RULES = ("spread", "first")


def select_segments(meta: dict, checkpoints: set[int] | None, budget: int) -> tuple[list[list[int]], int]:
    """`first`: the rows of one run to train on: ([[row_start, row_end, stream_start], ...], rows taken).

    meta: the run's `sql_run` record (segments, checkpoint records). Rows of the chosen checkpoints
    (all when None), intersected with the run's segments, in stream order, cut after `budget` rows.
    """
    if checkpoints is None:
        wanted = [(0, int(meta["rows"]))]
    else:
        wanted = [(int(r["rows_start"]), int(r["rows_end"])) for r in meta.get("checkpoints", [])
                  if int(r["checkpoint"]) in checkpoints]
    pieces: list[list[int]] = []
    taken = 0
    for s, e, stream_start in (seg[:3] for seg in meta["segments"]):
        for ws, we in sorted(wanted):
            lo, hi = max(s, ws), min(e, we)
            if hi <= lo or taken >= budget:
                continue
            hi = min(hi, lo + budget - taken)
            if pieces and pieces[-1][1] == lo and pieces[-1][3] == s:  # contiguous within one segment
                pieces[-1][1] = hi
            else:
                pieces.append([lo, hi, int(stream_start) + lo - s, s])
            taken += hi - lo
    return [p[:3] for p in pieces], taken


def even_shares(sizes: Sequence[int], budget: int) -> list[int]:
    """Split `budget` over pieces of `sizes` rows as evenly as they allow: a piece smaller than its share
    gives all it has and the rest is shared among the others; earlier pieces take the remainder rows."""
    take = [0] * len(sizes)
    left = budget
    open_ = [i for i, n in enumerate(sizes) if n > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        still = []
        for k, i in enumerate(open_):
            got = min(share + (k < extra), sizes[i] - take[i])
            take[i] += got
            left -= got
            if take[i] < sizes[i]:
                still.append(i)
        open_ = still
    return take


def _checkpoint_pieces(view: RunView, checkpoints: set[int] | None) -> list[tuple[int, int, int, int]]:
    """(checkpoint, row_start, row_end, stream_start) of the chosen checkpoints of one run, in stream order."""
    return [(int(r["checkpoint"]), int(r["rows_start"]), int(r["rows_end"]), int(r["stream_start"]))
            for r in view.checkpoints if checkpoints is None or int(r["checkpoint"]) in checkpoints]


def spread_segments(views: Sequence[RunView], checkpoints: set[int] | None, budget: int) -> list[tuple[list[list[int]], int]]:
    """`spread`: per run, ([[row_start, row_end, stream_start], ...], rows taken), the budget split evenly
    over all chosen checkpoints of all runs (`even_shares`), the first rows of each checkpoint."""
    pieces = [_checkpoint_pieces(v, checkpoints) for v in views]
    flat = [p for run in pieces for p in run]
    shares = iter(even_shares([e - s for _, s, e, _ in flat], budget))
    out = []
    for run in pieces:
        segments: list[list[int]] = []
        taken = 0
        for _, s, _end, stream_start in run:
            n = next(shares)
            if n == 0:
                continue
            if segments and segments[-1][1] == s and segments[-1][2] + (s - segments[-1][0]) == stream_start:
                segments[-1][1] = s + n  # the previous piece was whole and this one follows it in the stream
            else:
                segments.append([s, s + n, stream_start])
            taken += n
        out.append((segments, taken))
    return out


def slice_run_set(data, game: str, *, runs: str | None, checkpoints: str | None, budget: int,
                  rule: str = "spread") -> tuple[RunSet, dict]:
    """(run set holding only the selected rows of `game`, JSON record of what was selected).

    data: a store's path or URL (or a RunSet); runs / checkpoints: range texts (None: all in the store).
    """
    if rule not in SLICE_RULES:
        raise UsageError(f"unknown slice rule '{rule}'", hint=f"choose {' or '.join(SLICE_RULES)}")
    source = open_run_set(data, games=[game], runs=parse_range_set(runs, "--runs", lo=1, example="1 or 1-5"))
    if game not in source.games:
        raise UsageError(f"{game} is not in the store {data}",
                         hint=f"it holds {', '.join(source.games) or 'no game'}; shard {game}'s data into it")
    ckpt_set = parse_range_set(checkpoints, "--checkpoints", example="0-1 or 0-9,20")
    views = source.runs_of(game)
    if rule == "spread":
        picked = spread_segments(views, ckpt_set, budget)
    else:
        picked, left = [], budget
        for view in views:
            meta = {"rows": view.rows, "segments": [list(s) for s in view.segments], "checkpoints": view.checkpoints}
            segments, taken = select_segments(meta, ckpt_set, left) if left > 0 else ([], 0)
            picked.append((segments, taken))
            left -= taken
    chosen, record = [], []
    for view, (segments, taken) in zip(views, picked):
        if not segments:
            continue
        chosen.append(view.select(segments))
        record.append({"run": view.run, "rows": taken, "segments": segments,
                       "checkpoints": [c for c, *_ in _checkpoint_pieces(view, ckpt_set)]})
    if not chosen:
        raise UsageError(f"no rows of {game} match --runs {runs or 'all'} --checkpoints {checkpoints or 'all'}",
                         hint="see `sql shard --verify` for the runs and checkpoints the store holds")
    rows = sum(r["rows"] for r in record)
    if rows < budget:  # refused before anything trains, not reported after the run
        raise UsageError(f"--transitions {budget:,} asks for more rows than the {rows:,} of {game} that --runs "
                         f"{runs or 'all'} --checkpoints {checkpoints or 'all'} select in {data}",
                         hint=f"pass --transitions {rows} or fewer, or shard more of {game}'s data into the store")
    location = absolute_location(data) if not isinstance(data, RunSet) else data.location
    return RunSet(source.games, tuple(chosen), source.location), {
        "store": location, "game": game, "rule": rule, "requested_rows": budget, "rows": rows, "runs": record}

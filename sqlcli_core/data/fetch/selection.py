"""What to fetch: games, runs and checkpoints (named subsets included), and the files they make."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import DQN_REPLAY60, resolve_games
from sqlcli_core.ranges import parse_ranges

NUM_RUNS = 5
LAST_CHECKPOINT = 50
SUBSETS = {"sub-optimal": tuple(range(10)), "near-optimal": tuple(range(LAST_CHECKPOINT + 1))}  # checkpoints
# Runs a subset takes unless --runs says otherwise. The paper trains on 400M transitions over its 40 games
# (abstract): 10M per game, i.e. the first 20% of ONE run per game (our inference from that figure).
SUBSET_RUNS = {"sub-optimal": (1,), "near-optimal": tuple(range(1, NUM_RUNS + 1))}
TRANSITIONS_PER_CHECKPOINT = rf.BUCKET_CAPACITY  # each checkpoint logs one ring of 1M agent transitions

# ------------------------------------------------------------------------------------------ selection


def parse_runs(spec: str) -> tuple[int, ...]:
    """`"1,2"`, `"1-3"` or `"all"` -> run numbers in 1..5 (the grammar of `sqlcli_core.ranges`)."""
    return parse_ranges(spec, "run", lo=1, hi=NUM_RUNS, example="1,2 or 1-3") or tuple(range(1, NUM_RUNS + 1))


def parse_checkpoints(spec: str) -> tuple[int, ...]:
    """`"0-9"`, `"0-9,20"` or `"all"` -> checkpoint suffixes in 0..50."""
    return (parse_ranges(spec, "checkpoint", lo=0, hi=LAST_CHECKPOINT, example="0-9 or 0-9,20")
            or tuple(range(LAST_CHECKPOINT + 1)))


def subset_checkpoints(name: str) -> tuple[int, ...]:
    """`sub-optimal` (checkpoints 0-9, a run's first 20%), `near-optimal` (0-50) or `last:N` (the last N)."""
    key = str(name).strip().lower()
    if key in SUBSETS:
        return SUBSETS[key]
    if key.startswith("last:"):
        try:
            n = int(key[5:])
        except ValueError:
            n = 0
        if not 1 <= n <= LAST_CHECKPOINT + 1:
            raise UsageError(f"bad subset '{name}'", hint=f"last:N needs N in 1-{LAST_CHECKPOINT + 1}")
        return tuple(range(LAST_CHECKPOINT + 1 - n, LAST_CHECKPOINT + 1))
    raise UsageError(f"unknown subset '{name}'", hint="use sub-optimal, near-optimal or last:N")


def subset_runs(name: str) -> tuple[int, ...]:
    """The runs a subset takes by default: run 1 for `sub-optimal` (the paper's 400M), all five otherwise."""
    subset_checkpoints(name)  # validates the name
    return SUBSET_RUNS.get(str(name).strip().lower(), tuple(range(1, NUM_RUNS + 1)))


def select_games(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Resolve names and sets via the catalog; refuse games that DQN-Replay does not have."""
    names = tuple(g.name for g in resolve_games(spec))
    absent = [n for n in names if n not in DQN_REPLAY60]
    if absent:
        raise UsageError(
            f"DQN-Replay has no data for {', '.join(absent)}",
            hint="the bucket holds only the 60 games of the dqn-replay60 set (see `sql games dqn-replay60`)",
        )
    return names


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which checkpoints to fetch: every file kind of every (game, run, checkpoint)."""

    games: tuple[str, ...]
    runs: tuple[int, ...]
    checkpoints: tuple[int, ...]

    @property
    def num_files(self) -> int:
        return len(self.games) * len(self.runs) * len(self.checkpoints) * len(rf.FILE_KINDS)

    @property
    def transitions(self) -> int:
        """Transitions selected, from the layout alone (1M per checkpoint; no source is asked)."""
        return len(self.games) * len(self.runs) * len(self.checkpoints) * TRANSITIONS_PER_CHECKPOINT


@dataclasses.dataclass(frozen=True)
class FileTask:
    """One file to fetch: `rel` is its object name below the source root, `dest` its path under --out."""

    game: str
    run: int
    checkpoint: int
    kind: str
    rel: str
    dest: Path

    @property
    def part(self) -> Path:
        """Where its bytes accumulate until verified: `.NAME.part` beside the target."""
        return self.dest.with_name(f".{self.dest.name}.part")


def plan_files(selection: Selection, out: str | os.PathLike) -> list[FileTask]:
    """All files of the selection in (game, run, checkpoint, kind) order."""
    tasks = []
    for game in selection.games:
        for run in selection.runs:
            rel_dir = f"{game}/{run}/replay_logs"
            for ckpt in selection.checkpoints:
                for kind in rf.FILE_KINDS:
                    name = rf.file_name(kind, ckpt)
                    dest = rf.replay_dir(out, game, run) / name
                    tasks.append(FileTask(game, run, ckpt, kind, f"{rel_dir}/{name}", dest))
    return tasks

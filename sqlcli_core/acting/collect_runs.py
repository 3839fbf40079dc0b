"""What one collected game/run is: its settings (`RunConfig`, validated before an emulator starts), its
seeds, its directories, its finished log, and the memory its ring buffer needs; `collect.py` plays it."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.acting.policies import PolicySpec
from sqlcli_core.acting.policies import parse_policy as parse_policy
from sqlcli_core.acting.protocol import PROTOCOLS, ActingProtocol
from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import DataError, ResourceError, UsageError
from sqlcli_core.games.catalog import Game, game_index, validate_variant

LOG_NAME = "collect_log.json"


RESUME_NAME = "resume.json"


MIN_CAPACITY = rf.STACK_SIZE + 1  # Dopamine asserts capacity >= stack_size + update_horizon


ROW_BYTES = 84 * 84 + 4 + 4 + 1  # observation + action + reward + terminal


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one game/run's files (the output root does not)."""

    game: str
    run: int
    transitions: int
    capacity: int = rf.BUCKET_CAPACITY
    protocol: ActingProtocol = PROTOCOLS["dopamine"]
    mode: int | None = None
    difficulty: int | None = None
    seed: int = 0
    policy: PolicySpec = PolicySpec()

    def to_dict(self) -> dict:
        return {
            "game": self.game, "run": self.run, "transitions": self.transitions, "capacity": self.capacity,
            "protocol": self.protocol.to_dict(), "mode": self.mode, "difficulty": self.difficulty,
            "seed": self.seed, "policy": self.policy.to_dict(),
        }


# What plays a checkpoint policy: run directory -> a loaded policy (`runs.policy.load_policy`, passed in by the
# caller so that acting never imports the run layer above it). Top-level, so that worker processes can take it.
PolicyLoader = Callable[[str], Any]


def validate(config: RunConfig, load_policy: PolicyLoader | None = None) -> None:
    """Raise UsageError for values the collector cannot honour (before any emulator starts)."""
    if config.transitions < 1:
        raise UsageError(f"--transitions {config.transitions} must be at least 1", hint="pass the agent steps per run, e.g. 100000")
    if config.run < 1:
        raise UsageError(f"run {config.run} must be at least 1", hint="runs are numbered from 1, like the bucket")
    if config.capacity < MIN_CAPACITY:
        raise UsageError(
            f"--capacity {config.capacity} is below {MIN_CAPACITY} rows",
            hint=f"use at least {MIN_CAPACITY} (Dopamine's stack size + update horizon); the bucket uses {rf.BUCKET_CAPACITY}",
        )
    game = Game(config.game)
    validate_variant(game, config.mode, config.difficulty)
    if config.policy.kind == "pattern" and max(config.policy.pattern) >= game.num_actions:
        raise UsageError(
            f"policy pattern uses action {max(config.policy.pattern)} but {game.name} has {game.num_actions} actions",
            hint=f"use indices 0..{game.num_actions - 1} of its minimal action set (see `sql games {game.name}`)",
        )
    if config.policy.kind == "checkpoint":
        checkpoint_head(load_policy, config.policy.run, game)
    if config.policy.kind == "mixture" and not game.synthetic:
        raise UsageError(f"policy mixture needs a game with known good and poor policies, not {game.name}",
                         hint="use a known-answer game (`sql games diagnostic`), or another --policy")


@functools.lru_cache(maxsize=4)
def load_q_policy(load_policy: PolicyLoader | None, run: str):
    """The checkpoint's policy, once per process and run (restoring an Orbax checkpoint takes seconds)."""
    if load_policy is None:
        raise ValueError("a checkpoint behaviour policy needs load_policy (e.g. sqlcli_core.runs.policy.load_policy)")
    return load_policy(run)


def checkpoint_head(load_policy: PolicyLoader | None, run: str, game: Game) -> int:
    """The head of `game` in the checkpoint's network; refuses heads over another action set."""
    q = load_q_policy(load_policy, run)
    head = game_index(q.games, game.name)
    if q.num_actions[head] != game.num_actions:
        raise UsageError(
            f"the checkpoint's {game.name} head has {q.num_actions[head]} actions, DQN-Replay logs the "
            f"{game.num_actions} of its minimal action set",
            hint="use a run trained on minimal action sets (not full_action_space)",
        )
    return head


def check_memory(capacity: int, jobs: int = 1) -> None:
    """Raise ResourceError when `jobs` ring buffers of `capacity` rows cannot fit in available memory."""
    need = jobs * capacity * ROW_BYTES
    available = _mem_available()
    if available is not None and need > available:
        raise ResourceError(
            f"{jobs} ring buffer(s) of {capacity} rows need {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available",
            hint="lower --capacity or --jobs",
        )


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


def derive_seeds(seed: int, game: str, run: int) -> tuple[int, int]:
    """(emulator seed, policy seed) for one game/run: independent streams from one user seed."""
    state = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(game.encode()), run)).generate_state(2, np.uint32)
    return int(state[0] >> 1), int(state[1])


def run_dir(root: str | os.PathLike, game: str, run: int) -> Path:
    """ROOT/{Game}/{run}: a finished run (its replay_logs/ and collect_log.json)."""
    return rf.replay_dir(root, game, run).parent


def partial_dir(root: str | os.PathLike, game: str, run: int) -> Path:
    """ROOT/{Game}/.{run}.partial: a run being collected."""
    return Path(root) / game / f".{run}.partial"


def normalised(d: dict) -> dict:
    return json.loads(json.dumps(d))


def finished_log(root: str | os.PathLike, config: RunConfig) -> dict | None:
    """The collect_log of this game/run if it is finished with this config; None if there is none yet.

    Raises UsageError if the directory holds a run collected with another config, or data that
    `sql collect` did not write.
    """
    final = run_dir(root, config.game, config.run)
    log_path = final / LOG_NAME
    if not final.exists():
        return None
    if not log_path.exists():
        raise UsageError(f"{final} exists but has no {LOG_NAME} (not written by sql collect)",
                         hint="choose another --out; collect never overwrites other data")
    try:
        log = json.loads(log_path.read_text())
        recorded = log["provenance"]["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{log_path}: unreadable ({exc})", hint="delete that run directory to collect it again") from exc
    want = normalised(config.to_dict())
    if recorded != want:
        diff = sorted(k for k in set(want) | set(recorded) if want.get(k) != recorded.get(k))
        raise UsageError(f"{final} was collected with other settings ({', '.join(diff)})",
                         hint="use another --out, or delete that directory to collect it again")
    return log

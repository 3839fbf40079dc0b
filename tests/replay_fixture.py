"""Small DQN-Replay checkpoints written like Dopamine's ring buffer, with the episodes they contain.

`write_run` plays a fake agent: before every episode 3 zero padding rows, then real rows whose frames
encode their stream position; rows go into a ring of `capacity` rows; a checkpoint is saved whenever
add_count mod capacity reaches capacity - 1 (Dopamine's schedule), plus a final one at the end, written
as the DQN-Replay logger's `log_final_buffer()` does: its add_count file holds the ring position
(true count mod capacity), not the true count (`final_buffer=False`: the true count, as older tools did).
`full_final=True` ends the run with a final buffer at a full ring (cursor capacity - 1) instead of
a regular checkpoint there.
The returned log is the independent reference for the tests (like `collect_log.json`).
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

from sqlcli_core.data import replay_format as rf


@dataclasses.dataclass
class RunLog:
    stream: dict  # "frames", "actions", "rewards", "terminals": the whole temporal stream, position-indexed
    episodes: list  # {"start": first real row, "length", "return"} for every finished episode
    checkpoints: dict  # checkpoint -> true add_count (rows written when it was saved)
    capacity: int


def save_scalar_npy_gz(path: Path, value: int) -> None:
    """add_count as a 0-d int64 .npy in gzip (rf.save_npy_gz's np.ascontiguousarray makes 0-d arrays 1-d)."""
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as gz:
        np.save(gz, np.array(value, np.int64), allow_pickle=False)


def frame_for(position: int, rng: np.random.Generator) -> np.ndarray:
    """A compressible 84x84 frame whose first 8 bytes spell its stream position."""
    f = np.full(rf.FRAME_SHAPE, (position * 37) % 200 + 20, dtype=np.uint8)
    r, c = rng.integers(0, 70, 2)
    f[r:r + 12, c:c + 12] = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    f.reshape(-1)[:8] = np.frombuffer(np.int64(position).tobytes(), np.uint8)
    return f


def make_stream(total: int, num_actions: int, seed: int, mean_episode: int = 40) -> tuple[dict, list]:
    """`total` rows of padding + episodes; the last episode may be unfinished."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((total, *rf.FRAME_SHAPE), np.uint8)
    actions = np.zeros(total, np.int32)
    rewards = np.zeros(total, np.float32)
    terminals = np.zeros(total, np.uint8)
    episodes = []
    pos = 0
    while pos < total:
        pos += rf.PADDING_ROWS  # zero rows: frame 0, action 0, reward 0, terminal 0
        length = int(rng.integers(mean_episode // 4, 2 * mean_episode))
        start = pos
        for k in range(length):
            if pos >= total:
                break
            frames[pos] = frame_for(pos, rng)
            actions[pos] = rng.integers(num_actions)
            rewards[pos] = rng.choice([-1.0, 0.0, 0.0, 1.0])
            terminals[pos] = k == length - 1
            pos += 1
        if pos <= total and terminals[pos - 1]:
            episodes.append({"start": start, "length": length, "return": float(rewards[start:pos].sum())})
    return {"frames": frames, "actions": actions, "rewards": rewards, "terminals": terminals}, episodes


def write_run(root: Path, game: str, run: int, *, capacity: int, total: int, num_actions: int, seed: int,
              missing: tuple[int, ...] = (), mean_episode: int = 40, final_buffer: bool = True,
              full_final: bool = False) -> RunLog:
    """Write ROOT/{game}/{run}/replay_logs/ checkpoints of a `total`-row stream; drop the `missing` ones."""
    assert not full_final or total % capacity == capacity - 1
    stream, episodes = make_stream(total, num_actions, seed, mean_episode)
    ring = {k: np.zeros((capacity, *v.shape[1:]), v.dtype) for k, v in stream.items()}
    d = rf.replay_dir(root, game, run)
    d.mkdir(parents=True, exist_ok=True)
    ckpts = {}
    n = 0
    for add_count in range(1, total + 1):
        row = (add_count - 1) % capacity
        for k in ring:
            ring[k][row] = stream[k][add_count - 1]
        if add_count % capacity == capacity - 1 or add_count == total:
            ckpts[n] = add_count
            if n not in missing:
                cursor = add_count % capacity
                final = add_count == total and n > 0 and (cursor != capacity - 1 or full_final)
                saved = cursor if final and final_buffer else add_count
                rf.save_npy_gz(d / rf.file_name("observation", n), ring["frames"])
                rf.save_npy_gz(d / rf.file_name("action", n), ring["actions"])
                rf.save_npy_gz(d / rf.file_name("reward", n), ring["rewards"])
                rf.save_npy_gz(d / rf.file_name("terminal", n), ring["terminals"])
                save_scalar_npy_gz(d / rf.file_name("add_count", n), saved)
                rf.save_npy_gz(d / rf.file_name("invalid_range", n), rf.invalid_range(cursor, capacity))
            n += 1
    return RunLog(stream, episodes, ckpts, capacity)


def covered_segments(log: RunLog, present: list[int]) -> list[tuple[int, int]]:
    """Stream-position intervals [a, b) that the present checkpoints cover, merged (independent of new_rows)."""
    spans = sorted((max(0, log.checkpoints[c] - log.capacity), log.checkpoints[c]) for c in present)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [tuple(m) for m in merged]


def complete_episodes(log: RunLog, present: list[int]) -> list[dict]:
    """Episodes whose rows and whose start (previous terminal, or stream position 0) lie in one segment."""
    segs = covered_segments(log, present)
    out = []
    for ep in log.episodes:
        lo = ep["start"] - rf.PADDING_ROWS - 1 if ep["start"] > rf.PADDING_ROWS else 0
        hi = ep["start"] + ep["length"]
        if any(a <= lo and hi <= b for a, b in segs):
            out.append(ep)
    return out


def stored_positions(log: RunLog, present: list[int]) -> np.ndarray:
    """Stream positions in store-row order."""
    return np.concatenate([np.arange(a, b) for a, b in covered_segments(log, present)])

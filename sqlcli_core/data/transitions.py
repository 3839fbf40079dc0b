"""The n-step transition rule: which stream indices are valid, and what their window returns.

One home for the rule that the offline sampler, the online replay and the store statistics apply (it is
Dopamine's, with the end of a segment in place of the write cursor):

- Index i of a segment [s, e) of the stream is **valid** iff its stack and its n-step window stay inside
  the segment, `s + PADDING_ROWS <= i` and `i + n <= e - 1` (`index_bounds`), and the `PADDING_ROWS` rows
  before it hold no terminal (the stack stays inside one episode; the zero padding rows before every
  episode cover the stacks at its start).
- Its **n-step window**: for k < n, return += gamma^k r_{i+k}, stopping after the first terminal
  (done = 1, steps = k + 1), else steps = n; state = frames [i-3 .. i], next state = the stack that ends
  at i + steps (`STACK_OFFSETS` added to an index).

Pure numpy functions on arrays; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sqlcli_core.data.replay_format import PADDING_ROWS, STACK_SIZE

__all__ = ["PADDING_ROWS", "STACK_OFFSETS", "STACK_SIZE", "index_bounds", "n_step_window", "no_terminal_before",
           "stack_in_one_episode", "valid_mask"]

STACK_OFFSETS = np.arange(-(STACK_SIZE - 1), 1, dtype=np.int64)  # frames i-3 .. i, oldest first


def index_bounds(start, end, n_step: int):
    """[lo, hi): the indices of a segment [start, end) whose stack and n-step window stay inside it.

    Works on ints and on numpy arrays of segment bounds alike; hi <= lo means no index.
    """
    return start + PADDING_ROWS, end - n_step


def stack_in_one_episode(terminals_before: np.ndarray) -> np.ndarray:
    """(B,) bool from the (B, PADDING_ROWS) terminals of rows i-3 .. i-1: none of them is a terminal."""
    return ~np.asarray(terminals_before).astype(bool).any(axis=1)


def no_terminal_before(terminals: np.ndarray) -> np.ndarray:
    """(rows,) bool: rows whose PADDING_ROWS predecessors *in this array* hold no terminal.

    The first rows see only the predecessors the array has; callers that slice a stream decide those
    rows elsewhere (see `valid_mask`'s `offset`).
    """
    t = np.asarray(terminals).astype(bool)
    rows = len(t)
    before = np.zeros(rows, dtype=bool)
    for k in range(1, PADDING_ROWS + 1):
        if k < rows:
            before[k:] |= t[:-k]
    return ~before


def valid_mask(terminals: np.ndarray, segments: Sequence[Sequence[int]], n_step: int, offset: int = 0) -> np.ndarray:
    """(len(terminals),) bool: which rows are valid indices of an n-step transition.

    `terminals` holds rows [offset, offset + len) of a run whose segments are `segments`
    ([[row_start, row_end, ...], ...]). The first PADDING_ROWS rows of a slice with offset > 0 cannot be
    decided from it and come back False.
    """
    rows = len(terminals)
    ok = np.zeros(rows, dtype=bool)
    for s, e, *_ in segments:
        lo, hi = index_bounds(s, e, n_step)
        lo, hi = max(lo, offset), min(hi, offset + rows)
        if hi > lo:
            ok[lo - offset:hi - offset] = True
    ok[:PADDING_ROWS] = False
    return ok & no_terminal_before(terminals)


def n_step_window(rewards: np.ndarray, terminals: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(return float32 (B,), done bool (B,), steps int64 (B,)) of windows rewards/terminals (B, n).

    The return is summed in float64 in order k = 0 .. n-1 (then rounded once to float32), so every
    sampler that uses this gives the same bits for the same rows.
    """
    rewards = np.asarray(rewards)
    terms = np.asarray(terminals).astype(bool)
    n = rewards.shape[1]
    done = terms.any(axis=1)
    steps = np.where(done, terms.argmax(axis=1) + 1, n)
    ret = np.zeros(rewards.shape[0], dtype=np.float64)
    for k in range(n):
        ret += np.where(k < steps, (gamma ** k) * rewards[:, k].astype(np.float64), 0.0)
    return ret.astype(np.float32), done, steps

"""Row selections for offline fine-tuning: the budget spread over checkpoints (default) or the first rows."""

from __future__ import annotations

import numpy as np
import pytest

from sqlcli_core.data import store as st
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.data.slices import even_shares, select_segments, slice_run_set, spread_segments
from sqlcli_core.data.view import RunView
from sqlcli_core.errors import UsageError
from tests.replay_fixture import write_run


def _view(run, records, rows):
    segs, cur = [], None
    for r in records:  # segments by hand: a new one after a gap
        if cur and r["gap_before"] == 0:
            cur[1] = r["rows_end"]
        else:
            cur = [r["rows_start"], r["rows_end"], r["stream_start"]]
            segs.append(cur)
    return RunView("Pong", run, rows, tuple(tuple(s) for s in segs), {}, tuple(records))


def _rec(ckpt, rs, re_, ss, gap=0):
    return {"checkpoint": ckpt, "rows_start": rs, "rows_end": re_, "stream_start": ss, "gap_before": gap}


def test_even_shares_by_hand():
    assert even_shares([100, 100, 100], 30) == [10, 10, 10]
    assert even_shares([100, 100, 100], 31) == [11, 10, 10]  # the remainder goes to the earliest
    assert even_shares([5, 100, 100], 60) == [5, 28, 27]  # a small piece gives all it has
    assert even_shares([5, 0, 7], 100) == [5, 0, 7]  # more budget than rows: everything
    assert even_shares([3, 3], 1) == [1, 0]


def test_spread_takes_the_first_rows_of_every_checkpoint():
    run1 = _view(1, [_rec(0, 0, 99, 0), _rec(1, 99, 199, 99), _rec(3, 199, 299, 299, gap=100)], 299)
    run2 = _view(2, [_rec(0, 0, 99, 0), _rec(1, 99, 130, 99)], 130)
    got = spread_segments([run1, run2], None, 100)
    assert got == [([[0, 20, 0], [99, 119, 99], [199, 219, 299]], 60), ([[0, 20, 0], [99, 119, 99]], 40)]
    # whole checkpoints that follow each other in the stream stay one segment; the gap still splits
    assert spread_segments([run1], None, 10_000) == [([[0, 199, 0], [199, 299, 299]], 299)]
    assert spread_segments([run1, run2], {1}, 50) == [([[99, 124, 99]], 25), ([[99, 124, 99]], 25)]
    # the first-rows rule, for comparison: run 1's earliest rows only
    meta = {"rows": 299, "segments": [list(s) for s in run1.segments], "checkpoints": list(run1.checkpoints)}
    assert select_segments(meta, None, 100) == ([[0, 100, 0]], 100)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    write_run(root, "Pong", 1, capacity=150, total=700, num_actions=6, seed=11, mean_episode=25)
    write_run(root, "Pong", 2, capacity=150, total=400, num_actions=6, seed=12, mean_episode=25)
    dst = tmp_path_factory.mktemp("dst") / "store"
    st.shard(root, dst, config=st.ShardConfig(frame_chunk=32, scalar_chunk=128))
    return dst


def test_sampling_stays_inside_the_spread_slice(store):
    view, record = slice_run_set(store, "Pong", runs=None, checkpoints=None, budget=320)
    n_ckpt = sum(len(st.run_meta(g)["checkpoints"]) for _, _, g in st.iter_runs(st.open_store(store)))
    assert record["rule"] == "spread" and record["rows"] == 320 and n_ckpt == 8
    assert [r["rows"] for r in record["runs"]] == [200, 120]  # 40 rows from each of 5 + 3 checkpoints
    pieces = {(r["run"], tuple(s)) for r in record["runs"] for s in r["segments"]}
    with ReplaySampler(view, games=["Pong"], batch_size=64, seed=1, cache_bytes=8 << 20, unit_chunks=1) as s:
        keys = np.concatenate([s.next_batch_with_keys()[1] for _ in range(10)])
    for _, run, i in keys:
        assert any(r == run and a + 3 <= i <= b - 1 - 3 for r, (a, b, _) in pieces), (run, i)
    assert len({(int(r), int(i) // 150) for _, r, i in keys}) >= 6  # draws from across the runs' checkpoints
    first, rec = slice_run_set(store, "Pong", runs="1", checkpoints=None, budget=320, rule="first")
    assert rec["runs"] == [{"run": 1, "rows": 320, "segments": [[0, 320, 0]], "checkpoints": [0, 1, 2, 3, 4]}]
    with pytest.raises(UsageError, match="unknown slice rule"):
        slice_run_set(store, "Pong", runs=None, checkpoints=None, budget=10, rule="middle")
    # more rows than the selection holds: refused before anything trains (1100 rows: 700 + 400)
    with pytest.raises(UsageError, match=r"--transitions 1,101 asks for more rows than the 1,100 of Pong that "
                                         r"--runs all --checkpoints all select"):
        slice_run_set(store, "Pong", runs=None, checkpoints=None, budget=1101)
    with pytest.raises(UsageError, match=r"more rows than the 700 of Pong that --runs 1 "):
        slice_run_set(store, "Pong", runs="1", checkpoints=None, budget=701, rule="first")
    assert slice_run_set(store, "Pong", runs=None, checkpoints=None, budget=1100)[1]["rows"] == 1100

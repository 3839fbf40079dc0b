"""SequenceSampler on a real store sharded from ring-buffer checkpoints, against the fixture's own log.

The reference is written in stream positions from the fixture's episode log (what the fake agent played),
not from the store's terminals, so it is independent of the sampler's episode finder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sqlcli_core.data import replay_format as rf
from sqlcli_core.data import store as st
from sqlcli_core.data.sequence_sampler import SequenceSampler, returns_to_go
from sqlcli_core.errors import UsageError
from tests.replay_fixture import covered_segments, stored_positions, write_run

CHUNK = 32
GAMES = ["Breakout", "Pong"]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    specs = {("Pong", 1): dict(total=700, num_actions=6, seed=21, missing=()),
             ("Pong", 2): dict(total=520, num_actions=6, seed=22, missing=(1,)),
             ("Breakout", 1): dict(total=500, num_actions=4, seed=23, missing=())}
    logs = {}
    for (game, run), spec in specs.items():
        log = write_run(root, game, run, capacity=150, mean_episode=20, **spec)
        present = [c for c in log.checkpoints if c not in spec["missing"]]
        logs[(GAMES.index(game), run)] = (log, present)
    dst = tmp_path_factory.mktemp("dst") / "store"
    st.shard(root, dst, config=st.ShardConfig(frame_chunk=CHUNK, scalar_chunk=128))
    return dst, logs


def make(store, **kw):
    args = dict(games=GAMES, batch_size=64, window=4, seed=3, unit_rows=CHUNK, reuse=1.0,
                cache_bytes=2 * 3 * (CHUNK + 3) * (st.FRAME_BYTES + 14))
    args.update(kw)
    return SequenceSampler(store, **args)


def reference_windows(log, present, window: int) -> dict[int, dict]:
    """Valid window starts (store rows) of one run -> {"episode", "positions"}, by the rule in positions."""
    positions = stored_positions(log, present)
    segments = covered_segments(log, present)  # [a, b) in stream positions, store order
    episode_of = {}  # stream position -> finished episode (its padding rows included)
    for ep in log.episodes:
        for q in range(ep["start"] - rf.PADDING_ROWS, ep["start"] + ep["length"]):
            episode_of[q] = ep
    out = {}
    for i in range(len(positions) - window + 1):
        q = positions[i:i + window]
        if not np.array_equal(q, q[0] + np.arange(window)):
            continue  # crosses a lost checkpoint
        a, b = next((a, b) for a, b in segments if a <= q[0] < b)
        eps = {id(episode_of.get(int(x))) for x in q}
        ep = episode_of.get(int(q[0]))
        if ep is None or len(eps) != 1:
            continue  # outside any finished episode, or spans two
        end = ep["start"] + ep["length"] - 1
        if q[-1] < ep["start"] or end >= b:
            continue  # ends on padding, or its terminal was not stored in this segment
        start_seen = a == 0 or ep["start"] - rf.PADDING_ROWS - 1 >= a  # previous terminal in the segment
        if not start_seen and q[0] < a + rf.PADDING_ROWS:
            continue  # rows s..s+2 of a segment starting mid-stream: padding status unknown
        out[i] = {"episode": ep, "positions": q}
    return out


def test_returns_to_go_hand_case():
    rewards = np.array([1, 0, -1, 1, 0, 1, 1], np.float32)
    terminals = np.array([0, 0, 1, 0, 1, 0, 0], np.uint8)
    got = returns_to_go(rewards, terminals)
    np.testing.assert_array_equal(got[:5], [0, -1, -1, 1, 0])
    assert np.isnan(got[5:]).all()  # the last episode is unfinished


@pytest.mark.parametrize("window", [1, 4, 9])
def test_counts_equal_the_reference(fixture, window):
    store, logs = fixture
    with make(store, window=window) as s:
        for g in (0, 1):
            want = sum(len(reference_windows(log, present, window)) for (gi, _), (log, present) in logs.items() if gi == g)
            assert s.valid_counts[g] == want, (g, window)


def test_windows_never_cross_episodes_or_segments(fixture):
    """Every sampled window is a valid reference window, with its frames, returns-to-go and flags right."""
    store, logs = fixture
    window = 4
    refs = {key: reference_windows(log, present, window) for key, (log, present) in logs.items()}
    seen = set()
    padded = crossing_checked = 0
    with make(store, window=window, batch_size=128) as s:
        for _ in range(80):
            batch, keys = s.next_batch_with_keys()
            assert batch.frames.shape == (128, window, 84, 84) and batch.frames.dtype == np.uint8
            assert batch.return_to_go.dtype == np.float32 and batch.step_mask.dtype == np.float32
            for b, (g, run, row) in enumerate(keys):
                ref = refs[(int(g), int(run))].get(int(row))
                assert ref is not None, (g, run, row)  # never an invalid start
                seen.add((int(g), int(run), int(row)))
                log = logs[(int(g), int(run))][0]
                ep, q = ref["episode"], ref["positions"]
                end = ep["start"] + ep["length"] - 1
                stream = log.stream
                np.testing.assert_array_equal(batch.frames[b], stream["frames"][q])
                np.testing.assert_array_equal(batch.action[b], stream["actions"][q])
                np.testing.assert_array_equal(batch.reward[b], stream["rewards"][q])
                want_rtg = [stream["rewards"][x:end + 1].sum() for x in q]
                np.testing.assert_allclose(batch.return_to_go[b], want_rtg, atol=1e-6)
                np.testing.assert_array_equal(batch.terminal[b], (q == end).astype(np.float32))
                np.testing.assert_array_equal(batch.step_mask[b], (q >= ep["start"]).astype(np.float32))
                assert batch.terminal[b, :-1].sum() == 0 and batch.step_mask[b, -1] == 1
                padded += int(batch.step_mask[b, 0] == 0)
                crossing_checked += int(run == 2 and g == 1)
    total = sum(len(r) for r in refs.values())
    assert len(seen) / total > 0.95  # (almost) all reached
    assert padded > 0 and crossing_checked > 0  # windows opening in padding rows, and the run with a gap


def test_uniform_marginal_and_game_weights(fixture):
    store, logs = fixture
    refs = {key: reference_windows(log, present, 4) for key, (log, present) in logs.items()}
    counts: dict = {}
    with make(store, batch_size=256, reuse=2.0, game_weights=[1, 3]) as s:
        games = []
        for _ in range(60):
            batch, keys = s.next_batch_with_keys()
            games.append(batch.game)
            for k in map(tuple, keys.tolist()):
                counts[k] = counts.get(k, 0) + 1
    assert np.mean(np.concatenate(games) == 1) == pytest.approx(0.75, abs=0.02)
    for g in (0, 1):
        keys = [(g, run, i) for (gi, run), r in refs.items() if gi == g for i in r]
        c = np.array([counts.get(k, 0) for k in keys], np.float64)
        expected = c.sum() / len(keys)
        chi2_dof = ((c - expected) ** 2 / expected).sum() / (len(keys) - 1)
        assert chi2_dof < 2.5 * 3, (g, chi2_dof)  # i.i.d. gives ~1, the cache's correlation ~1 + reuse


def test_deterministic_and_restorable(fixture):
    store, _ = fixture

    def same(x, y):
        for field in x._fields:
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)

    with make(store) as a, make(store) as b:
        first = [a.next_batch() for _ in range(5)]
        for x in first:
            same(x, b.next_batch())
        state = json.loads(json.dumps(a.state_dict()))
        assert state["step"] == 5
        later = [a.next_batch() for _ in range(12)]  # crosses many unit replacements
    with make(store) as c:
        c.load_state_dict(state)
        for x in later:
            same(x, c.next_batch())
    with make(store, seed=4) as d, make(store, process_index=1, process_count=2) as e:
        assert not np.array_equal(d.next_batch().frames, first[0].frames)
        assert not np.array_equal(e.next_batch().frames, first[0].frames)
    with make(store, window=5) as f, pytest.raises(UsageError, match="window"):
        f.load_state_dict(state)


def test_bad_settings(fixture):
    store, _ = fixture
    with pytest.raises(UsageError, match="cache_bytes"):  # a setting too small: exit 2
        make(store, cache_bytes=1000)
    with pytest.raises(UsageError, match="not in the store"):
        make(store, games=["Pong", "Qbert"])
    with pytest.raises(UsageError, match="no complete episode"):
        make(store, window=500)
    with pytest.raises(UsageError, match="not a sequence sampler state"):
        make(store).load_state_dict({"format": "sql-replay-sampler"})


def test_reads_the_run_set_and_keeps_to_a_row_selection(fixture):
    """A RunSet gives the batches the store path gives; a row selection keeps every window inside it."""
    from sqlcli_core.data.view import RunSet, open_run_set

    store, logs = fixture
    data = open_run_set(store)
    with make(store) as by_path, make(data) as by_view:
        for _ in range(3):
            (x, kx), (y, ky) = by_path.next_batch_with_keys(), by_view.next_batch_with_keys()
            np.testing.assert_array_equal(kx, ky)
            np.testing.assert_array_equal(x.frames, y.frames)
            np.testing.assert_array_equal(x.return_to_go, y.return_to_go)
        full = by_path.valid_counts
    cut = 300  # keep rows [0, 300) of Pong run 1
    runs = tuple(r.select([(s, min(e, cut), ss) for s, e, ss in r.segments if s < cut])
                 if (r.game, r.run) == ("Pong", 1) else r for r in data.runs)
    refs = reference_windows(*logs[(1, 1)], 4)
    with make(RunSet(data.games, runs, data.location), batch_size=128) as s:
        assert s.valid_counts[0] == full[0] and s.valid_counts[1] < full[1]
        pong_run1 = 0
        for _ in range(20):
            _, keys = s.next_batch_with_keys()
            for g, run, row in keys:
                if (int(g), int(run)) == (1, 1):
                    assert int(row) in refs and int(row) + 4 <= cut, row
                    pong_run1 += 1
        assert pong_run1 > 0

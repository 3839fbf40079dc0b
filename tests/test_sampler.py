"""ReplaySampler against the slow reference sampler, on a real store sharded from ring-buffer checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sqlcli_core.data import store as st
from sqlcli_core.data.reference_sampler import ReferenceSampler, reference_transition
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.errors import UsageError
from tests.replay_fixture import write_run

CHUNK = 32
UNIT_BYTES = (CHUNK + 3 + 3) * (st.FRAME_BYTES + 9) + CHUNK * 4  # one cache slot with unit_chunks=1, n=3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    write_run(root, "Pong", 1, capacity=150, total=700, num_actions=6, seed=11, mean_episode=25)
    write_run(root, "Pong", 2, capacity=150, total=400, num_actions=6, seed=12, mean_episode=25, missing=(1,),
              final_buffer=False)  # a last checkpoint that stores its true count (its predecessor is missing)
    write_run(root, "Breakout", 1, capacity=150, total=500, num_actions=4, seed=13, mean_episode=25)
    dst = tmp_path_factory.mktemp("dst") / "store"
    st.shard(root, dst, config=st.ShardConfig(frame_chunk=CHUNK, scalar_chunk=128))
    return dst


@pytest.fixture(scope="module")
def reference(store):
    return ReferenceSampler(store, games=["Breakout", "Pong"])


def make(store, **kw):
    args = dict(games=["Breakout", "Pong"], batch_size=64, cache_bytes=3 * 2 * UNIT_BYTES + 2 * UNIT_BYTES,
                unit_chunks=1, seed=5, reuse=1.0)
    args.update(kw)
    return ReplaySampler(store, **args)


def assert_batches_equal(a, b):
    for field in a._fields:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_fast_equals_reference_on_the_same_indices(store, reference):
    with make(store) as s:
        assert [g.name for g in s.games] == ["Breakout", "Pong"] and s.slots_per_game == 3
        for _ in range(12):
            batch, keys = s.next_batch_with_keys()
            assert batch.state.shape == (64, 4, 84, 84) and batch.state.dtype == np.uint8
            assert batch.reward.dtype == np.float32 and batch.steps.dtype == np.int32
            assert_batches_equal(batch, reference.batch(keys))
        assert s.uniformity_report()["slots_per_game"] == 3


@pytest.mark.parametrize("n_step,gamma", [(1, 0.9), (5, 0.99)])
def test_other_n_and_gamma(store, n_step, gamma):
    ref = ReferenceSampler(store, games=["Pong"], n_step=n_step, gamma=gamma)
    with make(store, games=["Pong"], n_step=n_step, gamma=gamma, cache_bytes=4 * UNIT_BYTES * 2) as s:
        saw_done = 0
        for _ in range(6):
            batch, keys = s.next_batch_with_keys()
            assert_batches_equal(batch, ref.batch(keys))
            saw_done += int(batch.done.sum())
        assert saw_done > 0  # windows that end at a terminal are exercised


def test_reference_transition_hand_case():
    frames = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)
    stream = {"frames": frames, "actions": np.arange(10, dtype=np.int32),
              "rewards": np.array([0, 0, 0, 0, 1, -1, 1, 0, 0, 0], np.float32),
              "terminals": np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0], np.uint8)}
    t = reference_transition(stream, 4, 3, 0.5)
    assert (t["reward"], t["done"], t["steps"]) == (np.float32(1 - 0.5), 1.0, 2)
    assert t["state"][:, 0, 0].tolist() == [1, 2, 3, 4] and t["next_state"][:, 0, 0].tolist() == [3, 4, 5, 6]
    t = reference_transition(stream, 3, 3, 0.5)
    assert (t["reward"], t["done"], t["steps"]) == (np.float32(0 + 0.5 - 0.25), 1.0, 3)
    t = reference_transition(stream, 6, 3, 0.5)
    assert (t["reward"], t["done"], t["steps"]) == (np.float32(1.0), 0.0, 3)
    assert t["next_state"][:, 0, 0].tolist() == [6, 7, 8, 9]


def test_only_valid_indices_and_uniform_marginal(store, reference):
    """Over many batches every valid index is drawn, no invalid one, with frequencies close to uniform."""
    B, batches, reuse = 256, 100, 2.0
    with make(store, batch_size=B, reuse=reuse) as s:
        counts = {}
        game_counts = np.zeros(2)
        for _ in range(batches):
            batch, keys = s.next_batch_with_keys()
            game_counts += np.bincount(batch.game, minlength=2)
            for g, r, i in keys:
                counts[(int(g), int(r), int(i))] = counts.get((int(g), int(r), int(i)), 0) + 1
    valid = {(g, r, i) for (g, r) in reference.streams for i in reference.valid_indices(g, r)}
    assert set(counts) <= valid  # never an invalid index
    assert len(set(counts)) / len(valid) > 0.97  # (almost) all reached in 100 batches
    # within each game: chi-square of per-index counts against uniform, relative to its degrees of freedom.
    # i.i.d. sampling gives ~1; the cache correlates draws (each resident row is drawn ~reuse times per
    # residency), which inflates it to about 1 + reuse. A biased marginal would give far more.
    for g in (0, 1):
        keys = [k for k in valid if k[0] == g]
        c = np.array([counts.get(k, 0) for k in keys], dtype=np.float64)
        expected = c.sum() / len(keys)
        chi2_dof = ((c - expected) ** 2 / expected).sum() / (len(keys) - 1)
        print(f"game {g}: chi2/dof {chi2_dof:.2f} over {len(keys)} indices, {c.sum():.0f} draws")
        assert chi2_dof < 2.5 * (1 + reuse), chi2_dof
        # runs of a game in proportion to their valid counts
        if g == 1:
            for run in (1, 2):
                share = sum(counts.get(k, 0) for k in keys if k[1] == run) / c.sum()
                want = len(reference.valid_indices(1, run)) / len(keys)
                assert share == pytest.approx(want, abs=0.03)
    assert game_counts[0] / game_counts.sum() == pytest.approx(0.5, abs=0.02)


def test_game_weights(store):
    with make(store, game_weights=[3, 1], batch_size=512, reuse=8.0) as s:
        games = np.concatenate([s.next_batch().game for _ in range(20)])
    assert np.mean(games == 0) == pytest.approx(0.75, abs=0.02)


def test_deterministic_and_restorable(store):
    with make(store) as a, make(store) as b:
        first = [a.next_batch() for _ in range(7)]
        for x in first:
            assert_batches_equal(x, b.next_batch())
        state = json.loads(json.dumps(a.state_dict()))
        assert state["step"] == 7
        later = [a.next_batch() for _ in range(9)]  # crosses several unit replacements
    with make(store) as c:
        c.load_state_dict(state)
        for x in later:
            assert_batches_equal(x, c.next_batch())
    with make(store, seed=6) as d, make(store, process_index=1, process_count=2) as e:
        assert not np.array_equal(d.next_batch().state, first[0].state)
        assert not np.array_equal(e.next_batch().state, first[0].state)
    with make(store, batch_size=32) as f, pytest.raises(UsageError, match="batch_size"):
        f.load_state_dict(state)


def test_bad_settings(store):
    with pytest.raises(UsageError, match="cache_bytes"):  # a setting too small: exit 2
        make(store, cache_bytes=UNIT_BYTES)
    with pytest.raises(UsageError, match="not in the store"):
        make(store, games=["Pong", "Qbert"])
    with pytest.raises(UsageError, match="game_weights"):
        make(store, game_weights=[1.0])


def test_store_urls_and_row_selections(store, reference):
    """The run set view: a file:// URL reads the same store; a selection keeps every draw inside it."""
    from sqlcli_core.data.view import RunSet, open_run_set

    with make(store) as a, make(f"file://{Path(store).absolute()}") as b:
        for _ in range(3):
            assert_batches_equal(a.next_batch(), b.next_batch())
    # Object storage is tested against a loopback S3 server in tests/test_remote_store.py; here only the
    # refusals that need no server: an unknown scheme, and a write to a read-only one.
    with pytest.raises(UsageError, match="ftp:// stores are not supported"):
        make("ftp://example.org/store")
    with pytest.raises(UsageError, match="https:// stores are read-only"):
        st.create_store("https://example.org/store")
    data = open_run_set(store)
    assert data.games == ("Breakout", "Pong") and [r.run for r in data.runs_of("Pong")] == [1, 2]
    pong1 = data.runs_of("Pong", [1])[0]
    chosen = pong1.select([[100, 300, 100], [400, 520, 400]])
    assert chosen.rows == 520 and chosen.segments == ((100, 300, 100), (400, 520, 400))
    view = RunSet(data.games, (chosen,), data.location)
    with make(view, games=["Pong"], cache_bytes=4 * UNIT_BYTES * 2) as s:
        drawn = np.concatenate([s.next_batch_with_keys()[1] for _ in range(20)])
    rows = drawn[:, 2]
    assert set(drawn[:, 1]) == {1}
    # the stack (i-3 .. i) and the next stack (up to i + 3) stay inside one selected piece
    assert (((rows >= 103) & (rows <= 300 - 1 - 3)) | ((rows >= 403) & (rows <= 520 - 1 - 3))).all()
    assert ((rows < 300) & (rows >= 103)).any() and (rows >= 403).any()
    valid = set(reference.valid_indices(1, 1))
    assert {int(i) for i in rows} <= valid


def test_the_default_cache_is_sized_per_game(store):
    from sqlcli_core.data.sampler import cache_slots, default_cache_bytes, slot_bytes

    assert slot_bytes(CHUNK, 3) == UNIT_BYTES
    with make(store) as s:
        assert s.slots_per_game == cache_slots(s.cache_bytes, 2, CHUNK, 3) == 3
    # atari40 with 2048-row units: 2 GiB gave 3 units per game; the default now gives 18 (docs/sampler.md)
    assert cache_slots(2 << 30, 40, 2048, 3) == 3
    assert default_cache_bytes(40) == 10 << 30 and cache_slots(default_cache_bytes(40), 40, 2048, 3) == 18
    assert default_cache_bytes(2) == 2 << 30  # up to 8 games: as before

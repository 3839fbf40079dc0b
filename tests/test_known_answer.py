"""Known-answer games (sqlcli_core.synthetic): exact values against hand-derived closed forms, frames,
the catalog, `collect --policy mixture:P` in the DQN-Replay format, and the data's n-step fixed point.

The references are independent of the code under test: Q* from the closed forms gamma^(N-1-s) (advance)
and gamma^(N-s) (stay), random play's return from a binomial count, the mixture's statistics from its
definition, the data read back from the replay files with numpy.
"""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from sqlcli_core.acting import collect as core
from sqlcli_core.acting.pool import EmulatorPool
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.analysis.diagnose import data_fixed_point, n_step_samples
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import Game, canonical_name, minimal_action_set, resolve_games
from sqlcli_core.synthetic import chain
from sqlcli_core.synthetic.emulator import ChainEmulator

FALL, STAY = chain.CHAINS["Chain-fall-12"], chain.CHAINS["Chain-stay-12"]


@pytest.mark.parametrize("gamma", [0.99, 0.9, 0.5])
@pytest.mark.parametrize("name", ["Chain-fall-12", "Chain-stay-12", "Chain-fall-30"])
def test_value_iteration_matches_the_closed_form(name, gamma):
    spec = chain.CHAINS[name]
    n = spec.length
    q = chain.optimal_q(spec, gamma)
    s = np.arange(n)
    np.testing.assert_allclose(q[:, chain.ADVANCE], gamma ** (n - 1 - s), atol=1e-9)
    other = np.zeros(n) if spec.other == "fall" else gamma ** (n - s)
    np.testing.assert_allclose(q[:, chain.OTHER], other, atol=1e-9)
    assert q[0, chain.ADVANCE] == pytest.approx(0.99 ** 11 if (gamma, n) == (0.99, 12) else gamma ** (n - 1))


def test_returns_of_optimal_and_random_play():
    assert chain.optimal_return(FALL) == 1.0 and chain.optimal_return(STAY) == 1.0
    assert chain.random_return(FALL) == pytest.approx(0.5 ** 12)
    # stay chain: the goal is reached within the cap iff the 12th advance comes by step `cap`
    cap = STAY.cap
    by_binomial = sum(math.comb(cap, k) for k in range(12, cap + 1)) / 2 ** cap
    assert chain.random_return(STAY) == pytest.approx(by_binomial)
    assert 0.0 < chain.random_return(STAY) < 0.5  # random play is far from optimal: a usable normalisation
    always_other = np.tile([0.0, 1.0], (12, 1))
    assert chain.policy_return(STAY, always_other) == 0.0


def test_frames_decode_back_to_positions_in_every_variant():
    for spec in chain.CHAINS.values():
        rng = np.random.default_rng(1)
        frames = np.stack([spec.render(p, rng) for p in range(spec.length)])
        assert frames.shape == (spec.length, 84, 84) and frames.dtype == np.uint8
        np.testing.assert_array_equal(spec.decode(frames), np.arange(spec.length))
        assert len({f.tobytes() for f in frames}) == spec.length
        assert spec.decode(np.zeros((1, 84, 84), np.uint8))[0] == -1  # a padding row has no agent
    base, mirror = chain.CHAINS["Chain-fall-12"], chain.CHAINS["Chain-fall-12-mirror"]
    np.testing.assert_array_equal(mirror.render(3), base.render(3)[:, ::-1])
    stacks = base.canonical_stacks()
    assert stacks.shape == (12, 4, 84, 84) and not stacks[0, :3].any() and stacks[5, 0].any()


def test_emulator_moves_and_caps():
    game = Game("Chain-stay-12")
    env = ChainEmulator(game, STAY, seed=0)
    env.start(0)
    for _ in range(STAY.cap - 1):
        _, reward, over = env.step(chain.OTHER)
        assert (reward, over) == (0.0, False) and env.position == 0
    assert env.step(chain.OTHER)[2]  # the cap ends the episode
    env.reset()
    for _ in range(11):
        assert env.step(chain.ADVANCE)[1:] == (0.0, False)
    assert env.step(chain.ADVANCE)[1:] == (1.0, True)
    fall = ChainEmulator(Game("Chain-fall-12"), FALL)
    fall.reset()
    assert fall.step(chain.OTHER)[1:] == (0.0, True)
    pool = EmulatorPool("vector", protocol=PROTOCOLS["dopamine"])
    emulator, first = pool.take(Game("Chain-fall-12"), 3)
    assert isinstance(emulator, ChainEmulator) and first.shape == (84, 84)


def test_catalog_knows_the_diagnostic_set():
    names = [g.name for g in resolve_games("diagnostic")]
    assert names[:3] == ["Chain-fall-12", "Chain-stay-12", "Chain-fall-30"] and len(names) == 8
    assert canonical_name("chain-FALL-12") == "Chain-fall-12"
    game = Game("Chain-fall-12")
    assert game.synthetic and game.num_actions == 2 and minimal_action_set(game.name) == (0, 1)
    assert game.normalization == "optimal" and not Game("Pong").synthetic
    random_score, optimal = game.reference
    assert game.human_normalized(optimal) == pytest.approx(1.0) and game.human_normalized(random_score) == 0.0


def test_mixture_policy_is_parsed_and_refused_off_the_synthetic_games(tmp_path):
    spec = core.parse_policy("mixture:0.25", 0.0)
    assert (spec.kind, spec.good_share) == ("mixture", 0.25)
    assert spec.to_dict() == {"kind": "mixture", "epsilon": 0.0, "good_share": 0.25}
    for bad in ("mixture:", "mixture:1.5", "mixture:x"):
        with pytest.raises(UsageError, match="mixture:P"):
            core.parse_policy(bad, 0.0)
    with pytest.raises(UsageError, match="known good and poor"):
        core.validate(core.RunConfig("Pong", 1, 100, policy=spec))


def _read_rows(run_dir):
    """(observations, actions, rewards, terminals) of a run's single checkpoint, read with numpy only."""
    logs = run_dir / "replay_logs"
    count = int(np.load(gzip.open(logs / "add_count_ckpt.0.gz"), allow_pickle=False))
    arrays = [np.load(gzip.open(logs / f"$store$_{k}_ckpt.0.gz"), allow_pickle=False)[:count]
              for k in ("observation", "action", "reward", "terminal")]
    return arrays


def test_mixture_data_has_the_structure_the_definition_gives(tmp_path):
    config = core.RunConfig("Chain-fall-12", 1, transitions=6000, capacity=20_000,
                            policy=core.parse_policy("mixture:0.25", 0.0))
    summary = core.collect_run(config, tmp_path)
    log = json.loads((tmp_path / "Chain-fall-12" / "1" / "collect_log.json").read_text())
    obs, actions, rewards, terminals = _read_rows(tmp_path / "Chain-fall-12" / "1")
    positions = FALL.decode(obs)
    real = positions >= 0
    assert real.sum() == summary["transitions"] == 6000
    episodes = [e for e in log["episodes"] if e["terminal"]]
    good = np.array([e["return"] for e in episodes])
    assert abs(good.mean() - 0.25) < 0.04  # each episode good with probability 0.25
    assert all(e["length"] == 12 for e in episodes if e["return"] == 1.0)
    # at position 0 the poor episodes (0.75, of which 0.8 go wrong at once) outnumber the good: majority = other
    at0 = actions[real & (positions == 0)]
    assert np.mean(at0 == chain.OTHER) == pytest.approx(0.75 * 0.8, abs=0.05)
    # the wrong action is seen in every position (poor episodes turn at a uniform later position otherwise)
    for p in range(12):
        assert np.any(actions[real & (positions == p)] == chain.OTHER), p
    # a +1 reward only on advancing from the last position, and every episode ends with a terminal row
    assert set(np.flatnonzero(rewards)) <= set(np.flatnonzero((positions == 11) & (actions == chain.ADVANCE)))
    assert terminals.sum() == len(episodes)


def test_interrupted_mixture_collection_resumes_to_identical_files(tmp_path):
    config = core.RunConfig("Chain-stay-12", 1, transitions=400, capacity=37,
                            policy=core.parse_policy("mixture:0.5", 0.1))
    core.collect_run(config, tmp_path / "ref")
    for stop in (90, 250):
        def interrupt(steps, stop=stop):
            if steps >= stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            core.collect_run(config, tmp_path / "int", interrupt, progress_every=10)
    assert core.collect_run(config, tmp_path / "int")["status"] == "resumed"
    ref, resumed = (tmp_path / d / "Chain-stay-12" / "1" / "replay_logs" for d in ("ref", "int"))
    assert sorted(p.name for p in ref.iterdir()) == sorted(p.name for p in resumed.iterdir())
    for p in ref.iterdir():
        assert gzip.open(p).read() == gzip.open(resumed / p.name).read(), p.name


def _data(rows):
    """Data arrays from (position, action, reward, terminal) rows; position -1 = a padding row."""
    pos, act, rew, term = (np.array(c) for c in zip(*rows))
    return {"positions": pos, "actions": act, "rewards": rew.astype(float), "terminals": term.astype(bool)}


def test_data_fixed_point_one_step_is_q_star_on_complete_data():
    rows = []
    for turn in range(12):  # one episode turning wrong at each position, plus one good episode
        rows += [(-1, 0, 0, 0)] + [(p, 0, 0, 0) for p in range(turn)] + [(turn, 1, 0, 1)]
    rows += [(-1, 0, 0, 0)] + [(p, 0, float(p == 11), p == 11) for p in range(12)]
    fixed = data_fixed_point(n_step_samples(_data(rows), 1, 0.9), 12, 2)
    np.testing.assert_allclose(fixed, chain.optimal_q(FALL, 0.9), atol=1e-9)


def test_data_fixed_point_three_step_follows_the_behaviour():
    """Stay chain of 3 positions, gamma 0.5. Episode 1: advance, stay, advance, advance (+1); episode 2: advance
    x3 (+1). With n = 3 the target of (0, advance) in episode 1 follows the behaviour's stay: 0 + 0 + 0 +
    gamma^3 * max Q(2, .), so the fixed point there is (gamma^3 + gamma^2) / 2, not Q* = gamma^2."""
    stay3 = chain.ChainSpec("stay3", 3, "stay")
    ep1 = [(0, 0, 0, 0), (1, 1, 0, 0), (1, 0, 0, 0), (2, 0, 1, 1)]
    ep2 = [(0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 1, 1)]
    data = _data([(-1, 0, 0, 0)] + ep1 + [(-1, 0, 0, 0)] + ep2)
    g = 0.5
    fixed = data_fixed_point(n_step_samples(data, 3, g), 3, 2)
    expected = np.array([[(g ** 3 + g ** 2) / 2, np.nan], [g, g ** 2], [1.0, np.nan]])
    np.testing.assert_allclose(fixed, expected)
    q_star = chain.optimal_q(stay3, g)
    assert q_star[0, 0] == pytest.approx(g ** 2) and abs(fixed[0, 0] - q_star[0, 0]) > 0.05
    one_step = data_fixed_point(n_step_samples(data, 1, g), 3, 2)
    np.testing.assert_allclose(one_step[np.isfinite(one_step)], q_star[np.isfinite(one_step)])


def test_eval_normalises_synthetic_games_to_random_and_optimal_play():
    from sqlcli_core.evaluation.evaluate import EvalConfig, RandomPolicy, evaluate
    from sqlcli_core.evaluation.results import summarize

    games = ("Chain-stay-12", "Chain-fall-12")
    config = EvalConfig(games=games, seeds=(0, 1, 2), episodes=20, protocol=PROTOCOLS["no-sticky"], epsilon=1.0,
                        max_steps=100)
    results, _ = evaluate(RandomPolicy([Game(g) for g in games]), config, num_envs=4)
    summary = summarize(results, config, bootstrap_reps=200)
    for name in games:
        block = summary["games"][name]
        random_score, optimal = chain.random_return(chain.CHAINS[name]), 1.0
        assert block["human_normalized"] is None
        assert block["reference"] == {"random": random_score, "optimal": optimal}
        assert block["optimal_normalized"] == pytest.approx((block["mean"] - random_score) / (optimal - random_score))
        assert max(block["lengths"]) <= chain.CHAINS[name].cap  # the game's own cap, under the eval's
    assert summary["aggregate_method"]["scale"] == "optimal"
    assert summary["aggregate_method"]["score"].startswith("optimal-normalized")
    assert summary["excluded_from_aggregates"] == []


def test_diagnose_reads_gamma_n_step_and_store_of_pretrain_and_finetune_runs():
    """A fine-tuning run keeps its settings under config.settings (finetune-offline's run.json): diagnose found no
    store there and judged an n-step-3 run against the 1-step fixed point."""
    from sqlcli_core.analysis.diagnose import _run_settings

    pretrain = {"learner": {"gamma": 0.9}, "n_step": 3, "data": "store.zarr"}
    finetune = {"command": "finetune-offline", "settings": {"gamma": 0.95, "n_step": 3, "data": "held.zarr"}}
    assert _run_settings(pretrain) == (0.9, 3, "store.zarr")
    assert _run_settings(finetune) == (0.95, 3, "held.zarr")
    nested = {"command": "finetune-offline", "settings": {"learner": {"gamma": 0.9}, "n_step": 3, "data": "held.zarr"}}
    assert _run_settings(nested) == (0.9, 3, "held.zarr")
    assert _run_settings({}) == (0.99, 1, None)

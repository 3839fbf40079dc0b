"""IQM / median / mean and their stratified bootstrap CIs against independent re-derivations.

References: scipy.stats.trim_mean (what rliable's aggregate_iqm calls), a plain-loop re-derivation of the
stratified bootstrap on the same random draws, and normal theory (for many runs the percentile interval of
a mean approaches mean +- 1.96 * standard error).
"""

import numpy as np
import pytest
import scipy.stats

from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation import aggregates as agg


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 40), (7, 3), (10, 1)])
def test_point_aggregates_match_scipy_and_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    scores = rng.standard_cauchy(shape)  # heavy tails: trimming matters
    assert agg.aggregate(scores, "iqm") == pytest.approx(scipy.stats.trim_mean(scores, 0.25, axis=None))
    assert agg.aggregate(scores, "median") == pytest.approx(np.median(scores.mean(axis=0)))
    assert agg.aggregate(scores, "mean") == pytest.approx(scores.mean())


def test_iqm_by_hand():
    # sorted: -1000, 1, 2, 3, 4, 5, 6, 1000; int(0.25 * 8) = 2 cut from each end -> mean of 2, 3, 4, 5
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 1000.0, -1000.0]])
    assert agg.aggregate(scores, "iqm") == pytest.approx((2 + 3 + 4 + 5) / 4)


def _loop_bootstrap(scores, reps, seed):
    """Independent re-derivation: the same index draws, then one replicate and one game at a time."""
    runs, games = scores.shape
    idx = np.random.default_rng(seed).integers(0, runs, size=(reps, runs, games))
    out = {"iqm": [], "median": [], "mean": []}
    for b in range(reps):
        m = np.empty_like(scores)
        for g in range(games):
            m[:, g] = scores[idx[b, :, g], g]  # runs resampled within game g only (the stratum)
        out["iqm"].append(scipy.stats.trim_mean(m, 0.25, axis=None))
        out["median"].append(np.median(np.mean(m, axis=0)))
        out["mean"].append(np.mean(np.mean(m, axis=0)))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}


def test_bootstrap_matches_a_plain_loop_on_the_same_draws():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(5, 6)) + np.arange(6)  # games on different scales
    reps = 400  # below the chunk size, so the vectorised draws are the loop's draws
    ours = agg.aggregates_with_ci(scores, reps=reps, seed=3)
    ref = _loop_bootstrap(scores, reps, 3)
    for name in ("iqm", "median", "mean"):
        np.testing.assert_allclose(ours[name]["ci95"], ref[name], rtol=1e-12)
        assert ours[name]["ci95"][0] <= ours[name]["value"] <= ours[name]["ci95"][1]


def test_mean_interval_approaches_normal_theory():
    # Two games, many runs: the stratified bootstrap of the mean over games has standard error
    # sqrt(s1^2/R + s2^2/R) / 2 (population std, as the bootstrap uses).
    rng = np.random.default_rng(0)
    runs = 400
    scores = np.stack([rng.normal(1.0, 2.0, runs), rng.normal(-3.0, 0.5, runs)], axis=1)
    se = np.sqrt((scores.std(axis=0) ** 2 / runs).sum()) / 2
    lo, hi = agg.aggregates_with_ci(scores, reps=20_000, seed=1)["mean"]["ci95"]
    centre = scores.mean()
    assert (hi - lo) / 2 == pytest.approx(1.959964 * se, rel=0.05)
    assert (lo + hi) / 2 == pytest.approx(centre, abs=0.1 * se)


def test_stratification_keeps_games_apart():
    # Game 0 always scores 0, game 1 always 10: an unstratified resample could mix them and move the median;
    # the stratified bootstrap never does, so every interval is a point.
    scores = np.tile([0.0, 10.0], (4, 1))
    out = agg.aggregates_with_ci(scores, reps=500)
    assert out["mean"] == {"value": 5.0, "ci95": [5.0, 5.0]}
    assert out["median"]["ci95"] == [5.0, 5.0]


def test_same_seed_same_interval_and_chunking_is_invisible():
    scores = np.random.default_rng(1).normal(size=(3, 2000))  # 6000 cells -> chunks of 666 replicates
    a = agg.aggregates_with_ci(scores, reps=1500, seed=5)
    b = agg.aggregates_with_ci(scores, reps=1500, seed=5)
    assert a == b
    runs, games = scores.shape
    idx = np.random.default_rng(5).integers(0, runs, size=(666, runs, games))
    first = agg.mean_batched(agg.resample(scores, idx))
    dist = agg.bootstrap_distribution(scores, agg.mean_batched, reps=1500, seed=5)
    np.testing.assert_array_equal(dist[:666], first)


def test_human_normalization_and_bad_input():
    matrix, kept = agg.human_normalized_matrix(
        {"Pong": np.array([-20.7, 14.6]), "Pooyan": np.array([1.0, 2.0])}, {"Pong": (-20.7, 14.6)})
    assert kept == ["Pong"]
    np.testing.assert_allclose(matrix[:, 0], [0.0, 1.0])
    with pytest.raises(UsageError, match="different numbers of runs"):
        agg.human_normalized_matrix({"Pong": np.zeros(2), "Breakout": np.zeros(3)},
                                    {"Pong": (0, 1), "Breakout": (0, 1)})
    with pytest.raises(UsageError, match="NaN"):
        agg.aggregates_with_ci(np.array([[np.nan]]))
    with pytest.raises(UsageError, match=r"\(runs, games\)"):
        agg.aggregates_with_ci(np.zeros(3))


# ------------------------------------------------------------------------------------------ evaluation noise


def _loop_nested_bootstrap(scores, reps, seed):
    """Independent re-derivation of the two-level bootstrap: the same draws, one replicate, game and run at a
    time (runs within the game, then the drawn run's episodes)."""
    runs, episodes, games = scores.shape
    rng = np.random.default_rng(seed)
    run_idx = rng.integers(0, runs, size=(reps, runs, games))
    ep_idx = rng.integers(0, episodes, size=(reps, runs, episodes, games))
    out = {"iqm": [], "median": [], "mean": []}
    for b in range(reps):
        m = np.empty((runs, games))
        for g in range(games):
            for r in range(runs):
                m[r, g] = np.mean([scores[run_idx[b, r, g], ep_idx[b, r, e, g], g] for e in range(episodes)])
        out["iqm"].append(scipy.stats.trim_mean(m, 0.25, axis=None))
        out["median"].append(np.median(m.mean(axis=0)))
        out["mean"].append(m.mean())
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}


def test_nested_bootstrap_matches_a_plain_loop_on_the_same_draws():
    rng = np.random.default_rng(11)
    scores = rng.normal(size=(3, 4, 5)) + rng.normal(size=(3, 1, 5))  # runs differ, episodes vary within them
    ours = agg.aggregates_with_ci(scores, reps=300, seed=4)
    ref = _loop_nested_bootstrap(scores, 300, 4)
    run_means = scores.mean(axis=1)
    for name in ("iqm", "median", "mean"):
        np.testing.assert_allclose(ours[name]["ci95"], ref[name], rtol=1e-12)
    assert ours["iqm"]["value"] == pytest.approx(scipy.stats.trim_mean(run_means, 0.25, axis=None))
    assert ours["mean"]["value"] == pytest.approx(scores.mean())


def test_nested_bootstrap_spread_matches_the_two_level_variance():
    """Var of the bootstrap mean over games = sum over games of (var_r(mu_r) + mean_r(s_r^2) / E) / R / G^2
    (population variances: a run drawn uniformly, then E of its episodes uniformly)."""
    rng = np.random.default_rng(2)
    runs, episodes, games = 4, 10, 2
    scores = rng.normal(size=(runs, episodes, games)) * 3 + rng.normal(size=(runs, 1, games)) * 2
    dist = agg.bootstrap_distribution(scores, agg.mean_batched, reps=40_000, seed=9)
    mu = scores.mean(axis=1)  # (runs, games)
    within = scores.var(axis=1).mean(axis=0)  # (games,)
    want = np.sum((mu.var(axis=0) + within / episodes) / runs) / games ** 2
    assert dist.var() == pytest.approx(want, rel=0.03)
    # shared episodes (every run the same policy) no longer give a zero-width interval
    same = np.repeat(rng.normal(size=(1, episodes, 1)), 3, axis=0)
    lo, hi = agg.aggregates_with_ci(same, reps=2000)["mean"]["ci95"]
    assert hi - lo > 0.5


def test_per_game_episode_tensors_are_normalized_elementwise():
    per_game = {"A": np.array([[0.0, 10.0], [20.0, 30.0]]), "B": np.array([[1.0, 1.0], [3.0, 5.0]])}
    tensor, kept = agg.human_normalized_matrix(per_game, {"A": (0.0, 10.0), "B": (1.0, 3.0)})
    assert kept == ["A", "B"] and tensor.shape == (2, 2, 2)
    np.testing.assert_allclose(tensor[..., 0], [[0, 1], [2, 3]])
    np.testing.assert_allclose(tensor[..., 1], [[0, 0], [1, 2]])
    with pytest.raises(UsageError, match="runs \\(or episodes\\)"):
        agg.human_normalized_matrix({"A": np.zeros((2, 2)), "B": np.zeros((2, 3))}, {"A": (0, 1), "B": (0, 1)})

"""Aggregate scores over games with stratified bootstrap confidence intervals (the rliable method).

Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021), as implemented in
google-research/rliable:

- scores form a (num_runs, num_games) matrix: entry [r, g] is run r's score on game g (here a
  human-normalized score, a run being one evaluation seed, or one episode when only one seed was played);
- IQM is the 25% trimmed mean of all num_runs * num_games entries pooled (scipy's `trim_mean` with
  `proportiontocut=0.25, axis=None`: int(0.25 n) entries cut from each end);
- median and mean are taken over games of each game's mean over runs;
- a 95% CI comes from the stratified bootstrap: each replicate resamples runs with replacement
  independently within each game (the games are the strata), the statistic is recomputed, and the
  interval is the 2.5th and 97.5th percentiles of the replicates (rliable's default `percentile` method).

Evaluation noise: scores may also come as a (num_runs, num_episodes, num_games) tensor, the episodes of each
run kept apart (a run: one training seed's policy, or one evaluation seed). A run's score is then the mean of
its episodes, and each bootstrap replicate resamples at two levels within each game: runs with replacement,
then, for every resampled run, its episodes with replacement (`nested_bootstrap_indices`). The interval then
holds both the spread between runs and the noise of a finite number of episodes; with one run it is the
episodes' bootstrap alone. IQM, median and mean are always taken on the (runs, games) matrix of run scores.

rliable itself needs `arch` and runs the bootstrap one replicate at a time; this module does the same
arithmetic vectorised over replicates in numpy, in chunks so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from sqlcli_core.errors import UsageError

IQM_TRIM = 0.25
DEFAULT_REPS = 50_000  # rliable's default number of bootstrap replicates
DEFAULT_CONFIDENCE = 0.95


def _as_matrix(scores: np.ndarray, *, episodes_allowed: bool = False) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    ranks = (2, 3) if episodes_allowed else (2,)
    if scores.ndim not in ranks or min(scores.shape) < 1:
        want = "(runs, games) matrix or (runs, episodes, games) tensor" if episodes_allowed else "(runs, games) matrix"
        raise UsageError(f"scores must be a non-empty {want}, got shape {scores.shape}",
                         hint="evaluate at least one game with a reference score")
    if not np.all(np.isfinite(scores)):
        raise UsageError("scores contain NaN or infinity", hint="drop games without a reference score first")
    return scores


def run_scores_matrix(scores: np.ndarray) -> np.ndarray:
    """(runs, games) run scores: the matrix itself, or the mean over episodes of a (runs, episodes, games) tensor."""
    scores = _as_matrix(scores, episodes_allowed=True)
    return scores.mean(axis=1) if scores.ndim == 3 else scores


def iqm_batched(scores: np.ndarray) -> np.ndarray:
    """(..., runs, games) -> (...): 25% trimmed mean of each trailing matrix, all entries pooled."""
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(IQM_TRIM * n)
    return flat[..., cut:n - cut].mean(axis=-1)


def median_batched(scores: np.ndarray) -> np.ndarray:
    """(..., runs, games) -> (...): median over games of each game's mean over runs."""
    return np.median(scores.mean(axis=-2), axis=-1)


def mean_batched(scores: np.ndarray) -> np.ndarray:
    """(..., runs, games) -> (...): mean over games of each game's mean over runs."""
    return scores.mean(axis=(-2, -1))


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iqm": iqm_batched,
    "median": median_batched,
    "mean": mean_batched,
}


def aggregate(scores: np.ndarray, name: str) -> float:
    """One aggregate (`iqm`, `median` or `mean`) of a (runs, games) matrix or (runs, episodes, games) tensor."""
    return float(AGGREGATES[name](run_scores_matrix(scores)))


def stratified_bootstrap_indices(rng: np.random.Generator, reps: int, num_runs: int,
                                 num_games: int) -> np.ndarray:
    """(reps, runs, games) int: for each replicate and game, `runs` run indices drawn with replacement."""
    return rng.integers(0, num_runs, size=(reps, num_runs, num_games))


def nested_bootstrap_indices(rng: np.random.Generator, reps: int, num_runs: int, num_episodes: int,
                             num_games: int) -> tuple[np.ndarray, np.ndarray]:
    """(runs (reps, runs, games), episodes (reps, runs, episodes, games)): per replicate and game, runs drawn
    with replacement, then for each drawn run its episodes drawn with replacement (drawn in that order)."""
    runs = rng.integers(0, num_runs, size=(reps, num_runs, num_games))
    episodes = rng.integers(0, num_episodes, size=(reps, num_runs, num_episodes, num_games))
    return runs, episodes


def resample_nested(scores: np.ndarray, runs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """(runs, episodes, games) scores and nested indices -> (reps, runs, games) run scores of the replicates."""
    game = np.arange(scores.shape[2])
    picked = scores[runs[:, :, None, :], episodes, game[None, None, None, :]]  # (reps, runs, episodes, games)
    return picked.mean(axis=2)


def resample(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(runs, games) scores and (reps, runs, games) indices -> (reps, runs, games) resampled matrices."""
    return np.take_along_axis(scores[None], indices, axis=1)


def bootstrap_distribution(scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *,
                           reps: int = DEFAULT_REPS, seed: int = 0) -> np.ndarray:
    """(reps, ...) statistic of `reps` stratified bootstrap replicates of a (runs, games) matrix, or nested
    replicates (runs, then their episodes) of a (runs, episodes, games) tensor.

    `statistic` maps (n, runs, games) run scores -> (n, ...). Replicates are drawn in chunks from one generator
    (the chunk size depends only on the shape), so the result depends only on (scores, reps, seed) and memory
    stays at a few million floats.
    """
    scores = _as_matrix(scores, episodes_allowed=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(2048, 4_000_000 // scores.size))
    parts = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        if scores.ndim == 3:
            replicates = resample_nested(scores, *nested_bootstrap_indices(rng, n, *scores.shape))
        else:
            replicates = resample(scores, stratified_bootstrap_indices(rng, n, *scores.shape))
        parts.append(statistic(replicates))
    return np.concatenate(parts, axis=0)


def percentile_interval(replicates: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap replicates."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def aggregates_with_ci(scores: np.ndarray, *, reps: int = DEFAULT_REPS, confidence: float = DEFAULT_CONFIDENCE,
                       seed: int = 0, names: tuple[str, ...] = ("iqm", "median", "mean"),
                       ) -> dict[str, dict[str, object]]:
    """{name: {"value": x, "ci95": [lo, hi]}} for each aggregate of a (runs, games) score matrix, or of a
    (runs, episodes, games) tensor (values on the run means; intervals from the nested bootstrap).

    Every aggregate uses the same bootstrap replicates (same seed), as rliable does when it is given
    one aggregate function returning all of them.
    """
    scores = _as_matrix(scores, episodes_allowed=True)
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"confidence must lie in (0, 1), got {confidence}", hint="use 0.95 for 95% intervals")
    if reps < 1:
        raise UsageError(f"bootstrap replicates must be >= 1, got {reps}", hint="rliable uses 50000")

    def all_stats(batch: np.ndarray) -> np.ndarray:
        return np.stack([AGGREGATES[n](batch) for n in names], axis=-1)

    reps_stats = bootstrap_distribution(scores, all_stats, reps=reps, seed=seed)
    result = {}
    for i, name in enumerate(names):
        lo, hi = percentile_interval(reps_stats[:, i], confidence)
        result[name] = {"value": float(AGGREGATES[name](run_scores_matrix(scores))), "ci95": [lo, hi]}
    return result


def human_normalized_matrix(per_game_run_scores: Mapping[str, np.ndarray],
                            references: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, list[str]]:
    """Stack per-game raw run scores (each (runs,), or (runs, episodes)) into a (runs, games) human-normalized
    matrix (or a (runs, episodes, games) tensor).

    Only games present in `references` ({game: (random, human)}) are kept; returns the matrix and the
    kept games' names in column order. All kept games must have the same number of runs (and episodes).
    """
    kept = [g for g in per_game_run_scores if g in references]
    if not kept:
        return np.zeros((0, 0)), []
    lengths = {np.shape(per_game_run_scores[g]) for g in kept}
    if len(lengths) != 1:
        raise UsageError(f"games have different numbers of runs (or episodes) {sorted(lengths)}",
                         hint="evaluate every game with the same --seeds and --episodes")
    columns = []
    for g in kept:
        random_score, human_score = references[g]
        columns.append((np.asarray(per_game_run_scores[g], np.float64) - random_score) / (human_score - random_score))
    return np.stack(columns, axis=-1), kept

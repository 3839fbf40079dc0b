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


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise UsageError(f"scores must be a non-empty (runs, games) matrix, got shape {scores.shape}",
                         hint="evaluate at least one game with a reference score")
    if not np.all(np.isfinite(scores)):
        raise UsageError("scores contain NaN or infinity", hint="drop games without a reference score first")
    return scores


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
    """One aggregate (`iqm`, `median` or `mean`) of a (runs, games) score matrix."""
    return float(AGGREGATES[name](_as_matrix(scores)))


def stratified_bootstrap_indices(rng: np.random.Generator, reps: int, num_runs: int,
                                 num_games: int) -> np.ndarray:
    """(reps, runs, games) int: for each replicate and game, `runs` run indices drawn with replacement."""
    return rng.integers(0, num_runs, size=(reps, num_runs, num_games))


def resample(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(runs, games) scores and (reps, runs, games) indices -> (reps, runs, games) resampled matrices."""
    return np.take_along_axis(scores[None], indices, axis=1)


def bootstrap_distribution(scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *,
                           reps: int = DEFAULT_REPS, seed: int = 0) -> np.ndarray:
    """(reps, ...) statistic of `reps` stratified bootstrap replicates of a (runs, games) matrix.

    `statistic` maps (n, runs, games) -> (n, ...). Replicates are drawn in chunks from one generator
    (the chunk size depends only on the matrix shape), so the result depends only on (scores, reps, seed)
    and memory stays at a few million floats.
    """
    scores = _as_matrix(scores)
    runs, games = scores.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, min(2048, 4_000_000 // (runs * games)))
    parts = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        parts.append(statistic(resample(scores, stratified_bootstrap_indices(rng, n, runs, games))))
    return np.concatenate(parts, axis=0)


def percentile_interval(replicates: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` percentile interval of bootstrap replicates."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def aggregates_with_ci(scores: np.ndarray, *, reps: int = DEFAULT_REPS, confidence: float = DEFAULT_CONFIDENCE,
                       seed: int = 0, names: tuple[str, ...] = ("iqm", "median", "mean"),
                       ) -> dict[str, dict[str, object]]:
    """{name: {"value": x, "ci95": [lo, hi]}} for each aggregate of a (runs, games) score matrix.

    Every aggregate uses the same bootstrap replicates (same seed), as rliable does when it is given
    one aggregate function returning all of them.
    """
    scores = _as_matrix(scores)
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
        result[name] = {"value": float(AGGREGATES[name](scores)), "ci95": [lo, hi]}
    return result


def human_normalized_matrix(per_game_run_scores: Mapping[str, np.ndarray],
                            references: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, list[str]]:
    """Stack per-game raw run scores (each (runs,)) into a (runs, games) human-normalized matrix.

    Only games present in `references` ({game: (random, human)}) are kept; returns the matrix and the
    kept games' names in column order. All kept games must have the same number of runs.
    """
    kept = [g for g in per_game_run_scores if g in references]
    if not kept:
        return np.zeros((0, 0)), []
    lengths = {len(per_game_run_scores[g]) for g in kept}
    if len(lengths) != 1:
        raise UsageError(f"games have different numbers of runs {sorted(lengths)}",
                         hint="evaluate every game with the same --seeds and --episodes")
    columns = []
    for g in kept:
        random_score, human_score = references[g]
        columns.append((np.asarray(per_game_run_scores[g], np.float64) - random_score) / (human_score - random_score))
    return np.stack(columns, axis=1), kept

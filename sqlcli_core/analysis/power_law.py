"""The power law score = a * params^b: a least-squares fit in log space and a pairs-bootstrap interval.

Pure numpy, no run directories: `scale_report` gathers the points and writes the report around these.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def fit_log_log(params: np.ndarray, scores: np.ndarray) -> tuple[float, float, float | None]:
    """Least squares on log(score) = log(a) + b log(params).

    params, scores: (N,) positive. Returns (a, b, r2 in log space; None when all scores are equal, where
    R² is undefined). Needs 2 distinct params.
    """
    x, y = np.log(np.asarray(params, float)), np.log(np.asarray(scores, float))
    design = np.stack([np.ones_like(x), x], axis=1)            # (N, 2)
    (log_a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (log_a + b * x)
    total = float(np.sum((y - y.mean()) ** 2))
    # Equal scores leave only rounding noise in `total`; a ratio of two such noises means nothing.
    flat = total <= 1e-20 * y.size * max(1.0, float(np.mean(y * y)))
    r2 = None if flat else 1.0 - float(np.sum(residual ** 2)) / total
    return float(np.exp(log_a)), float(b), r2


def _resampled_fits(params: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(slopes, log_a) of the closed-form log-log fits of the pairs-bootstrap resamples that have a slope."""
    x, y = np.log(np.asarray(params, float)), np.log(np.asarray(scores, float))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))   # (R, N)
    xs, ys = x[idx], y[idx]
    xc = xs - xs.mean(axis=1, keepdims=True)
    sxx = np.sum(xc * xc, axis=1)
    ok = sxx > 1e-12 * max(1.0, float(np.max(x * x)))
    slopes = np.sum(xc[ok] * ys[ok], axis=1) / sxx[ok]
    log_a = ys[ok].mean(axis=1) - slopes * xs[ok].mean(axis=1)
    return slopes, log_a


def bootstrap_power_law(params: np.ndarray, scores: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                        confidence: float = CONFIDENCE) -> tuple[tuple[float, float], tuple[float, float], int]:
    """Pairs-bootstrap percentile intervals on (a, b) of the log-log fit.

    Resamples the N points with replacement (n_resamples x N), refits each resample in closed form, and
    drops resamples whose params are all equal (no slope). Returns (a_ci, b_ci, resamples used).
    """
    slopes, log_a = _resampled_fits(params, scores, n_resamples, seed)
    tail = 100 * (1 - confidence) / 2
    b_lo, b_hi = np.percentile(slopes, [tail, 100 - tail])
    a_lo, a_hi = np.exp(np.percentile(log_a, [tail, 100 - tail]))
    return (float(a_lo), float(a_hi)), (float(b_lo), float(b_hi)), int(slopes.size)


def bootstrap_band(params: np.ndarray, scores: np.ndarray, grid: np.ndarray, n_resamples: int = 10_000,
                   seed: int = 0, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The fit's pointwise percentile band at `grid` (parameter counts): at each x, the central `confidence`
    of the resampled fits' predictions a_r * x^b_r (the same resamples as `bootstrap_power_law`)."""
    slopes, log_a = _resampled_fits(params, scores, n_resamples, seed)
    predictions = log_a[:, None] + slopes[:, None] * np.log(np.asarray(grid, float))[None, :]   # (R, G)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(predictions, [tail, 100 - tail], axis=0)
    return np.exp(low), np.exp(high)

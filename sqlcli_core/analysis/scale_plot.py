"""The scale-report figure: score against parameters on log-log axes, where the power law is a straight line.

Per point: the eval's 95% interval as an error bar (a lower bound at or below zero runs to the bottom edge,
with an arrow). Per group: the fitted line a * params^b and its 95% pairwise-bootstrap band (the central 95% of
the resampled fits' predictions at each x, from the same resamples as the interval on b). Points with a score
at or below zero cannot sit on a log axis (and are left out of the fit): they are drawn as hollow triangles on
the bottom edge. When no score is positive at all, the y axis is linear and the title says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sqlcli_core.analysis.figures import new_figure, png_bytes
from sqlcli_core.analysis.power_law import CONFIDENCE, bootstrap_band


def render_scale_plot(points: Sequence, fits: Sequence, group_by: Sequence[str], metric: str, *,
                      n_bootstrap: int = 10_000, seed: int = 0) -> bytes:
    """PNG bytes (Agg canvas: no display, no global backend). points: `RunPoint`s, fits: `PowerLawFit`s."""
    fig = new_figure(7.5, 5.0, dpi=150)
    ax = fig.add_subplot()
    positive = [100 * p.score for p in points if p.score > 0]
    log_y = bool(positive)
    # the bottom edge on a log axis: a decade under the lowest positive score or interval end
    lows = positive + [100 * p.ci_low for p in points if p.ci_low is not None and p.ci_low > 0]
    floor = 10 ** (np.floor(np.log10(min(lows))) - 0.5) if log_y else None
    by_label = {f.label: f for f in fits}
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(", ".join(p.group_key(group_by)) or "all runs", []).append(p)
    for i, (label, members) in enumerate(groups.items()):
        color = f"C{i % 10}"
        fit = by_label.get(label)
        shown = [p for p in members if p.score > 0 or not log_y]
        if shown:
            x = np.array([p.params for p in shown], float)
            y = 100 * np.array([p.score for p in shown])
            low = 100 * np.array([p.score if p.ci_low is None else p.ci_low for p in shown])
            high = 100 * np.array([p.score if p.ci_high is None else p.ci_high for p in shown])
            cut = log_y & (low <= 0)
            bottom = np.where(cut, floor if log_y else low, low)
            ax.errorbar(x, y, yerr=np.stack([y - bottom, high - y]).clip(min=0), fmt="o", color=color, ms=6,
                        capsize=5, capthick=1.5, elinewidth=1.5, zorder=3)
            if cut.any():  # the interval reaches zero or below: off a log axis
                ax.plot(x[cut], bottom[cut], "v", color=color, ms=6, zorder=3)
        hidden = [p for p in members if p.score <= 0 and log_y]
        if hidden:
            ax.plot([p.params for p in hidden], [floor] * len(hidden), "^", color=color, mfc="none", ms=8,
                    zorder=3, clip_on=False, label=f"{label}: score <= 0 (not on a log axis, left out)")
        if fit is not None and fit.b is not None:
            used = [p for p in members if p.name in fit.used]
            params = np.array([p.params for p in used], float)
            grid = np.geomspace(params.min() / 1.3, params.max() * 1.3, 200)
            ci = "" if fit.b_ci95 is None else f" [{fit.b_ci95[0]:.3f}, {fit.b_ci95[1]:.3f}]"
            ax.plot(grid, 100 * fit.a * grid ** fit.b, "-", color=color, lw=1.8,
                    label=f"{label}: b = {fit.b:.3f}{ci}")
            if fit.b_ci95 is not None:
                band_low, band_high = bootstrap_band(params, np.array([p.score for p in used]), grid, n_bootstrap,
                                                     seed)
                ax.fill_between(grid, 100 * band_low, 100 * band_high, color=color, alpha=0.15, lw=0,
                                label=f"{label}: fit's {100 * CONFIDENCE:.0f}% bootstrap band")
        elif fit is not None:
            ax.plot([], [], "o", color=color, label=f"{label}: no fit")
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        title = "score = a * params^b on log-log axes (a straight line)"
    else:
        ax.axhline(0.0, color="0.35", lw=1.0, ls="--", zorder=1, label="random policy (0%)")
        title = "linear y: no score is above 0, so none fits on a log axis"
    ax.set_xlabel(f"parameters ({points[0].param_count if points else 'total'}, log scale)")
    ax.set_ylabel(f"human-normalized {metric.upper()} (%)" + (", log scale" if log_y else ""))
    ax.set_title(f"{title}\nbars: each eval's 95% interval; bands: the fit's 95% bootstrap band", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return png_bytes(fig)

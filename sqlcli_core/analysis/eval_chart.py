"""The figure beside every eval result (NAME.png): the aggregates, then one bar per game.

Top row, as rliable's `plot_interval_estimates` draws them: one panel per aggregate (median, IQM, mean of the
human-normalized scores), the 95% stratified bootstrap interval as a shaded bar and the point estimate as a
vertical tick; the axis spans the interval and random (0%), and shows human (100%) when it comes near. Below, one horizontal bar per game with its 95%
interval: human-normalized games in percent, games without reference scores in a raw-score panel of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.analysis.figures import new_figure, png_bytes
from sqlcli_core.atomic import atomic_output

AGGREGATE_ORDER = (("median", "Median"), ("iqm", "IQM"), ("mean", "Mean"))  # rliable's panel order


def game_intervals(result: Mapping[str, Any], reps: int = 2000, seed: int = 0) -> list[dict]:
    """Per game of an eval result: the score shown (human-normalized where the game has reference scores,
    else raw), and a 95% percentile bootstrap interval of its mean over runs (seed means with 2+ seeds,
    episodes otherwise, as the aggregates resample)."""
    from sqlcli_core.evaluation import aggregates

    rows = []
    for game, block in result["games"].items():
        scores = np.asarray(block["scores"], float)
        seeds = np.asarray(block["seeds"])
        distinct = sorted(set(seeds.tolist()))
        runs = np.array([scores[seeds == s].mean() for s in distinct]) if len(distinct) >= 2 else scores
        ref = block.get("reference")
        normalized = ref is not None and block.get("human_normalized") is not None
        if normalized:
            runs = (runs - ref["random"]) / (ref["human"] - ref["random"])
        value = float(runs.mean())
        if runs.size >= 2:
            reps_stats = aggregates.bootstrap_distribution(runs[:, None], lambda b: b.mean(axis=(1, 2)), reps=reps,
                                                           seed=seed)
            lo, hi = aggregates.percentile_interval(reps_stats)
        else:
            lo = hi = value
        rows.append({"game": game, "value": value, "ci95": [lo, hi], "normalized": normalized, "runs": int(runs.size)})
    return rows


def _aggregate_row(fig, grid_cell, result: Mapping[str, Any]) -> None:
    aggregates = result.get("aggregates") or {}
    shown = [(key, title) for key, title in AGGREGATE_ORDER if key in aggregates]
    cells = grid_cell.subgridspec(1, max(1, len(shown)), wspace=0.35)
    if not shown:
        ax = fig.add_subplot(cells[0])
        ax.axis("off")
        ax.text(0.5, 0.5, "no aggregates: none of these games has random/human reference scores",
                ha="center", va="center", fontsize=8)
        return
    games = (result.get("aggregate_method") or {}).get("games") or []
    for i, (key, title) in enumerate(shown):
        ax = fig.add_subplot(cells[i])
        block = aggregates[key]
        value = 100 * block["value"]
        low, high = (100 * block["ci95"][0], 100 * block["ci95"][1]) if block.get("ci95") else (value, value)
        ax.barh([0], [high - low], left=[low], height=0.6, color="C0", alpha=0.75)
        ax.vlines(value, -0.3, 0.3, color="k", lw=2)
        left, right = min(low, 0.0), max(high, 0.0)
        pad = 0.15 * (right - left) or 1.0
        ax.set_xlim(left - pad, right + pad)
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")  # random
        if right + pad >= 100.0:
            ax.axvline(100.0, color="C3", lw=0.8, ls=":")  # human, when the interval comes near it
        ax.set_yticks([])
        ax.set_ylim(-0.6, 0.6)
        ax.set_title(f"{title}: {value:.1f}% [{low:.1f}, {high:.1f}]", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
        if i == len(shown) // 2:
            ax.set_xlabel(f"human-normalized score (%) over {len(games) or '?'} games, 95% stratified bootstrap "
                          "interval", fontsize=7)


def _game_panel(ax, group: list[dict], is_normalized: bool) -> None:
    scale = 100.0 if is_normalized else 1.0
    y = np.arange(len(group))[::-1]
    values = np.array([r["value"] for r in group]) * scale
    lo = np.array([r["ci95"][0] for r in group]) * scale
    hi = np.array([r["ci95"][1] for r in group]) * scale
    ax.barh(y, values, color="C0" if is_normalized else "C2", alpha=0.75, height=0.7)
    ax.errorbar(values, y, xerr=np.stack([values - lo, hi - values]).clip(min=0), fmt="none", ecolor="k",
                capsize=3, lw=1.2)
    ax.set_yticks(y, [r["game"] for r in group], fontsize=8)
    ax.set_ylim(-0.8, len(group) - 0.2)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    if is_normalized:
        ax.axvline(0.0, color="0.3", lw=1.0, ls="--", label="random (0%)")
        ax.axvline(100.0, color="C3", lw=1.0, ls=":", label="human (100%)")
        ax.set_xlabel("human-normalized score (%), mean and 95% interval per game", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.set_xlabel("raw score (no reference scores for these games), mean and 95% interval", fontsize=8)


def eval_chart(result: Mapping[str, Any]) -> bytes:
    """PNG bytes of an eval result's figure (Agg canvas, no display)."""
    rows = game_intervals(result)
    normalized = [r for r in rows if r["normalized"]]
    raw = [r for r in rows if not r["normalized"]]
    groups = [(g, n) for g, n in ((normalized, True), (raw, False)) if g]
    heights = [1.7] + [max(1.5, 0.3 * len(g) + 1.0) for g, _ in groups]
    fig = new_figure(8.0, sum(heights) + 0.6)
    policy = result.get("policy", {})
    who = policy.get("run") or policy.get("kind", "policy")
    step = policy.get("step")
    protocol = result.get("protocol", {})
    capped = " (capped episodes: not the protocol)" if protocol.get("deviates_from_protocol") else ""
    fig.suptitle(f"{Path(str(who)).name}{f' step {step}' if step is not None else ''}, protocol "
                 f"{protocol.get('name', '?')}{capped}", fontsize=9)
    grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.55)
    _aggregate_row(fig, grid[0], result)
    for i, (group, is_normalized) in enumerate(groups):
        _game_panel(fig.add_subplot(grid[i + 1]), group, is_normalized)
    fig.subplots_adjust(left=0.16, right=0.97, top=1 - 0.45 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    return png_bytes(fig)


def write_eval_chart(result: Mapping[str, Any], path: str | Path) -> Path:
    """NAME.png beside an eval result, written atomically."""
    png = eval_chart(result)
    with atomic_output(path, "wb") as f:
        f.write(png)
    return Path(path)

"""Eval result files: the one place that builds and writes an eval result (the summary of episodes, its
protocol block, provenance, the markdown report), used by `sql eval` and by the fine-tuning final evaluations."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.atomic import atomic_output, write_json
from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation import aggregates
from sqlcli_core.evaluation.eval_events import write_eval_events
from sqlcli_core.evaluation.evaluate import FRAME_STACK, EpisodeResult, EvalConfig
from sqlcli_core.games.catalog import REFERENCE_SCORE_SOURCE, Game
from sqlcli_core.provenance import provenance


def final_eval_is_current(path: Path, key: str, value: int) -> bool:
    """Whether RUN/eval/final.json exists and was written for `finetune.<key> == value` (e.g. grad_steps)."""
    return path.exists() and json.loads(path.read_text()).get("finetune", {}).get(key) == value


def eval_metrics_record(step: int, grad_steps: int, results, final: bool = False) -> dict:
    """The metrics record of an evaluation (kind "eval"): mean and std of the scores, and the episodes."""
    scores = [r.score for r in results]
    return {"step": step, "kind": "eval", "grad_steps": grad_steps, "final": final,
            "mean": float(np.mean(scores)), "std": float(np.std(scores)), "scores": scores,
            "lengths": [r.length for r in results], "truncated": [r.truncated for r in results]}


def build_eval_result(*, command: str, config: dict, seed: int, eval_config, episodes, policy: dict,
                      bootstrap_reps: int = 50_000, **extra: Any) -> dict:
    """The eval result (schema in docs/architecture.md): provenance, protocol, policy, the per-game scores and
    aggregates of `episodes`, then `extra` blocks (e.g. `throughput`, `finetune`), in that order."""
    return {
        "provenance": provenance(command, config, seed),
        "protocol": protocol_block(eval_config),
        "policy": policy,
        **summarize(episodes, eval_config, bootstrap_reps=bootstrap_reps),
        **extra,
    }


def write_eval_result(path: str | os.PathLike, result: dict, *, markdown: bool = False) -> Path | None:
    """Write an eval result atomically at `path` (JSON); with `markdown`, its report beside it (.md, returned)."""
    path = Path(path)
    write_json(path, result)
    run = (result.get("policy") or {}).get("run")
    if run:  # a run's result also goes into its TensorBoard events, at the checkpoint's step
        write_eval_events(run, result)
    if not markdown:
        return None
    md_path = path.with_suffix(".md")
    with atomic_output(md_path, "w") as f:
        f.write(markdown_report(result))
    return md_path


def write_final_eval(path: Path, *, command: str, run_config: dict, seed: int, eval_config, results,
                     run_dir: Path, step: int, arch: str, num_params: int, finetune: dict) -> dict:
    """RUN/eval/final.json of a fine-tuning run: the eval result plus the fine-tuning block."""
    result = build_eval_result(
        command=command, config={**run_config, "eval": eval_config.play_settings()}, seed=seed,
        eval_config=eval_config, episodes=results,
        policy={"kind": "checkpoint", "run": str(Path(run_dir).absolute()), "step": step, "arch": arch,
                "num_params": int(num_params)},
        finetune=finetune)
    write_eval_result(path, result)
    return result


def per_game_scores(results: Iterable[EpisodeResult], games: Sequence[str]) -> dict[str, list[EpisodeResult]]:
    """{game: its episodes sorted by (seed, episode)}, games in the given order."""
    by_game: dict[str, list[EpisodeResult]] = {g: [] for g in games}
    for r in results:
        by_game[r.game].append(r)
    return {g: sorted(rs, key=lambda r: (r.seed, r.episode)) for g, rs in by_game.items()}


def run_matrix_unit(seeds: Sequence[int]) -> str:
    """The bootstrap's unit of resampling: seeds when there are several, otherwise single episodes."""
    return "seed" if len(seeds) >= 2 else "episode"


def run_scores(episodes: Sequence[EpisodeResult], unit: str) -> np.ndarray:
    """Raw scores of one game for the bootstrap: (seeds, episodes) per seed (a run's score is their mean, and
    the nested bootstrap resamples both), or (episodes,) single episodes as the runs when one seed was played."""
    if unit == "episode":
        return np.array([e.score for e in episodes], np.float64)
    seeds = sorted({e.seed for e in episodes})
    return np.array([[e.score for e in sorted(episodes, key=lambda e: e.episode) if e.seed == s] for s in seeds],
                    np.float64)


def protocol_block(config: EvalConfig) -> dict:
    """The protocol as played, with any deviation from the named protocol spelled out."""
    deviations = []
    if config.max_steps != config.protocol.max_episode_steps:
        deviations.append(f"episodes capped at {config.max_steps} agent steps instead of "
                          f"{config.protocol.max_episode_steps}")
    block = config.protocol.to_dict()
    block.update({
        "protocol_max_episode_steps": config.protocol.max_episode_steps,
        "max_episode_steps": config.max_steps,
        "protocol_epsilon": config.protocol.epsilon,
        "epsilon": config.epsilon,
        "frame_stack": FRAME_STACK,
        "initial_stack": "three zero frames then the first frame",
        "observation": "84x84 grayscale, max of the last two of the skipped frames, area resize",
        "life_loss_terminal": False,
        "mode": config.mode,
        "difficulty": config.difficulty,
        "deviates_from_protocol": bool(deviations),
        "deviations": deviations,
    })
    return block


def summarize(results: Iterable[EpisodeResult], config: EvalConfig, *, bootstrap_reps: int = 50_000,
              bootstrap_seed: int = 0) -> dict:
    """The `games`, `aggregates`, `excluded_from_aggregates`, `aggregate_method` and `notes` of a result file.

    Per game: raw episode scores (ordered by seed, episode), their mean and std (population, ddof=0), and the
    human-normalized mean. Aggregates (IQM, median, mean with 95% stratified bootstrap CIs) cover the games
    with a reference score, played in the default mode and difficulty; the rest are reported raw and listed
    as excluded, with a note.
    """
    by_game = per_game_scores(results, config.games)
    missing = [g for g, eps in by_game.items() if len(eps) != len(config.seeds) * config.episodes]
    if missing:
        raise UsageError(f"episodes missing for {', '.join(missing)}", hint="re-run the same command to finish them")
    variant = config.mode is not None or config.difficulty is not None
    unit = run_matrix_unit(config.seeds)
    notes: list[str] = []
    games_block: dict[str, dict] = {}
    runs_for_aggregate: dict[str, np.ndarray] = {}
    references: dict[str, tuple[float, float]] = {}
    excluded: list[str] = []
    # Synthetic games are normalised to (random play, optimal return), Atari games to (random, human): one
    # aggregate covers one kind, the human one unless every game is synthetic.
    scale = "optimal" if all(Game(name).synthetic for name in by_game) else "human"
    for name, episodes in by_game.items():
        game = Game(name)
        scores = np.array([e.score for e in episodes], np.float64)
        mean = float(scores.mean())
        ref = None if variant else game.reference
        games_block[name] = {
            "scores": [e.score for e in episodes],
            "seeds": [e.seed for e in episodes],
            "episodes": [e.episode for e in episodes],
            "lengths": [e.length for e in episodes],
            "truncated": [e.truncated for e in episodes],
            "mean": mean,
            "std": float(scores.std()),
            "human_normalized": game.human_normalized(mean) if ref and not game.synthetic else None,
            "reference": {"random": ref[0], game.normalization: ref[1]} if ref else None,
        }
        if game.synthetic and ref:
            games_block[name]["optimal_normalized"] = game.human_normalized(mean)
        if ref is None or game.normalization != scale:
            excluded.append(name)
        else:
            runs_for_aggregate[name] = run_scores(episodes, unit)
            references[name] = ref
    if excluded:
        why = ("a mode or difficulty was given, and the reference scores are for the default game" if variant
               else "synthetic games are normalised to their optimum, not to human play" if any(
                   Game(n).synthetic for n in excluded) and scale == "human"
               else "no standard random/human reference score")
        notes.append(f"reported raw and left out of the aggregates ({why}): {', '.join(excluded)}")
    matrix, kept = aggregates.human_normalized_matrix(runs_for_aggregate, references)
    if kept:
        aggregate_block = aggregates.aggregates_with_ci(matrix, reps=bootstrap_reps, seed=bootstrap_seed)
    else:
        aggregate_block = {}
        notes.append("no game with a reference score: no aggregates")
    runs = matrix.shape[0] if kept else 0
    if kept and unit == "episode":
        notes.append("one seed: the bootstrap resamples single episodes; pass several --seeds to resample runs")
    if kept and runs < 3:
        notes.append(f"only {runs} run(s) per game: the confidence intervals are very rough or degenerate")
    truncated = sum(sum(b["truncated"]) for b in games_block.values())
    if truncated:
        notes.append(f"{truncated} episode(s) were cut at the {config.max_steps}-step cap")
    if config.max_steps != config.protocol.max_episode_steps:
        notes.append(f"DEVIATES FROM THE PROTOCOL: episodes capped at {config.max_steps} agent steps instead of "
                     f"{config.protocol.max_episode_steps}; scores are not comparable with published ones")
    if scale == "optimal":
        notes.append("synthetic games: scores normalised to 0 = random play, 1 = the optimal return (not human)")
    if "VideoPinball" in kept:
        notes.append("VideoPinball is normalized with random = 0.0 (Dopamine's table; DQN Zoo uses 16256.9)")
    notes.append(f"reference scores: {REFERENCE_SCORE_SOURCE}")
    return {
        "games": games_block,
        "aggregates": aggregate_block,
        "excluded_from_aggregates": excluded,
        "aggregate_method": {
            "score": "human-normalized: (score - random) / (human - random)" if scale == "human" else
                     "optimal-normalized: (score - random) / (optimal - random): 0 = random play, 1 = the optimal "
                     "return (synthetic games; not human-normalized)",
            "scale": scale,
            "unit": unit, "runs_per_game": runs, "games": kept,
            "bootstrap": ("stratified (runs resampled within each game), percentile interval" if unit == "episode"
                          else "stratified two-level (within each game: seeds resampled, then each resampled "
                               "seed's episodes), percentile interval"),
            "reps": bootstrap_reps, "seed": bootstrap_seed, "confidence": 0.95,
            "iqm": "25% trimmed mean of all runs x games", "median": "median over games of the mean over runs",
            "mean": "mean over games of the mean over runs",
        },
        "notes": notes,
    }


def markdown_report(result: dict) -> str:
    """A Markdown table of one result file: per-game scores, then the aggregates and the notes."""
    policy, protocol = result.get("policy", {}), result.get("protocol", {})
    lines = [
        f"# Evaluation: {policy.get('kind')}" + (f" {policy.get('run')} step {policy.get('step')}"
                                                 if policy.get("run") else ""),
        "",
        f"Protocol `{protocol.get('name')}`: sticky actions {protocol.get('sticky_action_prob')}, "
        f"epsilon {protocol.get('epsilon')}, cap {protocol.get('max_episode_steps')} agent steps, "
        f"frame skip {protocol.get('frame_skip')}"
        + (f", mode {protocol.get('mode')}" if protocol.get("mode") is not None else "")
        + (f", difficulty {protocol.get('difficulty')}" if protocol.get("difficulty") is not None else "")
        + (" **(deviates from the protocol)**" if protocol.get("deviates_from_protocol") else "") + ".",
        "",
        "| game | episodes | mean | std | random | human | human-normalized |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in result["games"].items():
        ref = g.get("reference") or {}
        hns = g.get("human_normalized")
        lines.append(f"| {name} | {len(g['scores'])} | {g['mean']:.1f} | {g['std']:.1f} | "
                     f"{_fmt(ref.get('random'))} | {_fmt(ref.get('human'))} | "
                     f"{'-' if hns is None else f'{100 * hns:.1f}%'} |")
        if "optimal_normalized" in g:  # a synthetic game: normalised to random play and its exact optimum
            lines[-1] = (f"| {name} | {len(g['scores'])} | {g['mean']:.2f} | {g['std']:.2f} | "
                         f"{_fmt(ref.get('random'))} | optimal {_fmt(ref.get('optimal'))} | "
                         f"{100 * g['optimal_normalized']:.1f}% of optimal |")
    if result.get("aggregates"):
        scale = result.get("aggregate_method", {}).get("scale", "human")
        lines += ["", f"| aggregate ({scale}-normalized) | value | 95% CI |", "|---|---:|---:|"]
        for name, a in result["aggregates"].items():
            lo, hi = a["ci95"]
            lines.append(f"| {name} | {100 * a['value']:.1f}% | [{100 * lo:.1f}%, {100 * hi:.1f}%] |")
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"

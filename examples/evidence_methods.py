"""Experiment 1 (docs/results.md): Scaled QL vs behaviour cloning vs the Decision Transformer, next to the data's
own returns and random play, at equal gradient steps and batch, on data whose behaviour is known.

    python examples/evidence_methods.py [--root sql-evidence] [--quick]

The paper's claim: only Q-learning improves over the offline data. Writes ROOT/results/methods.json (every
number, the commands, the machine, the time) and ROOT/results/methods.png, and prints a Markdown table.
"""

from __future__ import annotations

import sys

import numpy as np
from evidence_common import HELDOUT_GAME, METHODS, Lab, episode_scores, error_bars, parse_args, save_figure
from evidence_tables import LABELS, methods_markdown, summarize_methods

# Evaluated columns: each method's runs, and BC's runs again with sampled actions (BC acts greedily by default).
SAMPLED_BC = "bc-sample"


def greedy_agreement(run_dir, store, games, samples: int, action: int) -> dict:
    """How often the trained network's greedy action is the behaviour's scripted action, on states drawn from
    the data (uniformly within each game), next to how often the data itself took that action there."""
    from sqlcli_core.data.sampler import ReplaySampler
    from sqlcli_core.runs.policy import load_policy

    policy = load_policy(run_dir)
    sampler = ReplaySampler(store, games=list(games), batch_size=samples, seed=0)
    try:
        batch = sampler.next_batch()
    finally:
        sampler.close()
    greedy = np.asarray(policy.q_values(batch.state, batch.game)).argmax(axis=1)
    return {game: {"greedy_is_scripted": float(np.mean(greedy[batch.game == i] == action)),
                   "data_took_scripted": float(np.mean(batch.action[batch.game == i] == action))}
            for i, game in enumerate(games)}


def run(lab: Lab, methods: tuple[str, ...] = METHODS) -> dict:
    """Train and evaluate; the record holds every episode score (docs/results/methods.json), from which
    examples/evidence_tables.py computes the intervals and aggregates."""
    s = lab.scale
    lab.make_data()
    random_play = episode_scores(lab.evaluate(None))
    always = lab.always_scripted()
    episodes: dict[str, list[dict[str, list[float]]]] = {}
    runs: dict[str, list[str]] = {}
    for method in methods:
        for seed in s.seeds:
            run_dir = lab.pretrain(method, s.method_width, seed)
            episodes.setdefault(method, []).append(episode_scores(lab.evaluate(run_dir, seed=seed)))
            runs.setdefault(method, []).append(str(run_dir))
            if method == "bc":  # the same runs, acting by sampling: BC's acting is a setting, not the method
                sampled = lab.evaluate(run_dir, seed=seed, name="evidence-sample", extra=("--acting", "sample"))
                episodes.setdefault(SAMPLED_BC, []).append(episode_scores(sampled))
    columns = [c for m in methods for c in ((m, SAMPLED_BC) if m == "bc" else (m,))]
    # Why the scores are what they are: which action the value and policy networks prefer on the data's states.
    agreement = {method: greedy_agreement(runs[method][0], lab.store, s.games, 256 if lab.quick else 3072,
                                          lab.scripted_action)
                 for method in ("scaled-ql", "c51", "bc") if method in runs}
    record = {
        "games": list(s.games), "heldout_game_not_used": HELDOUT_GAME, "methods": columns,
        "scripted_action": lab.scripted_action,
        "episodes": {"random": random_play, "methods": episodes,
                     "data": {g: lab.data_returns(g).tolist() for g in s.games},
                     "always": {g: lab.data_returns(g, always).tolist() for g in s.games}},
        "greedy_agreement_seed0": agreement, "runs": runs,
    }
    return {**record, **summarize_methods(record)}


def markdown(result: dict) -> str:
    return methods_markdown(result)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["random", "data", *result["methods"]]
    colors = ["#9e9e9e", "#424242", "#1f77b4", "#17becf", "#ff7f0e", "#bcbd22", "#2ca02c"]
    games = result["games"]
    fig, axes = plt.subplots(1, len(games), figsize=(2.3 * len(games), 3.2))
    for ax, game in zip(np.atleast_1d(axes), games):
        row = result["per_game"][game]
        ax.bar(range(len(cols)), [row[c]["mean"] for c in cols], yerr=error_bars([row[c] for c in cols]),
               color=colors[:len(cols)], capsize=3)
        ax.axhline(row["data"]["mean"], color="#424242", lw=0.8, ls="--")
        ax.set_title(game, fontsize=9)
        ax.set_xticks(range(len(cols)), [LABELS[c].replace(" ", "\n", 1) for c in cols], fontsize=6, rotation=90)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Score per game: mean over training seeds, 95% two-level bootstrap interval (seeds, then their "
                 "episodes; data: its episodes)", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    def methods_option(p):
        p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))

    args = parse_args(__doc__, methods_option)
    methods = tuple(m for m in args.methods.split(",") if m)
    if not methods or set(methods) - set(METHODS):
        sys.exit(f"--methods: choose from {','.join(METHODS)}")
    lab = Lab(args.root, args.quick, args.scripted_action, args.records)
    result = run(lab, methods)
    lab.write_result("methods", result)
    plot(result, lab.root / "results" / "methods.png")
    print(markdown(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

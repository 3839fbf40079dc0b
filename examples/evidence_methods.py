"""Experiment 1 (docs/results.md): Scaled QL vs behaviour cloning vs the Decision Transformer, next to the data's
own returns and random play, at equal gradient steps and batch, on data whose behaviour is known.

    python examples/evidence_methods.py [--root sql-evidence] [--quick]

The paper's claim: only Q-learning improves over the offline data. Writes ROOT/results/methods.json (every
number, the commands, the machine, the time) and ROOT/results/methods.png, and prints a Markdown table.
"""

from __future__ import annotations

import sys

import numpy as np
from evidence_common import (
    HELDOUT_GAME,
    METHODS,
    Lab,
    error_bars,
    format_interval,
    game_means,
    human_normalized,
    mean_interval,
    parse_args,
    save_figure,
)

LABELS = {"random": "random play", "data": "data (behaviour)", "always": "always the scripted action",
          "scaled-ql": "Scaled QL", "bc": "BC", "dt": "Decision Transformer"}


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
    s = lab.scale
    lab.make_data()
    random_scores = game_means(lab.evaluate(None))
    always = lab.always_scripted()
    per_method: dict[str, list[dict[str, float]]] = {}
    runs: dict[str, list[str]] = {}
    for method in methods:
        for seed in s.seeds:
            run_dir = lab.pretrain(method, s.method_width, seed)
            per_method.setdefault(method, []).append(game_means(lab.evaluate(run_dir)))
            runs.setdefault(method, []).append(str(run_dir))
    # Why the scores are what they are: which action the value and policy networks prefer on the data's states.
    agreement = {method: greedy_agreement(runs[method][0], lab.store, s.games, 256 if lab.quick else 3072,
                                          lab.scripted_action)
                 for method in ("scaled-ql", "bc") if method in runs}

    table: dict[str, dict] = {}
    for game in s.games:
        data = lab.data_returns(game)
        row = {"random": {"mean": random_scores[game]}, "data": {**mean_interval(data), "episodes": int(data.size)}}
        reference = lab.data_returns(game, always)
        if reference.size:
            row["always"] = {**mean_interval(reference), "episodes": int(reference.size)}
        for method, seeds in per_method.items():
            row[method] = mean_interval([scores[game] for scores in seeds])
            lower = row[method]["ci95"][0] if row[method]["ci95"] else row[method]["mean"]
            row[method]["above_data"] = bool(lower > row["data"]["mean"])
        table[game] = row

    # Aggregate: per training seed, the mean human-normalized score over games; interval over seeds.
    aggregate = {
        "random": float(np.mean([human_normalized(g, random_scores[g]) for g in s.games])),
        "data": float(np.mean([human_normalized(g, table[g]["data"]["mean"]) for g in s.games])),
    }
    for method, seeds in per_method.items():
        aggregate[method] = mean_interval([np.mean([human_normalized(g, sc[g]) for g in s.games]) for sc in seeds])
    return {"games": list(s.games), "heldout_game_not_used": HELDOUT_GAME, "methods": list(methods),
            "scripted_action": lab.scripted_action,
            "per_game": table, "human_normalized_mean": aggregate, "greedy_agreement_seed0": agreement, "runs": runs}


def markdown(result: dict) -> str:
    cols = ["random", "data", "always", *result["methods"]]
    lines = ["| game | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]

    def cell(v: dict, digits: int = 1) -> str:
        text = format_interval(v, digits)
        return f"**{text}**" if v.get("above_data") else text

    for game, row in result["per_game"].items():
        lines.append(f"| {game} | " + " | ".join(cell(row[c]) if c in row else "-" for c in cols) + " |")
    agg = result["human_normalized_mean"]
    lines.append("| human-normalized mean | " + " | ".join(
        "-" if c not in agg else cell(agg[c], 3) if isinstance(agg[c], dict) else f"{agg[c]:.3f}" for c in cols) + " |")
    lines += ["", f"| greedy action = the scripted action {result['scripted_action']}, on the data's states (seed 0) | "
              + " | ".join(result["games"]) + " |", "|---|" + "---:|" * len(result["games"])]
    for method, per_game in result["greedy_agreement_seed0"].items():
        lines.append(f"| {LABELS[method]} | " + " | ".join(
            f"{100 * per_game[g]['greedy_is_scripted']:.1f}%" for g in result["games"]) + " |")
    lines.append("| (the data took it) | " + " | ".join(
        f"{100 * per_game[g]['data_took_scripted']:.1f}%" for g in result["games"]) + " |")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["random", "data", *result["methods"]]
    games = result["games"]
    fig, axes = plt.subplots(1, len(games), figsize=(2.3 * len(games), 3.2))
    colors = ["#9e9e9e", "#424242", "#1f77b4", "#ff7f0e", "#2ca02c"]
    for ax, game in zip(np.atleast_1d(axes), games):
        row = result["per_game"][game]
        ax.bar(range(len(cols)), [row[c]["mean"] for c in cols], yerr=error_bars([row[c] for c in cols]),
               color=colors[:len(cols)], capsize=3)
        ax.axhline(row["data"]["mean"], color="#424242", lw=0.8, ls="--")
        ax.set_title(game, fontsize=9)
        ax.set_xticks(range(len(cols)), [LABELS[c].replace(" ", "\n", 1) for c in cols], fontsize=6, rotation=90)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Score per game: mean over training seeds, 95% t-interval (data: over its episodes)", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    def methods_option(p):
        p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))

    args = parse_args(__doc__, methods_option)
    methods = tuple(m for m in args.methods.split(",") if m)
    if not methods or set(methods) - set(METHODS):
        sys.exit(f"--methods: choose from {','.join(METHODS)}")
    lab = Lab(args.root, args.quick, args.scripted_action)
    result = run(lab, methods)
    lab.write_result("methods", result)
    plot(result, lab.root / "results" / "methods.png")
    print(markdown(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The statistics and Markdown tables of the evidence experiments, from their records alone (docs/results.md).

Pure functions of a record (the JSON an `examples/evidence_*.py` script writes, kept in docs/results/): the
scripts call them to print their tables, and `examples/results_tables.py` calls them again to recompute the
tables of docs/results.md from the committed records (tests/test_results_page.py checks that they match).

Statistics (the code `sql eval` uses for its aggregates, `sqlcli_core.evaluation.aggregates`):
- a *run* is one training seed's policy; its score on a game is the mean of its evaluation episodes, played
  on evaluation seeds of its own (no two training seeds share an episode);
- a per-game interval is the 95% two-level stratified bootstrap: training seeds resampled, then each drawn
  seed's episodes (so evaluation noise is inside the interval); the data's interval resamples its episodes;
- IQM and mean of human-normalized scores over games: the same bootstrap on the (seeds, episodes, games)
  tensor, IQM over the (seeds x games) matrix of run scores, as `sql eval` and `sql scale-report` compute it;
- "above the data": the method's interval lies entirely above the data's interval (no overlap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

BOOTSTRAP_REPS = 20_000
LABELS = {"random": "random play", "data": "data (behaviour)", "always": "always the scripted action",
          "scaled-ql": "Scaled QL", "c51": "C51 (CQL weight 0)", "bc": "BC (greedy)", "bc-sample": "BC (sampled)",
          "dt": "Decision Transformer", "scaled-ql-a0.01": "Scaled QL (CQL weight 0.01)",
          "scaled-ql-a0.05": "Scaled QL (CQL weight 0.05)"}


def runs_interval(runs: Sequence[Sequence[float]], reps: int = BOOTSTRAP_REPS) -> dict:
    """Mean over runs of each run's mean episode score, and its 95% two-level bootstrap interval.

    runs: one list of episode scores per run (equal lengths; a single run: the bootstrap over its episodes).
    """
    from sqlcli_core.evaluation.aggregates import aggregates_with_ci

    lengths = {len(r) for r in runs}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every run needs the same positive number of episodes, got {sorted(lengths)}")
    tensor = np.asarray(runs, np.float64)[:, :, None]
    out = aggregates_with_ci(tensor, reps=reps, names=("mean",))["mean"]
    return {"mean": out["value"], "ci95": out["ci95"], "runs": len(runs), "episodes_per_run": tensor.shape[1]}


def human_normalized_aggregates(runs: Sequence[Mapping[str, Sequence[float]]], games: Sequence[str],
                                reps: int = BOOTSTRAP_REPS) -> dict:
    """{"iqm": {...}, "mean": {...}} of human-normalized scores: runs x episodes x games, two-level bootstrap."""
    from sqlcli_core.evaluation.aggregates import aggregates_with_ci, human_normalized_matrix
    from sqlcli_core.games.catalog import Game

    per_game = {g: np.asarray([run[g] for run in runs], np.float64) for g in games}
    references = {g: Game(g).reference for g in games}
    tensor, _ = human_normalized_matrix(per_game, references)
    out = aggregates_with_ci(tensor, reps=reps, names=("iqm", "mean"))
    return {name: {"mean": v["value"], "ci95": v["ci95"]} for name, v in out.items()}


def human_normalized_point(means: Mapping[str, float], games: Sequence[str]) -> dict:
    """IQM and mean over games of one score per game (a 1 x games matrix: no interval)."""
    from sqlcli_core.evaluation.aggregates import aggregate
    from sqlcli_core.games.catalog import Game

    row = np.array([[Game(g).human_normalized(means[g]) for g in games]])
    return {"iqm": {"mean": aggregate(row, "iqm"), "ci95": None}, "mean": {"mean": aggregate(row, "mean"), "ci95": None}}


def format_interval(v: Mapping | None, digits: int = 1, scale: float = 1.0) -> str:
    """'mean [low, high]' (just the mean without an interval; '-' for nothing)."""
    if v is None:
        return "-"
    text = f"{scale * v['mean']:,.{digits}f}"
    if v.get("ci95"):
        text += f" [{scale * v['ci95'][0]:,.{digits}f}, {scale * v['ci95'][1]:,.{digits}f}]"
    return text


# ---------------------------------------------------------------------------------------------------------
# Experiment 1: methods


def summarize_methods(record: Mapping) -> dict:
    """Per game and method: intervals and the above-data flag; aggregates over games. From the raw episodes."""
    games, methods = record["games"], record["methods"]
    table: dict[str, dict] = {}
    for game in games:
        data = runs_interval([record["episodes"]["data"][game]])
        row = {"random": runs_interval([record["episodes"]["random"][game]]), "data": data}
        always = record["episodes"].get("always", {}).get(game) or []
        if always:
            row["always"] = runs_interval([always])
        for method in methods:
            row[method] = runs_interval([seed[game] for seed in record["episodes"]["methods"][method]])
            row[method]["above_data"] = bool(row[method]["ci95"][0] > data["ci95"][1])
        table[game] = row
    aggregates = {"random": human_normalized_point({g: table[g]["random"]["mean"] for g in games}, games),
                  "data": human_normalized_point({g: table[g]["data"]["mean"] for g in games}, games)}
    for method in methods:
        aggregates[method] = human_normalized_aggregates(record["episodes"]["methods"][method], games)
    return {"per_game": table, "human_normalized": aggregates}


def methods_markdown(record: Mapping) -> str:
    summary = summarize_methods(record)
    cols = ["random", "data", "always", *record["methods"]]
    lines = ["| game | " + " | ".join(LABELS[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]

    def cell(v: Mapping) -> str:
        text = format_interval(v)
        return f"**{text}**" if v.get("above_data") else text

    for game, row in summary["per_game"].items():
        lines.append(f"| {game} | " + " | ".join(cell(row[c]) if c in row else "-" for c in cols) + " |")
    for name in ("iqm", "mean"):
        agg = summary["human_normalized"]
        lines.append(f"| human-normalized {name.upper() if name == 'iqm' else name} (%) | " + " | ".join(
            format_interval(agg[c][name], 1, 100.0) if c in agg else "-" for c in cols) + " |")
    agreement = record.get("greedy_agreement_seed0") or {}
    if agreement:
        lines += ["", f"| greedy action = the scripted action {record['scripted_action']}, on the data's states "
                  "(seed 0) | " + " | ".join(games_of(record)) + " |", "|---|" + "---:|" * len(games_of(record))]
        for method, per_game in agreement.items():
            lines.append(f"| {LABELS[method]} | " + " | ".join(
                f"{100 * per_game[g]['greedy_is_scripted']:.1f}%" for g in games_of(record)) + " |")
        first = next(iter(agreement.values()))
        lines.append("| (the data took it) | " + " | ".join(
            f"{100 * first[g]['data_took_scripted']:.1f}%" for g in games_of(record)) + " |")
    return "\n".join(lines)


def games_of(record: Mapping) -> list[str]:
    return list(record["games"])


# ---------------------------------------------------------------------------------------------------------
# Experiment 2: capacity


def capacity_markdown(record: Mapping) -> str:
    lines = ["| width | projection | parameters (total / shared) | human-normalized IQM (%) | human-normalized mean (%) |",
             "|---:|---:|---:|---:|---:|"]
    for row in record["sizes"]:
        total = f"{row['parameters']:,}" if row["parameters"] else "?"
        shared = f"{row['shared_parameters']:,}" if row["shared_parameters"] else "?"
        agg = human_normalized_aggregates(row["episodes"], record["games"])
        lines.append(f"| {row['width']:g} | {row['projection_dim']} | {total} / {shared} | "
                     f"{format_interval(agg['iqm'], 1, 100.0)} | {format_interval(agg['mean'], 1, 100.0)} |")
    for params, rep in record["scale_report"].items():
        if "refused" in rep:
            lines.append(f"\nscale-report ({params} parameters): refused: {rep['refused']}")
        for fit in rep.get("fits", []):
            interval = "-" if fit["b_ci95"] is None else f"[{fit['b_ci95'][0]:.3f}, {fit['b_ci95'][1]:.3f}]"
            b = "-" if fit["b"] is None else f"{fit['b']:.3f}"
            group = ", ".join(fit["group"].values()) or "all runs"
            lines.append(f"\nscale-report ({params} parameters, {group}): exponent b = {b}, "
                         f"95% bootstrap interval {interval}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Experiment 3: transfer


def transfer_markdown(record: Mapping) -> str:
    on, off = record["online"], record["offline"]
    lines = ["| experiment | metric | pre-trained | scratch |", "|---|---|---:|---:|"]
    for kind, label in (("online", f"online, {on['game']} mode {on['mode']}"),
                        ("offline", f"offline, {off['game']} ({off['transitions']:,} transitions)")):
        cells = [format_interval(runs_interval(record[kind][init]["final_episodes"])) for init in ("pretrained", "scratch")]
        lines.append(f"| {label} | final score | {cells[0]} | {cells[1]} |")
        if kind == "online":
            curve = [format_interval(runs_interval([[m] for m in record[kind][init]["curve_means"]]))
                     for init in ("pretrained", "scratch")]
            lines.append(f"| {label} | mean score over the curve (one value per seed) | {curve[0]} | {curve[1]} |")
    lines.append(f"\n{off['game']}: data (behaviour) {format_interval(runs_interval([off['data_episodes']]))}, "
                 f"random play {format_interval(runs_interval([off['random_episodes']]))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Experiment 1c: the Freeway mixture


def mixture_markdown(record: Mapping) -> str:
    """Score intervals per arm next to the data's runs and random play, and the sign of Q(UP) - Q(NOOP) at the
    bottom rows (mean over seeds of each run's mean gap, and the share of states where UP is preferred)."""
    eps = record["episodes"]
    data_all = [x for run in eps["data"].values() for x in run]

    def episodes_interval(scores: Sequence[float]) -> dict | None:  # None: no complete episode (a --quick run)
        return runs_interval([scores]) if scores else None

    lines = ["| | Freeway score | Q(UP) - Q(NOOP) on bottom-row states | share of them preferring UP |",
             "|---|---:|---:|---:|", f"| random play | {format_interval(runs_interval([eps['random']['Freeway']]))} | - | - |"]
    for run, behaviour in record["behaviours"].items():
        label = f"data run {run} ({behaviour['policy']}, epsilon {behaviour['epsilon']})"
        lines.append(f"| {label} | {format_interval(episodes_interval(eps['data'][run]))} | - | - |")
    data = episodes_interval(data_all)
    lines.append(f"| data, both runs | {format_interval(data)} | - | - |")
    data_high = data["ci95"][1] if data else float("inf")
    for arm in record["arms"]:
        score = runs_interval([seed["Freeway"] for seed in eps["methods"][arm]])
        text = format_interval(score)
        text = f"**{text}**" if score["ci95"][0] > data_high else text
        gaps = record["up_minus_noop_bottom_rows"].get(arm)
        gap = "-" if not gaps else f"{np.mean([g['mean'] for g in gaps]):+.3f}"
        share = "-" if not gaps else f"{100 * np.mean([g['share_positive'] for g in gaps]):.0f}%"
        lines.append(f"| {LABELS.get(arm, arm)} | {text} | {gap} | {share} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Section 0: the known-answer chain games (examples/evidence_chains.py)

CHAIN_ACTING = {"scaled-ql-a0.05": "greedy", "scaled-ql-a0.01": "greedy", "c51": "greedy", "bc": "greedy",
                "bc-sample": "sample", "dt": "authors' (best of 128 returns, top-half actions)"}
REACHED = 0.9
"""A run has reached the optimum at a step count when its evaluation episodes' optimal-normalized mean is >= this."""


def optimal_normalized(scores: Sequence[float], reference: Mapping) -> list[float]:
    """0 = random play, 1 = the optimal return (what `sql eval` reports for a synthetic game)."""
    return [(x - reference["random"]) / (reference["optimal"] - reference["random"]) for x in scores]


def _width_note(v: Mapping) -> str:
    return "zero" if v["ci95"][0] == v["ci95"][1] else f"{v['ci95'][1] - v['ci95'][0]:.2f}"


def summarize_chain_methods(record: Mapping) -> dict:
    """Per game: the data's and every method's optimal-normalized mean and 95% interval (two-level bootstrap over
    training seeds and their episodes), and whether each interval lies above the data's and both BC ones."""
    out = {}
    for game, g in record["games"].items():
        ref = g["reference"]
        rows = {"data": runs_interval([optimal_normalized(g["data"], ref)])}
        for method in record["methods"]:
            rows[method] = runs_interval([optimal_normalized(run, ref) for run in g["methods"][method]])
        bc_high = max(rows[m]["ci95"][1] for m in ("bc", "bc-sample") if m in rows)
        for method in record["methods"]:
            rows[method]["above_data"] = bool(rows[method]["ci95"][0] > rows["data"]["ci95"][1])
            rows[method]["above_bc"] = bool(rows[method]["ci95"][0] > bc_high)
        out[game] = rows
    return out


def chain_methods_markdown(record: Mapping) -> str:
    summary = summarize_chain_methods(record)
    seeds, episodes = len(record["seeds"]), record["scale"]["eval_episodes"]
    lines = []
    for game, rows in summary.items():
        data = rows["data"]
        lines += [f"**{game}** ({seeds} training seeds x {episodes} evaluation episodes per method; data: "
                  f"{data['episodes_per_run']:,} episodes of `{record['data_policy']['policy']}`)", "",
                  "| policy | acting | optimal-normalized return [95% interval] | interval width "
                  "| above the data | above BC (greedy and sampled) |", "|---|---|---:|---:|:-:|:-:|",
                  f"| data (behaviour) | - | {format_interval(data, 2)} | {_width_note(data)} | - | - |"]
        for method in record["methods"]:
            v = rows[method]
            lines.append(f"| {LABELS[method]} | {CHAIN_ACTING[method]} | {format_interval(v, 2)} | {_width_note(v)} | "
                         f"{'yes' if v['above_data'] else 'no'} | {'yes' if v['above_bc'] else 'no'} |")
        main = rows["scaled-ql-a0.05"]
        verdict = "yes" if main["above_data"] and main["above_bc"] else "no"
        lines += ["", f"Scaled QL (CQL weight 0.05) above both BC and the data, intervals not overlapping: {verdict}.",
                  ""]
    return "\n".join(lines).rstrip()


def steps_to_optimum(per_step: Mapping[str, Sequence[Sequence[float]]], grid: Sequence[int]) -> list[int | None]:
    """Per training seed: the first evaluated step count whose mean optimal-normalized score is >= REACHED
    (None: not within the grid). per_step: {str(steps): [normalized episode scores per seed]}."""
    seeds = len(per_step[str(grid[0])])
    return [next((k for k in grid if np.mean(per_step[str(k)][i]) >= REACHED), None) for i in range(seeds)]


def _steps_cell(reached: Sequence[int | None], grid: Sequence[int]) -> str:
    """Per-seed step counts: their mean [bootstrap interval over seeds] when every seed got there, else the list."""
    text = ", ".join("not reached" if r is None else str(r) for r in reached)
    if all(r is not None for r in reached):
        return f"{format_interval(runs_interval([[float(r)] for r in reached]), 0)} (seeds: {text})"
    return f"seeds: {text} (within {grid[-1]} steps)"


def chain_transfer_markdown(record: Mapping) -> str:
    ref, grid = record["reference"], record["grid"]
    norm = {init: {k: [optimal_normalized(run, ref) for run in runs] for k, runs in curve.items()}
            for init, curve in record["curves"].items()}
    online = record.get("mode") == "online"
    where = ("online (`sql finetune-online`: its own play, no data)" if online else
             f"offline ({record['finetune']['transitions']:,} rows of its data)")
    unit = "agent steps" if online else "fine-tuning steps"
    lines = [f"Fine-tuning {where} on the held-out {record['heldout']}, optimal-normalized return [95% interval] "
             f"after each number of {unit}; {len(record['seeds'])} seeds x {record['scale']['eval_episodes']} "
             "evaluation episodes:", "", f"| {unit} | pre-trained | scratch |", "|---:|---:|---:|"]
    for k in grid:
        lines.append(f"| {k} | " + " | ".join(format_interval(runs_interval(norm[i][str(k)]), 2)
                                               for i in ("pretrained", "scratch")) + " |")
    cells = [_steps_cell(steps_to_optimum(norm[init], grid), grid) for init in ("pretrained", "scratch")]
    lines.append(f"| {unit} to the optimal return (mean >= {REACHED} of optimal) | {cells[0]} | {cells[1]} |")
    values = record.get("values")
    if values:
        bound = record["q_bound"]
        lines += ["", "The same runs diagnosed against Q* at each step count (`sql diagnose`): max \\|Q-hat - Q*\\| over "
                  "the pairs the data visits, mean over seeds [95% bootstrap interval over seeds]:", "",
                  f"| {unit} | pre-trained | scratch |", "|---:|---:|---:|"]
        for k in grid:
            lines.append(f"| {k} | " + " | ".join(
                format_interval(runs_interval([[d["max_abs_q_error"]] for d in values[i][str(k)]]), 3)
                for i in ("pretrained", "scratch")) + " |")
        cells = [_steps_cell([next((k for k in grid if values[i][str(k)][seed]["max_abs_q_error"] <= bound), None)
                              for seed in range(len(record["seeds"]))], grid) for i in ("pretrained", "scratch")]
        lines.append(f"| {unit} to max \\|Q-hat - Q*\\| <= {bound} | {cells[0]} | {cells[1]} |")
    data = runs_interval([optimal_normalized(record["data"], ref)])
    from sqlcli_core.games.catalog import Game

    own = []
    for game in record["pretrain_games"]:
        g_ref = dict(zip(("random", "optimal"), Game(game).reference))
        own_scores = [optimal_normalized(seed[game], g_ref) for seed in record["pretrained_scores"]]
        own.append(f"{game} {format_interval(runs_interval(own_scores), 2)}")
    lines += ["", f"{record['heldout']}'s data (behaviour): {format_interval(data, 2)}. The pre-trained runs on "
              f"their own games: {'; '.join(own)}."]
    return "\n".join(lines)


def chain_size_markdown(record: Mapping) -> str:
    from sqlcli_core.evaluation.aggregates import aggregates_with_ci

    games, refs = record["games"], record["references"]
    lines = ["| width | projection | parameters | optimal-normalized mean over the 5 variants [95% interval] "
             "| lowest game mean | max \\|Q-hat - Q*\\|, mean over seeds and variants [95% interval over seeds] "
             "| largest over seeds and variants |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in record["sizes"]:
        tensor = np.asarray([[optimal_normalized(seed[g], refs[g]) for g in games] for seed in row["episodes"]])
        tensor = tensor.transpose(0, 2, 1)  # (seeds, episodes, games)
        mean = aggregates_with_ci(tensor, reps=BOOTSTRAP_REPS, names=("mean",))["mean"]
        lowest = float(tensor.mean(axis=(0, 1)).min())
        params = f"{row['parameters']:,}" if row.get("parameters") else "?"
        errors = [[float(np.mean([seed[g] for g in games]))] for seed in row.get("max_abs_q_error", [])]
        error = format_interval(runs_interval(errors), 3) if errors else "-"
        worst = f"{max(max(seed.values()) for seed in row['max_abs_q_error']):.3f}" if errors else "-"
        lines.append(f"| {row['width']:g} | {row['projection_dim']} | {params} | "
                     f"{format_interval({'mean': mean['value'], 'ci95': mean['ci95']}, 2)} | {lowest:.2f} | {error} "
                     f"| {worst} |")
    return "\n".join(lines)


MARKDOWN = {"methods": methods_markdown, "capacity": capacity_markdown, "transfer": transfer_markdown,
            "mixture": mixture_markdown, "chain-methods": chain_methods_markdown,
            "chain-transfer": chain_transfer_markdown, "chain-online": chain_transfer_markdown,
            "chain-size": chain_size_markdown}

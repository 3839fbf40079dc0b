"""Experiment 3 (docs/results.md): does pre-training speed up learning a new task? Pre-trained vs from scratch,
same architecture, budget and seeds.

    python examples/evidence_transfer.py [--root sql-evidence] [--quick]

(a) Online: `sql finetune-online` on Freeway mode 1 (other traffic than the pre-training data's mode 0), 20k
    agent steps (one gradient step per 4), from each Scaled QL pre-training run of the methods experiment
    (`--init pretrained`: its torso and its Freeway head) vs `--init scratch`; learning curves.
(b) Offline: `sql finetune-offline` on SpaceInvaders, a game left out of pre-training, from a small budget of
    its data (the same behaviour), pre-trained torso with a fresh head vs scratch.
The paper's claim: pre-training speeds both up. Writes ROOT/results/transfer.json and transfer.png and prints
a Markdown table.
"""

from __future__ import annotations

import csv

import numpy as np
from evidence_common import HELDOUT_GAME, Lab, error_bars, format_interval, mean_interval, parse_args, save_figure

ONLINE_GAME, ONLINE_MODE = "Freeway", 1
INITS = ("pretrained", "scratch")


def online(lab: Lab, source, init: str, seed: int) -> dict:
    s = lab.scale
    run = lab.root / "runs" / f"online-{ONLINE_GAME.lower()}-m{ONLINE_MODE}-{init}-s{seed}"
    lab.sql("finetune-online", "--from", source, "--init", init, "--game", ONLINE_GAME, "--mode", ONLINE_MODE,
            "--steps", s.online_steps, "--update-period", s.online_update_period,
            "--min-replay", s.online_min_replay, "--epsilon-decay-steps", s.online_min_replay,
            "--eval-every", s.online_eval_every, "--eval-episodes", 1, "--final-seeds", 2, "--final-episodes", 1,
            "--eval-max-steps", s.eval_max_steps, "--seed", seed, "--run-dir", run)
    with open(run / "learning_curve.csv", newline="") as f:
        curve = [(int(r["agent_steps"]), float(r["eval_mean"])) for r in csv.DictReader(f)]
    return {"run": str(run), "curve": curve, "final": _final_mean(run, ONLINE_GAME)}


def offline(lab: Lab, source, init: str, seed: int) -> dict:
    s = lab.scale
    run = lab.root / "runs" / f"offline-{HELDOUT_GAME.lower()}-{init}-s{seed}"
    lab.sql("finetune-offline", "--from", source, "--init", init, "--game", HELDOUT_GAME, "--data", lab.store,
            "--transitions", s.offline_transitions, "--steps", s.offline_steps, "--final-seeds", 2,
            "--final-episodes", 1, "--eval-max-steps", s.eval_max_steps, "--seed", seed, "--run-dir", run)
    return {"run": str(run), "final": _final_mean(run, HELDOUT_GAME)}


def _final_mean(run, game: str) -> float:
    import json

    return float(json.loads((run / "eval" / "final.json").read_text())["games"][game]["mean"])


def run(lab: Lab) -> dict:
    s = lab.scale
    lab.make_data()
    sources = [lab.pretrain("scaled-ql", s.method_width, seed) for seed in s.seeds]
    arms = {"online": {i: [] for i in INITS}, "offline": {i: [] for i in INITS}}
    for seed, source in zip(s.seeds, sources):
        for init in INITS:
            arms["online"][init].append(online(lab, source, init, seed))
            arms["offline"][init].append(offline(lab, source, init, seed))
    summary = {}
    for kind, by_init in arms.items():
        summary[kind] = {}
        for init, results in by_init.items():
            entry = {"final": mean_interval([r["final"] for r in results]), "runs": [r["run"] for r in results]}
            if kind == "online":
                steps = [step for step, _ in results[0]["curve"]]
                entry["curve"] = [{"agent_steps": step, **mean_interval([r["curve"][k][1] for r in results])}
                                  for k, step in enumerate(steps) if all(len(r["curve"]) > k for r in results)]
                entry["area_under_curve"] = mean_interval([np.mean([v for _, v in r["curve"]]) for r in results])
            summary[kind][init] = entry
    random_heldout = lab.evaluate(None, games=[HELDOUT_GAME], name="heldout")["games"][HELDOUT_GAME]["mean"]
    data = lab.data_returns(HELDOUT_GAME)
    return {"online": {"game": ONLINE_GAME, "mode": ONLINE_MODE, **summary["online"]},
            "offline": {"game": HELDOUT_GAME, "transitions": s.offline_transitions, "random": random_heldout,
                        "data": mean_interval(data), **summary["offline"]},
            "sources": [str(x) for x in sources]}


def markdown(result: dict) -> str:
    on, off = result["online"], result["offline"]
    lines = ["| experiment | metric | pre-trained | scratch |", "|---|---|---:|---:|"]
    lines.append(f"| online, {on['game']} mode {on['mode']} | final score | "
                 f"{format_interval(on['pretrained']['final'])} | "
                 f"{format_interval(on['scratch']['final'])} |")
    lines.append(f"| online, {on['game']} mode {on['mode']} | mean score over the curve | "
                 f"{format_interval(on['pretrained']['area_under_curve'])} | "
                 f"{format_interval(on['scratch']['area_under_curve'])} |")
    lines.append(f"| offline, {off['game']} ({off['transitions']:,} transitions) | final score | "
                 f"{format_interval(off['pretrained']['final'])} | {format_interval(off['scratch']['final'])} |")
    lines.append(f"\n{off['game']}: data (behaviour) {format_interval(off['data'])}, random play {off['random']:.1f}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = {"pretrained": "#1f77b4", "scratch": "#ff7f0e"}
    on = result["online"]
    for init in INITS:
        pts = on[init]["curve"]
        x = [p["agent_steps"] for p in pts]
        y = [p["mean"] for p in pts]
        a.plot(x, y, marker="o", color=colors[init], label=init)
        if all(p["ci95"] for p in pts):
            a.fill_between(x, [p["ci95"][0] for p in pts], [p["ci95"][1] for p in pts], color=colors[init], alpha=0.2)
    a.set_xlabel("agent steps")
    a.set_ylabel("evaluation score")
    a.set_title(f"(a) online: {on['game']} mode {on['mode']}", fontsize=9)
    a.legend(fontsize=8)
    off = result["offline"]
    finals = [off[i]["final"] for i in INITS]
    b.bar(range(len(INITS)), [v["mean"] for v in finals], yerr=error_bars(finals), color=[colors[i] for i in INITS],
          capsize=4)
    b.axhline(off["data"]["mean"], color="#424242", ls="--", lw=1, label="data (behaviour)")
    b.axhline(off["random"], color="#9e9e9e", ls=":", lw=1, label="random play")
    b.set_xticks(range(len(INITS)), INITS)
    b.set_title(f"(b) offline: {off['game']}, {off['transitions']:,} transitions", fontsize=9)
    b.legend(fontsize=8)
    fig.suptitle("Pre-trained vs scratch: mean over seeds, 95% t-interval", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__)
    lab = Lab(args.root, args.quick, args.scripted_action)
    result = run(lab)
    lab.write_result("transfer", result)
    plot(result, lab.root / "results" / "transfer.png")
    print(markdown(result))


if __name__ == "__main__":
    main()

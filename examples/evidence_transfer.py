"""Experiment 3 (docs/results.md): does pre-training speed up learning a new task? Pre-trained vs from scratch,
same architecture, budget and seeds.

    python examples/evidence_transfer.py [--root sql-evidence] [--quick]

(a) Online: `sql finetune-online` on Freeway mode 1 (other traffic than the pre-training data's mode 0), 20k
    agent steps (one gradient step per 4), from each Scaled QL pre-training run of the methods experiment
    (`--init pretrained`: its torso and its Freeway head) vs `--init scratch`; learning curves.
(b) Offline: `sql finetune-offline` on SpaceInvaders, a game left out of pre-training, from a small budget of
    its data (the same behaviour), pre-trained torso with a fresh head vs scratch.
Final scores: `sql eval` of each fine-tuned run on evaluation seeds of its own (as every pre-training run), not the
fine-tuning command's own final evaluation, which plays seeds 0..n-1 for every run.
The paper's claim: pre-training speeds both up. Writes ROOT/results/transfer.json and transfer.png and prints
a Markdown table.
"""

from __future__ import annotations

import csv

import numpy as np
from evidence_common import HELDOUT_GAME, Lab, episode_scores, error_bars, parse_args, save_figure
from evidence_tables import runs_interval, transfer_markdown

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
    final = lab.evaluate(run, games=[ONLINE_GAME], seed=seed, extra=("--mode", ONLINE_MODE))
    return {"run": str(run), "curve": curve, "final": episode_scores(final)[ONLINE_GAME]}


def offline(lab: Lab, source, init: str, seed: int) -> dict:
    s = lab.scale
    run = lab.root / "runs" / f"offline-{HELDOUT_GAME.lower()}-{init}-s{seed}"
    lab.sql("finetune-offline", "--from", source, "--init", init, "--game", HELDOUT_GAME, "--data", lab.store,
            "--transitions", s.offline_transitions, "--steps", s.offline_steps, "--final-seeds", 2,
            "--final-episodes", 1, "--eval-max-steps", s.eval_max_steps, "--seed", seed, "--run-dir", run)
    return {"run": str(run), "final": episode_scores(lab.evaluate(run, games=[HELDOUT_GAME], seed=seed))[HELDOUT_GAME]}


def run(lab: Lab) -> dict:
    s = lab.scale
    lab.make_data()
    sources = [lab.pretrain("scaled-ql", s.method_width, seed) for seed in s.seeds]
    arms = {"online": {i: [] for i in INITS}, "offline": {i: [] for i in INITS}}
    for seed, source in zip(s.seeds, sources):
        for init in INITS:
            arms["online"][init].append(online(lab, source, init, seed))
            arms["offline"][init].append(offline(lab, source, init, seed))
    record = {"online": {"game": ONLINE_GAME, "mode": ONLINE_MODE}, "offline": {"game": HELDOUT_GAME,
              "transitions": s.offline_transitions}, "sources": [str(x) for x in sources]}
    for kind, by_init in arms.items():
        for init, results in by_init.items():
            entry = {"final_episodes": [r["final"] for r in results], "runs": [r["run"] for r in results]}
            if kind == "online":
                entry["curves"] = [r["curve"] for r in results]
                entry["curve_means"] = [float(np.mean([v for _, v in r["curve"]])) for r in results]
            record[kind][init] = entry
    record["offline"]["random_episodes"] = episode_scores(
        lab.evaluate(None, games=[HELDOUT_GAME], name="heldout"))[HELDOUT_GAME]
    record["offline"]["data_episodes"] = lab.data_returns(HELDOUT_GAME).tolist()
    return record


def markdown(result: dict) -> str:
    return transfer_markdown(result)


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    colors = {"pretrained": "#1f77b4", "scratch": "#ff7f0e"}
    on = result["online"]
    for init in INITS:
        curves = on[init]["curves"]
        points = min(len(c) for c in curves)
        x = [step for step, _ in curves[0][:points]]
        y = [float(np.mean([c[k][1] for c in curves])) for k in range(points)]
        a.plot(x, y, marker="o", color=colors[init], label=init)
    a.set_xlabel("agent steps")
    a.set_ylabel("evaluation score")
    a.set_title(f"(a) online: {on['game']} mode {on['mode']}", fontsize=9)
    a.legend(fontsize=8)
    off = result["offline"]
    finals = [runs_interval(off[i]["final_episodes"]) for i in INITS]
    b.bar(range(len(INITS)), [v["mean"] for v in finals], yerr=error_bars(finals), color=[colors[i] for i in INITS],
          capsize=4)
    b.axhline(np.mean(off["data_episodes"]), color="#424242", ls="--", lw=1, label="data (behaviour)")
    b.axhline(np.mean(off["random_episodes"]), color="#9e9e9e", ls=":", lw=1, label="random play")
    b.set_xticks(range(len(INITS)), INITS)
    b.set_title(f"(b) offline: {off['game']}, {off['transitions']:,} transitions", fontsize=9)
    b.legend(fontsize=8)
    fig.suptitle("Pre-trained vs scratch: mean over seeds (curves); final: 95% two-level bootstrap interval", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__)
    lab = Lab(args.root, args.quick, args.scripted_action, args.records)
    result = run(lab)
    lab.write_result("transfer", result)
    plot(result, lab.root / "results" / "transfer.png")
    print(markdown(result))


if __name__ == "__main__":
    main()

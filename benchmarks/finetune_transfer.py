"""Experiment: online fine-tuning from a pre-trained torso vs from scratch, side by side, same budget.

    python benchmarks/finetune_transfer.py --from RUN --game breakout --mode 12 --steps 20000 --out OUT
    python benchmarks/finetune_transfer.py --from RUN --throughput --steps 4000 --num-envs 8 --out OUT

Runs `finetune-online` twice in this process (OUT/arm_pretrained, OUT/arm_scratch) with identical settings
except `--init` (pretrained, then scratch), then writes OUT/curves.csv (both learning curves: evaluation score against agent steps),
OUT/summary.json (final scores, wall time, settings) and OUT/curves.png (matplotlib, Agg).

Without a pre-trained run, `--make-pretrained` builds a small one first with the real pipeline
(`sql collect` random play -> `sql shard` -> `sql pretrain`), on the games of `--pretrain-games`. Such a run
has seen only random-play data, so the comparison then says little about Scaled QL itself; it exercises
the whole path and shows the shape of the experiment. Everything is resumable: re-running continues.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

# Many tiny matmuls per emulator step: OpenBLAS threads only contend with the learner on a small CPU.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def make_pretrained(out: Path, games: str, collect_steps: int, pretrain_steps: int, arch: str, width: float) -> Path:
    """A pre-trained run from random play: collect -> shard -> pretrain (all real commands)."""
    from typer.testing import CliRunner

    from sqlcli.main import app

    runner = CliRunner()

    def sql(*args):
        result = runner.invoke(app, [str(a) for a in args])
        if result.exit_code != 0:
            sys.exit(f"sql {' '.join(map(str, args))} failed:\n{result.output}")

    raw, store, run = out / "pretrain_data", out / "pretrain_store", out / "pretrained"
    sql("collect", "--games", games, "--transitions", collect_steps, "--capacity", max(1000, collect_steps // 2),
        "--out", raw, "--policy", "sticky-random", "--seed", 1)
    sql("shard", raw, store, "--jobs", 1)
    sql("pretrain", "--data", store, "--run-dir", run, "--games", games, "--arch", arch, "--width", width,
        "--batch-size", 64, "--steps", pretrain_steps, "--checkpoint-every", max(1, pretrain_steps // 2),
        "--log-every", max(1, pretrain_steps // 10), "--cache-bytes", 256 << 20, "--target-update-period", 500)
    return run


def throughput(args, source: Path) -> None:
    """Agent steps per second of the acting loop (emulators + one batched Q call per step), no learning:
    1 emulator (the baseline) vs --num-envs emulators, same process, same settings otherwise."""
    from sqlcli_core.training.configs import OnlineConfig
    from sqlcli_core.training.finetune_online import run_online

    rates = {}
    for n in sorted({1, args.num_envs}):
        config = OnlineConfig(game=args.game, mode=args.mode, difficulty=args.difficulty, steps=args.steps,
                              num_envs=n, min_replay=args.steps, eval_every=10 * args.steps, final_seeds=1,
                              final_episodes=1, eval_max_steps=10, checkpoint_every=10 * args.steps,
                              log_every=args.steps // 4, epsilon_decay_steps=1, epsilon_start=0.01,
                              seed=args.seed)
        run = args.out / f"throughput_{n}"
        run_online(config, run_dir=run, source=source)
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
        rates[n] = sum(r["agent_steps_per_s"] for r in records[1:]) / max(1, len(records) - 1)  # skip compile
    for n, r in rates.items():
        print(f"num_envs={n}: {r:.0f} agent steps/s" + ("  (baseline)" if n == 1 else f"  ({r / rates[1]:.2f}x)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, help="pre-trained run directory")
    p.add_argument("--make-pretrained", action="store_true", help="build a small pre-trained run first (see above)")
    p.add_argument("--pretrain-games", default="breakout,pong,freeway")
    p.add_argument("--collect-steps", type=int, default=20_000, help="random-play transitions per game")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--arch", default="dqn")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--game", default="breakout")
    p.add_argument("--mode", type=int, default=12)
    p.add_argument("--difficulty", type=int, default=None)
    p.add_argument("--steps", type=int, default=20_000, help="agent steps per arm")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=2500)
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--eval-max-steps", type=int, default=27_000)
    p.add_argument("--min-replay", type=int, default=1600)
    p.add_argument("--update-period", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--throughput", action="store_true",
                   help="instead: acting speed (agent steps/s, no updates) with 1 emulator vs --num-envs, side by side")
    args = p.parse_args()

    from sqlcli_core.training.configs import OnlineConfig
    from sqlcli_core.training.finetune_online import run_online

    args.out.mkdir(parents=True, exist_ok=True)
    source = args.source
    if args.throughput:
        throughput(args, source)
        return
    if args.make_pretrained:
        t = time.perf_counter()
        source = make_pretrained(args.out, args.pretrain_games, args.collect_steps, args.pretrain_steps,
                                 args.arch, args.width)
        print(f"pre-trained run {source} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if source is None:
        sys.exit("pass --from RUN or --make-pretrained")

    arms = {}
    for init in ("pretrained", "scratch"):
        config = OnlineConfig(game=args.game, mode=args.mode, difficulty=args.difficulty, init=init, steps=args.steps,
                              num_envs=args.num_envs, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                              final_seeds=args.eval_episodes, final_episodes=1, eval_max_steps=args.eval_max_steps,
                              checkpoint_every=args.eval_every, log_every=max(args.eval_every // 5, 1),
                              min_replay=args.min_replay, update_period=args.update_period, seed=args.seed)
        t = time.perf_counter()
        summary = run_online(config, run_dir=args.out / f"arm_{init}", source=source,
                             on_progress=lambda r, i=init: print(i, json.dumps({k: r[k] for k in r if k in (
                                 "step", "kind", "mean", "epsilon", "grad_steps", "loss")}), file=sys.stderr))
        summary["wall_s"] = time.perf_counter() - t
        arms[init] = summary

    curves = {}
    for init in arms:
        with open(args.out / f"arm_{init}" / "learning_curve.csv") as f:
            curves[init] = [(int(r["agent_steps"]), float(r["eval_mean"]), float(r["eval_std"])) for r in csv.DictReader(f)]
    with open(args.out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["init", "agent_steps", "eval_mean", "eval_std"])
        for init, rows in curves.items():
            w.writerows([(init, *r) for r in rows])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for init, rows in curves.items():
        x = [r[0] for r in rows]
        m = [r[1] for r in rows]
        s = [r[2] for r in rows]
        ax.plot(x, m, marker="o", label=init)
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    variant = f"mode {args.mode}" + (f", difficulty {args.difficulty}" if args.difficulty is not None else "")
    ax.set_title(f"Online fine-tuning, {arms['scratch']['game']} {variant}")
    ax.set_xlabel("agent steps")
    ax.set_ylabel(f"evaluation score (mean of {args.eval_episodes} episodes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120)

    summary = {"settings": vars(args) | {"out": str(args.out), "source": str(source)},
               "arms": {k: {f: v[f] for f in ("final_mean", "final_std", "agent_steps", "grad_steps", "wall_s")}
                        for k, v in arms.items()},
               "curves": curves}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary["arms"], indent=2))
    for init, rows in curves.items():
        print(init, " ".join(f"{s}:{m:.1f}" for s, m, _ in rows))


if __name__ == "__main__":
    main()

"""Does it learn? The known-answer experiments of docs/known-answer.md, on the synthetic chain games.

Every step is a real `sql` command (collect, shard, pretrain), run in this process through typer's CliRunner
(one JAX import for the whole experiment), printed as the shell line it stands for and recorded; each run is
then diagnosed against the exact answers (`sqlcli_core.analysis.diagnose`, what `sql diagnose` prints).
Commands are resumable: re-running continues, finished runs cost nothing.

    python examples/known_answer.py --root /tmp/known-answer --out docs/known-answer   # writes the records
    python examples/known_answer.py --tables --out docs/known-answer                   # the page's tables

Experiments (records in OUT/*.json):
- methods: Chain-fall-12, mixture:0.25 data; scaled-ql with CQL weight {0, 0.01, 0.05} (0 = C51) x n-step
  {1, 3}, and BC; max/mean |Q-hat - Q*|, Q error against the data's n-step fixed point, greedy action
  agreement with an optimal action, greedy return; mean and 95% t-interval over the seeds.
- stay: Chain-stay-12, the same data policy; what the CQL weight does where the wrong action only delays.
- propagation: C51 on Chain-fall-12 with a target copy every 30 steps and a checkpoint at every copy: how many
  positions' values are right (within 0.05) after k copies, against the k that one backup per copy predicts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls on a small CPU: BLAS threads only contend

BOUND = 0.05
ALPHAS = (0.0, 0.01, 0.05)
N_STEPS = (1, 3)
POLICY = "mixture:0.25"
# The CI-sized learner of the learning check (sqlcli_core/synthetic/check.py) minus what the sweep varies.
LEARNER = ("--arch", "dqn", "--width", "0.25", "--projection-dim", "64", "--batch-size", "32", "--lr", "1e-2",
           "--v-min", "-2", "--v-max", "2", "--log-every", "100")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t quantiles for the 95% interval


class Lab:
    def __init__(self, root: Path, steps: int, transitions: int):
        from typer.testing import CliRunner

        self.root, self.steps, self.transitions = root, steps, transitions
        self.runner = CliRunner()
        self.commands: list[str] = []

    def sql(self, *args: str) -> None:
        from sqlcli.main import app

        line = "sql " + shlex.join(args)
        print(line, file=sys.stderr, flush=True)
        self.commands.append(line)
        result = self.runner.invoke(app, list(args))
        if result.exit_code != 0:
            raise SystemExit(f"failed ({result.exit_code}): {line}\n{result.output[-2000:]}")

    def store(self, game: str) -> Path:
        data, store = self.root / "data", self.root / f"store-{game}"
        self.sql("collect", "--games", game, "--policy", POLICY, "--epsilon", "0", "--transitions",
                 str(self.transitions), "--capacity", str(self.transitions + 4000), "--out", str(data))
        self.sql("shard", str(data), str(store), "--games", game)
        return store

    def pretrain(self, store: Path, game: str, name: str, seed: int, *flags: str) -> Path:
        run = self.root / "runs" / game / f"{name}-s{seed}"
        self.sql("pretrain", "--data", str(store), "--run-dir", str(run), "--games", game, "--seed", str(seed),
                 "--steps", str(self.steps), *LEARNER, *flags)
        return run


def diagnosis(run: Path, game: str) -> dict:
    from sqlcli_core.analysis.diagnose import diagnose
    from sqlcli_core.runs.policy import load_policy

    return diagnose(load_policy(run), game)


def interval(values: list[float | None]) -> dict | None:
    """Mean and 95% t-interval over seeds (None when a value does not apply)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = T_975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(xs)}


def summarise(results: list[dict]) -> dict:
    fixed = [r.get("data_fixed_point") or {} for r in results]
    majority_wrong = [sum(1 for s in r["states"] if s.get("greedy") is not None and s["data_majority"] is not None
                          and s["greedy"] == s["data_majority"] and s["data_majority"] not in s["optimal_actions"])
                      for r in results]
    return {
        "max_abs_q_error": interval([r["max_abs_q_error"] for r in results]),
        "mean_abs_q_error": interval([r["mean_abs_q_error"] for r in results]),
        "max_abs_error_vs_data_fixed_point": interval([f.get("max_abs_q_error") for f in fixed]),
        "greedy_action_agreement": interval([r["greedy_action_agreement"] for r in results]),
        "greedy_return": interval([r["greedy_return"] for r in results]),
        "states_playing_the_wrong_majority": interval(majority_wrong),
        "optimal_return": results[0]["optimal_return"], "data_return": results[0]["data_return"],
        "per_seed": [{k: r[k] for k in ("max_abs_q_error", "mean_abs_q_error", "greedy_action_agreement",
                                         "greedy_return")} for r in results],
    }


def sweep(lab: Lab, game: str, seeds: list[int], n_steps: tuple[int, ...]) -> dict:
    store = lab.store(game)
    rows = []
    for n in n_steps:
        for alpha in ALPHAS:
            name = f"sql-a{alpha:g}-n{n}"
            runs = [lab.pretrain(store, game, name, s, "--method", "scaled-ql", "--alpha", str(alpha),
                                 "--n-step", str(n), "--target-update-period", "20") for s in seeds]
            rows.append({"method": "scaled-ql", "cql_weight": alpha, "n_step": n,
                         **summarise([diagnosis(r, game) for r in runs])})
    runs = [lab.pretrain(store, game, "bc", s, "--method", "bc", "--n-step", "1") for s in seeds]
    rows.append({"method": "bc", "cql_weight": None, "n_step": None, **summarise([diagnosis(r, game) for r in runs])})
    return {"game": game, "rows": rows}


def propagation(lab: Lab, game: str, seed: int, period: int = 30) -> dict:
    from sqlcli_core.synthetic.chain import chain_spec

    store = lab.store(game)
    copies = lab.steps // period
    run = lab.pretrain(store, game, f"propagation-p{period}", seed, "--method", "c51", "--n-step", "1",
                       "--target-update-period", str(period), "--checkpoint-every", str(period),
                       "--keep", str(copies + 1))
    length = chain_spec(game).length
    points = []
    for k in range(1, copies + 1):
        r = diagnosis(run / "checkpoints" / str(k * period), game)
        right = [abs(s["q_hat"][0] - s["q_star"][0]) <= BOUND for s in r["states"]]
        solved = 0  # positions right counting back from the goal, as backups reach them
        for ok in reversed(right):
            if not ok:
                break
            solved += 1
        points.append({"copies": k, "step": k * period, "positions_right_from_goal": solved,
                       "predicted_one_backup_per_copy": min(k, length), "q_hat_start": r["states"][0]["q_hat"][0],
                       "q_star_start": r["states"][0]["q_star"][0]})
    return {"game": game, "target_update_period": period, "seed": seed, "points": points}


def _fmt(iv: dict | None, digits: int = 3) -> str:
    if iv is None:
        return "-"
    if iv["n"] == 1 or abs(iv["high"] - iv["low"]) < 10 ** -digits:
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:.{digits}f} [{iv['low']:.{digits}f}, {iv['high']:.{digits}f}]"


def _weight(row: dict) -> str:
    return "-" if row["cql_weight"] is None else f"{row['cql_weight']:g}"


def _sweep_table(record: dict) -> list[str]:
    lines = ["| method | CQL weight | n-step | max \\|Q-hat - Q*\\| | mean \\|Q-hat - Q*\\| | max error vs data fixed point "
             "| optimal action agreement | greedy return |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rows"]:
        lines.append(f"| {r['method']} | {_weight(r)} | "
                     f"{r['n_step'] or '-'} | {_fmt(r['max_abs_q_error'])} | {_fmt(r['mean_abs_q_error'])} | "
                     f"{_fmt(r['max_abs_error_vs_data_fixed_point'])} | {_fmt(r['greedy_action_agreement'], 2)} | "
                     f"{_fmt(r['greedy_return'], 2)} |")
    return lines


def tables(out: Path) -> str:
    """The page's tables, made from the records alone (tests/test_known_answer_docs.py compares them)."""
    parts = []
    for name in ("methods", "stay"):
        path = out / f"{name}.json"
        if path.exists():
            record = json.loads(path.read_text())
            parts += [f"**{record['game']}** ({name}.json: {len(record['seeds'])} seeds, {record['steps']} steps; data "
                      f"return {record['rows'][0]['data_return']:.2f}, optimal {record['rows'][0]['optimal_return']:.2f})",
                      "", *_sweep_table(record), ""]
            if name == "stay":
                parts += ["| method | CQL weight | positions where greedy plays the data's wrong majority |",
                          "|---|---:|---:|"]
                parts += [f"| {r['method']} | {_weight(r)} | "
                          f"{_fmt(r['states_playing_the_wrong_majority'], 1)} |"
                          for r in record["rows"] if r["n_step"] in (1, None)]
                parts.append("")
    path = out / "propagation.json"
    if path.exists():
        record = json.loads(path.read_text())
        parts += [f"**propagation** (propagation.json: {record['game']}, C51, a target copy every "
                  f"{record['target_update_period']} steps, seed {record['seed']})", "",
                  "| target copies | positions right from the goal (measured) | one backup per copy predicts "
                  "| Q-hat(start, advance) | Q*(start, advance) |", "|---:|---:|---:|---:|---:|"]
        parts += [f"| {p['copies']} | {p['positions_right_from_goal']} | {p['predicted_one_backup_per_copy']} | "
                  f"{p['q_hat_start']:.3f} | {p['q_star_start']:.3f} |" for p in record["points"]]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("known-answer-work"), help="Working directory (data, runs).")
    parser.add_argument("--out", type=Path, default=Path("docs/known-answer"), help="Where the records go.")
    parser.add_argument("--seeds", default="0,1,2", help="Training seeds. Default 0,1,2.")
    parser.add_argument("--steps", type=int, default=400, help="Gradient steps per run. Default 400.")
    parser.add_argument("--transitions", type=int, default=6000, help="Transitions collected per game. Default 6000.")
    parser.add_argument("--only", default="methods,stay,propagation", help="Experiments to run.")
    parser.add_argument("--tables", action="store_true", help="Print the page's tables from the records and exit.")
    args = parser.parse_args()
    if args.tables:
        print(tables(args.out), end="")
        return
    from sqlcli_core.atomic import write_json
    from sqlcli_core.provenance import provenance

    seeds = [int(s) for s in args.seeds.split(",")]
    lab = Lab(args.root, args.steps, args.transitions)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"seeds": seeds, "steps": args.steps, "transitions": args.transitions, "policy": POLICY,
                "learner": list(LEARNER), "bound": BOUND}
    for name in args.only.split(","):
        started, lab.commands = time.perf_counter(), []
        if name == "methods":
            record = sweep(lab, "Chain-fall-12", seeds, N_STEPS)
        elif name == "stay":
            record = sweep(lab, "Chain-stay-12", seeds, (1,))
        elif name == "propagation":
            record = propagation(lab, "Chain-fall-12", seeds[0])
        else:
            raise SystemExit(f"unknown experiment {name}")
        record.update(experiment=name, seeds=seeds, steps=args.steps, commands=lab.commands,
                      seconds=round(time.perf_counter() - started, 1),
                      provenance=provenance("examples/known_answer.py", {**settings, "experiment": name}, seeds[0]))
        write_json(args.out / f"{name}.json", record)
        print(f"wrote {args.out / name}.json in {record['seconds']:.0f} s", file=sys.stderr)
    print(tables(args.out), end="")


if __name__ == "__main__":
    main()

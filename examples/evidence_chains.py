"""The evidence of docs/results.md section 0, re-run on the known-answer chain games (docs/known-answer.md).

On the chain games the three numbers that Atari cannot separate differ by design: on `mixture:P` data the data's
return is about P, its majority action at the start is the wrong one and the optimal return is 1. This script
plays the paper's claims there with `sql eval` episodes and the intervals `sql eval` computes:

- methods (claim 1): per game (Chain-fall-12, Chain-stay-12), 5 training seeds each of Scaled QL at CQL weight
  0.05 and 0.01, C51 (CQL weight 0), BC acting greedily and by sampling (`sql eval --acting`), and a tiny Decision
  Transformer acting as the authors' code does (`sql eval`'s DT defaults); every run played on 10 evaluation
  episodes of evaluation seeds of its own; the data's own episode returns beside them.
- transfer (claim 3): Scaled QL pre-trained on four variants (Chain-fall-12, -low, -big, -dim) with one torso,
  then `sql finetune-offline` on the held-out Chain-fall-12-mirror, pre-trained vs scratch, 3 seeds; each run is
  evaluated (`sql eval`) and diagnosed against Q* (`sql diagnose`) at several step counts (re-running
  finetune-offline with a larger --steps resumes it), so the records give the score and Q-error curves and the
  steps each seed needs to reach the optimal return and max |Q-hat - Q*| <= 0.05.
- online (claim 3, online): the same with `sql finetune-online` on the held-out variant (its own play, no data).
- size (claim 2): Scaled QL on all five variants at several torso widths: returns and Q errors (`sql diagnose`).

Every step is a real `sql` command run in this process (examples/evidence_common.py's Lab: CliRunner, one JAX
import), printed as the shell line it stands for and recorded. Re-running continues: collect skips finished
runs, pretrain and finetune-offline resume up to --steps, evaluations whose JSON exists are read back.

    python examples/evidence_chains.py --root /tmp/chains                 # records into docs/results/chains/
    python examples/evidence_chains.py --root /tmp/chains-q --quick       # the pipeline in a few minutes
    python examples/results_tables.py --write                             # the page's tables from the records

Statistics: examples/evidence_tables.py (the two-level stratified bootstrap of sqlcli_core.evaluation.aggregates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from evidence_common import RECORDS, Lab, eval_seeds_for  # beside this script
from evidence_tables import MARKDOWN

POLICY = "mixture:0.25"
# The CI-sized learner of known_answer.py / the learning check (sqlcli_core/synthetic/check.py).
LEARNER = ("--arch", "dqn", "--width", 0.25, "--projection-dim", 64, "--batch-size", 32, "--lr", 1e-2,
           "--v-min", -2, "--v-max", 2)
Q_FLAGS = ("--n-step", 1, "--target-update-period", 20)
# label -> (pretrain flags, eval flags). bc and bc-sample are one set of runs, evaluated twice.
METHODS = {
    "scaled-ql-a0.05": (("--method", "scaled-ql", "--alpha", 0.05, *LEARNER, *Q_FLAGS), ()),
    "scaled-ql-a0.01": (("--method", "scaled-ql", "--alpha", 0.01, *LEARNER, *Q_FLAGS), ()),
    "c51": (("--method", "c51", *LEARNER, *Q_FLAGS), ()),
    "bc": (("--method", "bc", *LEARNER), ("--acting", "greedy")),
    "bc-sample": (("--method", "bc", *LEARNER), ("--acting", "sample")),
    "dt": (("--method", "dt", "--arch", "dt-10m", "--lr", 1e-3), ()),  # sql eval's DT acting defaults: the authors'
}
PRETRAIN_VARIANTS = ("Chain-fall-12", "Chain-fall-12-low", "Chain-fall-12-big", "Chain-fall-12-dim")
HELDOUT = "Chain-fall-12-mirror"
FAMILY = (*PRETRAIN_VARIANTS, HELDOUT)
Q_BOUND = 0.05  # the learning check's bound on max |Q-hat - Q*| (sqlcli_core/synthetic/check.py)


@dataclasses.dataclass(frozen=True)
class ChainScale:
    games: tuple[str, ...]
    """Games of the methods experiment (one data set and one set of runs each)."""
    transitions: int
    """Transitions collected per game (`mixture:0.25`, epsilon 0), all kept."""
    steps: int
    """Gradient steps of each single-game run."""
    multi_steps: int
    """Gradient steps of each multi-variant pre-training run (transfer, size)."""
    seeds: tuple[int, ...]
    """Training seeds of the offline transfer and size experiments."""
    online_seeds: tuple[int, ...]
    """Training seeds of the online transfer (whether a run finds the goal at all varies by seed: more of them)."""
    methods_seeds: tuple[int, ...]
    """Training seeds of the methods experiment (claim 1: the one whose intervals decide the verdict)."""
    eval_episodes: int
    """Evaluation episodes per run and game: one each on that many evaluation seeds of the run's own."""
    dt_width: float
    """Width multiplier of the dt-10m preset (0.0625: 4 layers x 32 wide, 73k parameters)."""
    dt_batch_size: int
    dt_steps: int
    """Gradient steps of each DT run: at 300 it had not learned to condition on the return (every episode fell at
    the start, seed 0), so it gets twice the Q-learners' steps; each DT step also costs about 4x theirs."""
    finetune_transitions: int
    """Rows of the held-out variant's data that offline fine-tuning may use."""
    finetune_grid: tuple[int, ...]
    """Step counts at which each fine-tuning run is evaluated (the run is resumed from one to the next)."""
    online_grid: tuple[int, ...]
    """Agent steps at which each online fine-tuning run is evaluated and diagnosed (resumed likewise)."""
    online_min_replay: int
    """Agent steps of play before the first online update."""
    widths: tuple[float, ...]
    """Torso widths of the size experiment (projection 256 x width units)."""


FULL = ChainScale(games=("Chain-fall-12", "Chain-stay-12"), transitions=6000, steps=400, multi_steps=600,
                  seeds=(0, 1, 2), online_seeds=tuple(range(10)), methods_seeds=(0, 1, 2, 3, 4), eval_episodes=10, dt_width=0.0625,
                  dt_batch_size=16, dt_steps=800, finetune_transitions=3000,
                  finetune_grid=(25, 50, 100, 200, 400, 800), online_grid=(300, 600, 1200), online_min_replay=200,
                  widths=(0.0625, 0.25, 1.0))
QUICK = ChainScale(games=("Chain-fall-12",), transitions=1500, steps=10, multi_steps=10, seeds=(0,), online_seeds=(0,), methods_seeds=(0,),
                   eval_episodes=2, dt_width=0.0625, dt_batch_size=8, dt_steps=10, finetune_transitions=600,
                   finetune_grid=(5, 10), online_grid=(24, 40), online_min_replay=8, widths=(0.25,))


class ChainLab(Lab):
    """evidence_common.Lab's way of running `sql`, with the chain games' data, runs and records."""

    def __init__(self, root: Path, quick: bool, records: Path | None):
        super().__init__(root, quick, records=records if records is not None or quick else RECORDS / "chains")
        self.scale = QUICK if quick else FULL
        self.stores: dict[tuple[str, ...], Path] = {}

    def chain_store(self, games: tuple[str, ...]) -> Path:
        """Collect `games` with the mixture behaviour and shard them into one store."""
        name = "-".join(g.removeprefix("Chain-") for g in games)
        replay, store = self.root / "replay", self.root / f"store-{name}.zarr"
        self.sql("collect", "--games", ",".join(games), "--policy", POLICY, "--epsilon", 0, "--transitions",
                 self.scale.transitions, "--capacity", self.scale.transitions, "--seed", 0, "--out", replay)
        if not store.exists():
            self.sql("shard", replay, store, "--games", ",".join(games))
        return store

    def once(self, done: bool, *args: object) -> dict:
        """`sql ARGS` unless its output is already there; then only recorded (the record lists every command that
        made it, also those of an earlier invocation)."""
        if not done:
            return self.sql(*args)
        line = "sql " + shlex.join([str(a) for a in args] + ["--json"])
        self.commands.append(line)
        print(f"$ {line}\n  done before", file=sys.stderr, flush=True)
        return {}

    def data_episodes(self, game: str) -> list[float]:
        """The behaviour's own returns: every complete episode (terminal row) of the collected run."""
        log = json.loads((self.root / "replay" / game / "1" / "collect_log.json").read_text())
        return [float(e["return"]) for e in log["episodes"] if e["terminal"]]

    def train(self, store: Path, games: tuple[str, ...], name: str, seed: int, flags: tuple, steps: int) -> Path:
        s = self.scale
        run = self.root / "runs" / name / f"s{seed}"
        if "dt" in flags:
            flags, steps = (*flags, "--width", s.dt_width, "--batch-size", s.dt_batch_size), s.dt_steps
        self.sql("pretrain", "--data", store, "--games", ",".join(games), "--run-dir", run, "--seed", seed,
                 "--steps", steps, "--checkpoint-every", steps, "--log-every", max(1, steps // 4), *flags)
        return run

    def episodes(self, run: Path, games: tuple[str, ...], seed: int, name: str, extra: tuple = ()) -> dict:
        """{game: episode scores} of `sql eval` on the run's newest checkpoint, on training seed `seed`'s own
        evaluation seeds, one episode each (read back when its JSON exists); and the games' references."""
        out = run / "eval" / f"{name}.json"
        self.once(out.exists(), "eval", run, "--games", ",".join(games), "--seeds",
                  eval_seeds_for(seed, self.scale.eval_episodes), "--episodes", 1, "--name", name, *extra)
        result = json.loads(out.read_text())
        return {g: result["games"][g]["scores"] for g in games}, {g: result["games"][g]["reference"] for g in games}

    def diagnosis(self, run: Path, store: Path, steps: int, game: str = HELDOUT) -> dict:
        """`sql diagnose` of the run's checkpoint at `steps` on `game`: its Q error against Q* over the visited
        pairs and its greedy return (kept beside the run's evaluations, read back when there)."""
        out = run / "eval" / (f"diagnose-step{steps}.json" if game == HELDOUT else f"diagnose-{game}.json")
        full = self.once(out.exists(), "diagnose", run / "checkpoints" / str(steps), "--game", game, "--data", store)
        if not out.exists():
            keep = {k: full[k] for k in ("max_abs_q_error", "mean_abs_q_error", "greedy_action_agreement",
                                         "greedy_return", "optimal_return", "q_reference", "n_step")}
            out.write_text(json.dumps(keep, indent=1) + "\n")
        return json.loads(out.read_text())

    def write_record(self, name: str, record: dict) -> None:
        from sqlcli_core import provenance

        stem = name.removeprefix("chain-")
        earlier = self.root / "results" / f"{stem}.json"  # wall time of the invocations before this one
        before = 0.0
        if earlier.exists():
            previous = json.loads(earlier.read_text())
            before = previous.get("seconds_total", previous["seconds"])
        seconds_total = round(before + time.time() - self.started, 1)
        record = {"experiment": name, "quick": self.quick, "scale": dataclasses.asdict(self.scale),
                  "data_policy": {"policy": POLICY, "epsilon": 0}, **record,
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                              "loadavg_at_end": list(os.getloadavg())},
                  "seconds": round(time.time() - self.started, 1), "seconds_total": seconds_total,
                  "commands": self.commands,
                  "versions": provenance.package_versions()}
        for path in [self.root / "results" / f"{stem}.json"] + ([self.records / f"{stem}.json"] if self.records else []):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(path)
            print(f"wrote {path} ({record['seconds']:.0f} s)", file=sys.stderr)
        print(MARKDOWN[name](record))


def methods(lab: ChainLab) -> None:
    s = lab.scale
    games = {}
    for game in s.games:
        store = lab.chain_store((game,))
        scores: dict[str, list] = {}
        reference = None
        for label, (flags, acting) in METHODS.items():
            train_name = f"{game}/{label.removesuffix('-sample')}"
            per_seed = []
            for seed in s.methods_seeds:
                run = lab.train(store, (game,), train_name, seed, flags, s.steps)
                eps, reference = lab.episodes(run, (game,), seed, f"eval-{label}", acting)
                per_seed.append(eps[game])
            scores[label] = per_seed
        games[game] = {"reference": reference[game], "data": lab.data_episodes(game), "methods": scores}
    lab.write_record("chain-methods", {"methods": list(METHODS), "seeds": list(s.methods_seeds), "games": games,
                                       "eval_seeds": {str(x): eval_seeds_for(x, s.eval_episodes)
                                                      for x in s.methods_seeds}})


OFFLINE = ("--transitions", "ROWS", "--batch-size", 32, "--lr", 1e-2, "--alpha", 0.05, "--n-step", 1,
           "--target-update-period", 20, "--final-seeds", 1, "--final-episodes", 1)
# Online: 4 emulators, one gradient step per agent step after online_min_replay (200) steps of epsilon-greedy play (epsilon 1 -> 0.01
# over 400 steps); the rest as offline (CQL weight 0.05 as the source's pre-training; the command's default is 0).
ONLINE = ("--num-envs", 4, "--update-period", 1, "--min-replay", "MIN", "--epsilon-decay-steps", 400,
          "--batch-size", 32, "--lr", 1e-2, "--alpha", 0.05, "--n-step", 1, "--target-update-period", 20,
          "--eval-every", 100_000, "--final-seeds", 1, "--final-episodes", 1)


def transfer(lab: ChainLab, mode: str = "offline") -> None:
    """Pre-train on the four variants, fine-tune on the held-out one (offline or online), pre-trained vs scratch;
    evaluate and diagnose each fine-tuning run at every step count of the grid (resuming it from one to the next)."""
    s = lab.scale
    store = lab.chain_store(FAMILY)
    flags = ("--method", "scaled-ql", "--alpha", 0.05, *LEARNER, *Q_FLAGS)
    grid = s.finetune_grid if mode == "offline" else s.online_grid
    settings = OFFLINE if mode == "offline" else ONLINE
    settings = tuple({"ROWS": s.finetune_transitions, "MIN": s.online_min_replay}.get(x, x) if isinstance(x, str)
                     else x for x in settings)
    pretrained_scores, curves, reference = [], {"pretrained": {}, "scratch": {}}, None
    values: dict[str, dict] = {"pretrained": {}, "scratch": {}}
    seeds = s.seeds if mode == "offline" else s.online_seeds
    for seed in seeds:
        source = lab.train(store, PRETRAIN_VARIANTS, "variants4", seed, flags, s.multi_steps)
        eps, _ = lab.episodes(source, PRETRAIN_VARIANTS, seed, "eval")
        pretrained_scores.append(eps)
        for init in ("pretrained", "scratch"):
            run = lab.root / ("finetune" if mode == "offline" else "online") / init / f"s{seed}"
            data = ("--data", store) if mode == "offline" else ()
            for steps in grid:
                done = (run / "eval" / f"diagnose-step{steps}.json").exists()
                lab.once(done, f"finetune-{mode}", "--from", source, "--init", init, "--game", HELDOUT, *data,
                         *settings, "--steps", steps, "--seed", seed, "--checkpoint-every", steps, "--log-every", steps,
                         "--run-dir", run)
                eps, ref = lab.episodes(run, (HELDOUT,), seed, f"step{steps}")
                curves[init].setdefault(str(steps), []).append(eps[HELDOUT])
                values[init].setdefault(str(steps), []).append(lab.diagnosis(run, store, steps))
                reference = ref[HELDOUT]
    lab.write_record("chain-transfer" if mode == "offline" else "chain-online", {
        "mode": mode, "pretrain_games": list(PRETRAIN_VARIANTS), "heldout": HELDOUT, "seeds": list(seeds),
        "grid": list(grid), "reference": reference, "data": lab.data_episodes(HELDOUT),
        "pretrained_scores": pretrained_scores, "curves": curves, "values": values, "q_bound": Q_BOUND,
        "finetune": {"transitions": s.finetune_transitions, "command": f"finetune-{mode}",
                     "settings": [str(x) for x in settings]}})


def online(lab: ChainLab) -> None:
    transfer(lab, "online")


def size(lab: ChainLab) -> None:
    s = lab.scale
    store = lab.chain_store(FAMILY)
    rows = []
    for width in s.widths:
        flags = ("--method", "scaled-ql", "--alpha", 0.05, "--arch", "dqn", "--width", width, "--projection-dim",
                 max(16, round(256 * width)), "--batch-size", 32, "--lr", 1e-2, "--v-min", -2, "--v-max", 2, *Q_FLAGS)
        per_seed, errors, references = [], [], None
        for seed in s.seeds:
            run = lab.train(store, FAMILY, f"size-w{width:g}", seed, flags, s.multi_steps)
            eps, references = lab.episodes(run, FAMILY, seed, "eval")
            per_seed.append(eps)
            errors.append({g: lab.diagnosis(run, store, s.multi_steps, g)["max_abs_q_error"] for g in FAMILY})
        params = json.loads((run / "run.json").read_text()).get("num_parameters")
        rows.append({"width": width, "projection_dim": max(16, round(256 * width)), "parameters": params,
                     "episodes": per_seed, "max_abs_q_error": errors})
    lab.write_record("chain-size", {"games": list(FAMILY), "seeds": list(s.seeds), "references": references,
                                    "sizes": rows, "q_bound": Q_BOUND})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("sql-evidence-chains"), help="working directory (data, runs)")
    p.add_argument("--quick", action="store_true", help="a tiny version that only proves the chain runs")
    p.add_argument("--records", type=Path, default=None,
                   help="where the records go (default: docs/results/chains/ at full scale, ROOT/results only with "
                        "--quick)")
    p.add_argument("--only", default="methods,transfer,size,online", help="experiments to run, in this order")
    args = p.parse_args()
    lab = ChainLab(args.root, args.quick, args.records)
    experiments = {"methods": methods, "transfer": transfer, "size": size, "online": online}
    for name in args.only.split(","):
        if name not in experiments:
            sys.exit(f"error: unknown experiment {name!r} (choose from {', '.join(experiments)})")
        lab.commands, lab.started = [], time.time()
        experiments[name](lab)


if __name__ == "__main__":
    main()

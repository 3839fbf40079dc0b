"""Shared parts of the laptop-scale evidence experiments (examples/evidence_*.py; results in docs/results.md).

The data is made here, so that the answer is known: every game is played by the same epsilon-noisy scripted
behaviour (`sql collect --policy pattern:1 --epsilon 0.5`: action 1 of the game's minimal set, FIRE in the
shooters and UP in Freeway, replaced by a uniform action half the time; `--scripted-action` picks another).
Its own returns are recorded in the collect logs; random play comes from `sql eval --policy random` under the same protocol and cap.

Every step is a real `sql` command, run in this process (typer's CliRunner; one JAX import for the whole
experiment instead of one per command), printed as the shell line it stands for and recorded in the result
JSON. The result JSON (the *record*: the raw episode scores, settings, commands, versions, machine) goes to
ROOT/results/ and, for the full scale or with `--records DIR`, to the repository's docs/results/, from which
`examples/results_tables.py` recomputes every table of docs/results.md (examples/evidence_tables.py).

Evaluation: each training seed's run is played on evaluation seeds of its own (`eval_seeds_for`), so no two
runs share an episode and the intervals (two-level bootstrap over runs and their episodes) hold the
evaluation noise. Each command is resumable and idempotent, so re-running an experiment continues where it stopped
and finished steps cost nothing: collect skips finished runs, pretrain continues up to --steps, evaluations
whose JSON exists are read back.
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# The experiments are many small matmuls next to emulators on a small CPU: BLAS threads only contend.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

RECORDS = Path(__file__).resolve().parent.parent / "docs" / "results"  # the committed records of docs/results.md
PRETRAIN_GAMES = ("Freeway", "Breakout", "DemonAttack", "Assault", "ChopperCommand", "Centipede")
HELDOUT_GAME = "SpaceInvaders"  # one of the paper's held-out games; never in PRETRAIN_GAMES
BEHAVIOUR_EPSILON = 0.5  # the behaviour: the scripted action, replaced by a uniform one this often
METHODS = ("scaled-ql", "c51", "bc", "dt")  # c51: Scaled QL at CQL weight 0, the control


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big each experiment is; FULL is what docs/results.md reports, QUICK only proves the chain runs."""

    games: tuple[str, ...]
    """Pre-training games (the held-out game is collected too, for offline fine-tuning)."""
    transitions: int
    """Agent steps collected per game (one run each), all kept in the replay buffer."""
    steps: int
    """Gradient steps of every pre-training run."""
    batch_size: int
    """Samples per gradient step."""
    seeds: tuple[int, ...]
    """Training seeds: every reported number is a mean over them with a 95% interval."""
    eval_episodes: int
    """Evaluation episodes per run and game: that many evaluation seeds of the run's own, one episode each."""
    eval_max_steps: int
    """Agent-step cap of every evaluation episode (Freeway's episodes are 2,048 steps)."""
    widths: tuple[float, ...]
    """Capacity sweep: the DQN torso's channel multiplier; the projection is 1024 * width units."""
    method_width: float
    """Width every method of the methods experiment uses (also one point of the capacity sweep)."""
    dt_width: float
    """Width multiplier of the dt-10m preset in the methods experiment."""
    dt_batch_size: int
    """The DT's batch: each of its samples is 4 steps x 39 tokens through the transformer, about 10x the compute
    of a DQN-torso sample at these widths, so it trains on fewer samples in the same number of steps."""
    online_steps: int
    """Agent steps of online fine-tuning (one gradient step per online_update_period after online_min_replay)."""
    online_update_period: int
    online_min_replay: int
    """Agent steps played before the first online update (also the epsilon decay's length)."""
    online_eval_every: int
    """Agent steps between the periodic evaluations of online fine-tuning."""
    offline_transitions: int
    """Rows of the held-out game's data that offline fine-tuning may use (the small data budget)."""
    offline_steps: int


FULL = Scale(games=PRETRAIN_GAMES, transitions=25_000, steps=6_000, batch_size=64, seeds=(0, 1, 2), eval_episodes=10,
             eval_max_steps=2_500, widths=(0.25, 0.5, 1.0), method_width=0.5, dt_width=0.125, dt_batch_size=16,
             online_steps=20_000, online_update_period=4, online_min_replay=1_600, online_eval_every=4_000,
             offline_transitions=5_000, offline_steps=2_000)
QUICK = Scale(games=("Breakout", "Assault"), transitions=1_200, steps=8, batch_size=8, seeds=(0,), eval_episodes=2,
              eval_max_steps=40, widths=(0.25, 0.5, 1.0), method_width=0.25, dt_width=0.0625, dt_batch_size=8,
              online_steps=32, online_update_period=4, online_min_replay=16, online_eval_every=16,
              offline_transitions=200, offline_steps=8)


def parse_args(description: str, *extra) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("sql-evidence"),
                   help="working directory: data, runs and results (shared by the three experiments)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny version that only proves the chain runs (seconds; its numbers mean nothing)")
    p.add_argument("--records", type=Path, default=None,
                   help="also write the result JSON here (default: the repository's docs/results/ for the full "
                        "scale, nowhere else for --quick)")
    p.add_argument("--scripted-action", type=int, default=1,
                   help="the behaviour's action (index in each game's minimal set): pattern:A with epsilon 0.5. "
                        "Default 1 (UP in Freeway, FIRE in the others); another one needs another --root")
    for add in extra:
        add(p)
    return p.parse_args()


class Lab:
    """The experiments' shared working directory, and the one way they run `sql` commands."""

    def __init__(self, root: Path, quick: bool, scripted_action: int = 1, records: Path | None = None):
        self.root = root.resolve()
        self.records = records if records is not None or quick else RECORDS
        self.quick = quick
        self.scripted_action = scripted_action
        self.scale = QUICK if quick else FULL
        self.commands: list[str] = []
        self.started = time.time()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- running commands -------------------------------------------------------------------------------------
    def sql(self, *args: object, refusal_ok: bool = False) -> dict:
        """Run `sql ARGS --json` in this process; the final JSON summary, or exit with the command's error
        (refusal_ok: a refusal, exit 2 or 3, comes back as {"refused": the error line, "exit_code": code})."""
        from typer.testing import CliRunner

        from sqlcli.main import app

        argv = [str(a) for a in args] + ["--json"]
        line = "sql " + shlex.join(argv)
        self.commands.append(line)
        print(f"$ {line}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = CliRunner().invoke(app, argv)
        if refusal_ok and result.exit_code in (2, 3):
            print(f"  refused: {result.stderr.strip()}", file=sys.stderr, flush=True)
            return {"refused": result.stderr.strip(), "exit_code": result.exit_code}
        if result.exit_code != 0:
            sys.exit(f"{line}\nfailed with exit code {result.exit_code}:\n{result.stderr or result.output}")
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        lines = [x for x in result.stdout.splitlines() if x.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    # -- the data ---------------------------------------------------------------------------------------------
    @property
    def store(self) -> Path:
        return self.root / "store.zarr"

    def make_data(self) -> Path:
        """Collect every game (pre-training games and the held-out one) with the behaviour, then shard."""
        s = self.scale
        games = ",".join((*s.games, HELDOUT_GAME))
        self.sql("collect", "--games", games, "--transitions", s.transitions, "--capacity", s.transitions,
                 "--policy", f"pattern:{self.scripted_action}", "--epsilon", BEHAVIOUR_EPSILON, "--seed", 0,
                 "--jobs", 2, "--out", self.root / "replay")
        self.sql("shard", self.root / "replay", self.store)
        return self.store

    def always_scripted(self) -> Path:
        """The behaviour without its noise (`pattern:A`, epsilon 0), played for reference, never trained on."""
        s = self.scale
        out = self.root / f"always-action-{self.scripted_action}"
        self.sql("collect", "--games", ",".join(s.games), "--transitions", s.transitions // 5,
                 "--capacity", s.transitions // 5, "--policy", f"pattern:{self.scripted_action}", "--epsilon", 0,
                 "--seed", 0, "--jobs", 2, "--out", out)
        return out

    def data_returns(self, game: str, replay: Path | None = None, run: str = "1") -> np.ndarray:
        """The behaviour's own returns: every complete episode of the collected run."""
        log = json.loads(((replay or self.root / "replay") / game / run / "collect_log.json").read_text())
        return np.asarray([e["return"] for e in log["episodes"] if e["terminal"]], dtype=float)

    # -- pre-training and evaluation --------------------------------------------------------------------------
    def pretrain(self, method: str, width: float, seed: int) -> Path:
        s = self.scale
        if method == "dt":
            width = s.dt_width
            arch = ("--arch", "dt-10m")
        else:
            arch = ("--arch", "dqn", "--projection-dim", round(1024 * width))
        run = self.root / "runs" / f"{method}-w{width:g}-s{seed}"
        self.sql("pretrain", "--method", method, "--data", self.store, "--games", ",".join(s.games), *arch,
                 "--width", width, "--batch-size", s.dt_batch_size if method == "dt" else s.batch_size,
                 "--steps", s.steps, "--target-update-period", max(1, s.steps // 6), "--seed", seed,
                 "--checkpoint-every", s.steps, "--log-every", max(1, s.steps // 12), "--run-dir", run)
        return run

    def evaluate(self, run: Path | None, games: Sequence[str] | None = None, name: str = "evidence",
                 seed: int | None = None, extra: Sequence[object] = ()) -> dict:
        """`sql eval` of a run's newest checkpoint (or random play when run is None) under the shared cap, on the
        evaluation seeds of training seed `seed` (random play: seeds 0..n-1). extra: more `sql eval` options."""
        s = self.scale
        games = ",".join(games or s.games)
        out = self.root / "random" / f"{name}.json" if run is None else run / "eval" / f"{name}.json"
        if not out.exists():
            policy = ("--policy", "random", "--out", out) if run is None else (run, "--name", name, *extra)
            self.sql("eval", *policy, "--games", games, "--seeds", eval_seeds_for(seed, s.eval_episodes),
                     "--episodes", 1, "--max-steps", s.eval_max_steps)
        return json.loads(out.read_text())

    # -- results ----------------------------------------------------------------------------------------------
    def write_result(self, name: str, result: Mapping) -> Path:
        from sqlcli_core import provenance

        out = self.root / "results" / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "experiment": name, "quick": self.quick, "scale": dataclasses.asdict(self.scale),
            "behaviour": {"policy": f"pattern:{self.scripted_action}", "epsilon": BEHAVIOUR_EPSILON},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "loadavg_at_end": list(os.getloadavg())},
            "seconds": round(time.time() - self.started, 1), "commands": self.commands,
            "versions": provenance.package_versions(), **result,
        }
        for path in [out] + ([self.records / f"{name}.json"] if self.records is not None else []):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(path)
            print(f"wrote {path} ({record['seconds']:.0f} s)", file=sys.stderr)
        return out


def eval_seeds_for(training_seed: int | None, episodes: int) -> str:
    """`sql eval --seeds` of a run: `episodes` seeds of its own, 1000 (seed + 1) onward (random play: 0 onward)."""
    base = 0 if training_seed is None else 1000 * (training_seed + 1)
    return f"{base}-{base + episodes - 1}"


def episode_scores(evaluation: Mapping) -> dict[str, list[float]]:
    """Every episode's score per game of one `sql eval` result (ordered by seed, episode)."""
    return {game: [float(x) for x in v["scores"]] for game, v in evaluation["games"].items()}


def error_bars(entries: Sequence[Mapping]) -> np.ndarray:
    """(2, N) distances below and above each mean for matplotlib's yerr (0 without an interval)."""
    return np.array([[v["mean"] - v["ci95"][0], v["ci95"][1] - v["mean"]] if v.get("ci95") else [0.0, 0.0]
                     for v in entries]).T


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}", file=sys.stderr)
    return path

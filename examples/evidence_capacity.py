"""Experiment 2 (docs/results.md): Scaled QL at three sizes of one family on the multi-game data, score against
parameters through `sql scale-report` (fitted exponent and its bootstrap interval).

    python examples/evidence_capacity.py [--root sql-evidence] [--quick]

The family is the DQN torso at channel widths 0.25, 0.5 and 1.0 with a projection of 1024 * width units
(so the shared network grows about 14x; the per-game heads grow with the projection). The width-0.5 runs
are the Scaled QL runs of the methods experiment, shared through the same ROOT. The paper's claim: score
grows with size for Scaled QL. Writes ROOT/results/capacity.json, ROOT/results/capacity/scale_report.* and
prints a Markdown table.
"""

from __future__ import annotations

import json

from evidence_common import Lab, episode_scores, parse_args
from evidence_tables import capacity_markdown


def run(lab: Lab) -> dict:
    """Train, evaluate and fit; the record holds every run's episode scores (docs/results/capacity.json)."""
    s = lab.scale
    lab.make_data()
    runs, rows = [], []
    for width in s.widths:
        per_seed = []
        for seed in s.seeds:
            run_dir = lab.pretrain("scaled-ql", width, seed)
            per_seed.append(episode_scores(lab.evaluate(run_dir, seed=seed)))
            runs.append(run_dir)
        summary = json.loads((run_dir / "run.json").read_text())
        counts = summary.get("parameter_counts") or {}
        rows.append({"width": width, "projection_dim": round(1024 * width),
                     "parameters": int(sum(counts.values())) if counts else None,
                     "shared_parameters": int(sum(v for k, v in counts.items() if k != "heads")) if counts else None,
                     "episodes": per_seed})
    out = lab.root / "results" / "capacity"
    report = {}
    for params in ("total", "shared"):
        report[params] = lab.sql("scale-report", *runs, "--eval-name", "evidence", "--params", params,
                                 "--metric", "iqm", "--out", out / params, refusal_ok=True)
    return {"games": list(s.games), "sizes": rows, "scale_report": report, "runs": [str(r) for r in runs]}


def markdown(result: dict) -> str:
    return capacity_markdown(result)


def main() -> None:
    args = parse_args(__doc__)
    lab = Lab(args.root, args.quick, args.scripted_action, args.records)
    result = run(lab)
    lab.write_result("capacity", result)
    print(markdown(result))


if __name__ == "__main__":
    main()

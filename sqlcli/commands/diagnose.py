"""`sql diagnose`: a run's newest checkpoint against the exact answers of a known-answer game."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from sqlcli.console import JSON_OPTION, console, emit_summary
from sqlcli.errors import handles_errors, require_path

EXAMPLE = "Example: sql diagnose runs/chain --game Chain-fall-12 --json"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


@handles_errors
def diagnose(
    run: Path = typer.Argument(..., help="Run directory of `sql pretrain` (its newest checkpoint) or RUN/checkpoints/STEP."),
    game: str = typer.Option(..., "--game", help="A known-answer game of the run (`sql games diagnostic`), e.g. Chain-fall-12."),
    data: str = typer.Option(None, "--data", help="Replay store of the run's data, for the visited states, the data's "
                             "return and its n-step fixed point. Default: the store run.json names."),
    gamma: float = typer.Option(None, "--gamma", help="Discount the exact answers are computed for. Default: the run's own."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Compare a trained network with Q* (value iteration), the data's n-step fixed point and the optimal return."""
    from sqlcli_core.analysis.diagnose import diagnose as run_diagnosis
    from sqlcli_core.analysis.diagnose import summary_line
    from sqlcli_core.runs.policy import load_policy

    require_path(run, "run directory", hint="pass a run directory written by `sql pretrain`")
    result = run_diagnosis(load_policy(run), game, data, gamma)
    table = Table(title=f"{result['game']}: {result['method']} step {result['run_step']}, gamma {result['gamma']}, "
                        f"n-step {result['n_step']}")
    for col in ("position", "Q* (advance, other)", "Q-hat", "greedy", "optimal", "data counts"):
        table.add_column(col, justify="right")
    for s in result["states"]:
        values = s.get("q_hat") or s.get("logits")
        table.add_row(str(s["position"]), ", ".join(f"{v:.3f}" for v in s["q_star"]),
                      "-" if values is None else ", ".join(f"{v:.3f}" for v in values),
                      str(s.get("greedy", "-")), ",".join(map(str, s["optimal_actions"])),
                      ", ".join(map(str, s["data_counts"])))
    console.print(table)
    fixed = result.get("data_fixed_point")
    console.print(f"vs Q*: max |Q-hat - Q*| {_fmt(result['max_abs_q_error'])}, mean {_fmt(result['mean_abs_q_error'])} "
                  f"over the {result['visited_pairs']} (position, action) pairs the data visits")
    if fixed:
        console.print(f"vs the data's {fixed['n_step']}-step fixed point: max {_fmt(fixed['max_abs_q_error'])}, "
                      f"mean {_fmt(fixed['mean_abs_q_error'])} (it differs from Q* by up to "
                      f"{_fmt(fixed['max_abs_gap_to_q_star'])})")
    console.print(f"greedy action optimal in {_fmt(result['greedy_action_agreement'])} of visited states; "
                  f"return {result['greedy_return']:.2f} (optimal {result['optimal_return']:.2f}, data "
                  f"{_fmt(result['data_return'])}, random {result['random_return']:.4f})")
    console.print(f"learner check: {summary_line(result)}")
    emit_summary(result, as_json)

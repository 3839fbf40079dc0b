"""`sql games`: the game catalog (sets, action-set sizes, reference scores)."""

from __future__ import annotations

import typer
from rich.table import Table

from sqlcli.console import JSON_OPTION, emit_summary, result_console
from sqlcli.errors import handles_errors
from sqlcli_core.games import catalog

EXAMPLE = "Example: sql games atari40 | grep Breakout"

@handles_errors
def games(
    spec: str = typer.Argument(
        "atari40", help="Game set (atari40, atari41, heldout5, dqn-replay60, atari57, online-variants, "
        "diagnostic = the known-answer synthetic games) "
        "or comma-separated game names in any case or as ALE ids."),
    variants: bool = typer.Option(False, "--variants", help="Also list each game's ALE modes and difficulties."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List games with their minimal action-set size and random/human reference scores.

    The table goes to stdout (to stderr with --json): `sql games atari40 | grep Breakout`."""
    resolved = catalog.resolve_games(spec)
    rows = []
    any_synthetic = any(g.synthetic for g in resolved)
    for g in resolved:
        ref = g.reference
        row = {
            "game": g.name, "ale_id": None if g.synthetic else g.gym_id, "rom": None if g.synthetic else g.rom,
            "num_actions": g.num_actions, "random": ref[0] if ref else None,
            "human": ref[1] if ref and not g.synthetic else None,
        }
        if any_synthetic:  # synthetic games: random play's expected return and the exact optimum
            row["optimal"] = ref[1] if g.synthetic else None
        if variants:
            row["modes"] = list(catalog.available_modes(g.name))
            row["difficulties"] = list(catalog.available_difficulties(g.name))
        rows.append(row)
    table = Table(title=f"{spec}: {len(rows)} games, {sum(r['num_actions'] for r in rows)} actions")
    for col in rows[0]:
        table.add_column(col, justify="right" if col in ("num_actions", "random", "human", "optimal") else "left")
    for g, r in zip(resolved, rows):
        # exact values such as 0.5**12 of a synthetic game: 4 significant digits; Atari's scores as published
        table.add_row(*("-" if v is None else f"{v:.4g}" if g.synthetic and isinstance(v, float) else str(v)
                        for v in r.values()))
    out = result_console(as_json)
    out.print(table)
    out.print(f"reference scores: {catalog.REFERENCE_SCORE_SOURCE}", style="dim")
    if any_synthetic:
        out.print("synthetic games: random = random play's expected return, optimal = the exact optimal return "
                  "(docs/known-answer.md)", style="dim")
    emit_summary({"games": rows, "reference_source": catalog.REFERENCE_SCORE_SOURCE}, as_json)

"""Entry point of the `sql` command: registers every subcommand from sqlcli.commands."""

from __future__ import annotations

import os

# ALE prints its banner on stdout and JAX warns about missing accelerators; neither belongs in a
# script's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer

from sqlcli_core import __version__
from sqlcli.commands import games
from sqlcli.commands.collect import collect
from sqlcli.commands.fetch_data import fetch_data
from sqlcli.commands.shard import shard

app = typer.Typer(
    name="sql",
    help="Scaled Q-Learning: pre-train one value network on offline data from many Atari games, "
    "then transfer it to new games.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sql {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


app.command("games")(games.games)
app.command("collect")(collect)
app.command("fetch-data")(fetch_data)
app.command("shard")(shard)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Entry point of the `sql` command: registers every subcommand from sqlcli.commands."""

from __future__ import annotations

import os

# ALE prints its banner on stdout and JAX warns about missing accelerators; neither belongs in a
# script's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The 84x84 frame resize is a pair of small matrix products: multi-threaded OpenBLAS makes it 10-30x
# slower on a busy machine, and nothing else here needs BLAS threads (XLA has its own pool).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer

from sqlcli_core import __version__
from sqlcli.commands import games
from sqlcli.commands.shard import shard
from sqlcli.commands.pretrain import pretrain
from sqlcli.commands.collect import collect
from sqlcli.commands.fetch_data import fetch_data
from sqlcli.commands.eval import eval_command
from sqlcli.commands.finetune_online import finetune_online
from sqlcli.commands.finetune_offline import finetune_offline

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
app.command("shard")(shard)
app.command("pretrain")(pretrain)
app.command("collect")(collect)
app.command("fetch-data")(fetch_data)
app.command("eval")(eval_command)
app.command("finetune-online")(finetune_online)
app.command("finetune-offline")(finetune_offline)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

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

from sqlcli.commands import (
    collect,
    demo,
    diagnose,
    eval,
    fetch_data,
    finetune_offline,
    finetune_online,
    games,
    plot,
    pretrain,
    scale_report,
    shard,
)
from sqlcli.output import OneLineErrors, exit_quietly_after_errors, quiet_third_party
from sqlcli_core import __version__

app = typer.Typer(
    name="sql",
    help="Scaled Q-Learning: pre-train one value network on offline data from many Atari games, "
    "then transfer it to new games.",
    cls=OneLineErrors,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sql {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show the log lines and warnings of the libraries "
                                 "underneath (absl, orbax, jax), hidden by default."),
) -> None:
    quiet_third_party(verbose)


# In the order of the data flow, which is the order `sql --help` lists them; each with one example.
for name, module, function in (
    ("fetch-data", fetch_data, fetch_data.fetch_data),
    ("collect", collect, collect.collect),
    ("shard", shard, shard.shard),
    ("pretrain", pretrain, pretrain.pretrain),
    ("eval", eval, eval.eval_command),
    ("finetune-offline", finetune_offline, finetune_offline.finetune_offline),
    ("finetune-online", finetune_online, finetune_online.finetune_online),
    ("plot", plot, plot.plot),
    ("scale-report", scale_report, scale_report.scale_report),
    ("diagnose", diagnose, diagnose.diagnose),
    ("demo", demo, demo.demo),
    ("games", games, games.games),
):
    app.command(name, epilog=module.EXAMPLE)(function)


def main() -> None:
    exit_quietly_after_errors()
    app()


if __name__ == "__main__":
    main()

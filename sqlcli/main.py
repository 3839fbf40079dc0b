"""Entry point of the `sql` command: registers every subcommand from sqlcli.commands."""

from __future__ import annotations

import os

# ALE prints its banner on stdout and JAX warns about missing accelerators; neither belongs in a
# script's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The 84x84 frame resize is a pair of small matrix products: multi-threaded OpenBLAS makes it 10-30x
# slower on a busy machine, and nothing else here needs BLAS threads (XLA has its own pool).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import ast
import importlib
import importlib.util

import typer
from typer.core import TyperCommand

from sqlcli.console import quiet_third_party
from sqlcli.errors import OneLineErrors, exit_quietly_after_errors, plain_help
from sqlcli_core import __version__

# In the order of the data flow, which is the order `sql --help` lists them: name -> (module in
# sqlcli.commands, command function). A command's module is imported only when that command runs or shows its
# own help, so that `sql --help`, `sql --version` and every command's `--help` never import JAX.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-data": ("fetch_data", "fetch_data"),
    "collect": ("collect", "collect"),
    "shard": ("shard", "shard"),
    "pretrain": ("pretrain", "pretrain"),
    "eval": ("eval", "eval_command"),
    "finetune-offline": ("finetune_offline", "finetune_offline"),
    "finetune-online": ("finetune_online", "finetune_online"),
    "plot": ("plot", "plot"),
    "scale-report": ("scale_report", "scale_report"),
    "diagnose": ("diagnose", "diagnose"),
    "demo": ("demo", "demo"),
    "games": ("games", "games"),
    "env": ("env", "env"),
}


def _docstring(module: str, function: str) -> str:
    """The command function's docstring, read from its source without importing it (the command list)."""
    origin = importlib.util.find_spec(f"sqlcli.commands.{module}").origin
    tree = ast.parse(open(origin, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    return ""


def load_command(name: str) -> typer.models.CommandInfo | TyperCommand:
    """The click command `name`, its module imported (with its EXAMPLE as the help's epilog)."""
    module_name, function = COMMANDS[name]
    module = importlib.import_module(f"sqlcli.commands.{module_name}")
    single = typer.Typer(pretty_exceptions_enable=False)
    single.command(name, epilog=module.EXAMPLE)(getattr(module, function))
    command = typer.main.get_command(single)
    command.name = name
    plain_help(command)
    return command


class LazyCommands(OneLineErrors):
    """The `sql` group with its commands loaded on use: the list (`sql --help`) shows each command's docstring
    read from its source; running a command, or its `--help`, imports that command's module only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, (module, function) in COMMANDS.items():  # listing stand-ins, replaced when resolved
            self.commands[name] = TyperCommand(name, help=_docstring(module, function))

    def resolve_command(self, ctx, args):
        if args and args[0] in COMMANDS:
            return args[0], load_command(args[0]), args[1:]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="sql",
    help="Scaled Q-Learning: pre-train one value network on offline data from many Atari games, "
    "then transfer it to new games.",
    cls=LazyCommands,
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


def main() -> None:
    exit_quietly_after_errors()
    app()


if __name__ == "__main__":
    main()

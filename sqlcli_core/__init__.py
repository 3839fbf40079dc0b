"""sqlcli_core: the Scaled Q-Learning library behind the `sql` command.

Everything the CLI does is importable from here; the CLI only parses options and prints.
"""

__version__ = "0.1.0"

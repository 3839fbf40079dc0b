"""The `sql` command line. Parsing, progress and tables only: all ML logic lives in sqlcli_core."""

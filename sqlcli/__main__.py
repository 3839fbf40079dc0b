"""`python -m sqlcli ...` runs the `sql` command (for environments without the console script)."""

from sqlcli.main import main

if __name__ == "__main__":
    main()

"""Recompute the tables of docs/results.md from the committed records in docs/results/ (and check the page).

    python examples/results_tables.py                 # print every table the records give
    python examples/results_tables.py --check         # exit 1 when a table of the page differs from its records
    python examples/results_tables.py --write         # rewrite the page's tables from the records

A table on the page is generated when it sits between `<!-- table: RECORD -->` and `<!-- /table -->`, where
RECORD is a record's path inside docs/results/ without `.json` (e.g. `quick/methods`). The statistics are those
of examples/evidence_tables.py (the code `sql eval` uses for its aggregates). Every record a marker names must
exist; every record must be shown by some marker (nothing computed and left off the page).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from evidence_tables import MARKDOWN  # beside this script (its folder is on the path when it runs)

REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO / "docs" / "results"
PAGE = REPO / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w/.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def record_names(records: Path = RECORDS) -> list[str]:
    return sorted(str(p.relative_to(records).with_suffix("")) for p in records.rglob("*.json"))


def table_for(name: str, records: Path = RECORDS) -> str:
    """The Markdown of record `name` (its experiment, from its `experiment` field, picks the table)."""
    path = records / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"docs/results.md names record {name}, but {path} does not exist")
    record = json.loads(path.read_text())
    return MARKDOWN[record["experiment"]](record).strip() + "\n"


def page_tables(page: Path = PAGE) -> dict[str, str]:
    """{record name: the table body on the page}."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(page.read_text())}


def differences(page: Path = PAGE, records: Path = RECORDS) -> list[str]:
    """What differs between the page's generated tables and the records (empty: they match)."""
    shown = page_tables(page)
    problems = [f"record {n} is on no table of {page.name}" for n in record_names(records) if n not in shown]
    for name, body in shown.items():
        want = table_for(name, records)
        if body != want:
            problems.append(f"table {name} differs from its record:\n--- page\n{body}--- record\n{want}")
    return problems


def rewrite(page: Path = PAGE, records: Path = RECORDS) -> None:
    text = BLOCK.sub(lambda m: m.group(1) + table_for(m["name"], records) + m.group(4), page.read_text())
    page.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare the page's tables with the records")
    p.add_argument("--write", action="store_true", help="rewrite the page's tables from the records")
    args = p.parse_args()
    if args.write:
        rewrite()
    if args.check:
        problems = differences()
        for problem in problems:
            print(problem, file=sys.stderr)
        sys.exit(1 if problems else 0)
    if not args.write:
        for name in record_names():
            print(f"<!-- table: {name} -->\n{table_for(name)}<!-- /table -->\n")


if __name__ == "__main__":
    main()

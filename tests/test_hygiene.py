"""Repository rules that no single module owns: what the library imports, what the repository points to,
and that the docs' game table is the catalog's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sqlcli_core.games import catalog

ROOT = Path(__file__).resolve().parents[1]

# Imports sqlcli_core and every submodule in a fresh interpreter, then reports which of the watched
# packages ended up in sys.modules.
_PROBE = """
import importlib, json, pkgutil, sys
import sqlcli_core
names = ["sqlcli_core"] + [m.name for m in pkgutil.walk_packages(sqlcli_core.__path__, "sqlcli_core.")]
for name in names:
    importlib.import_module(name)
watched = ("typer", "rich", "click")  # tensorflow_probability: tests/test_losses.py
print(json.dumps({"modules": names, "loaded": [w for w in watched if w in sys.modules]}))
"""


@pytest.fixture(scope="module")
def library_imports() -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_imports_every_library_module(library_imports):
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "sqlcli_core").rglob("*.py")}
    on_disk = {n.removesuffix(".__init__") for n in on_disk}
    assert set(library_imports["modules"]) == on_disk


def test_library_never_imports_the_cli_packages(library_imports):
    for cli_package in ("typer", "rich", "click"):
        assert cli_package not in library_imports["loaded"], f"importing sqlcli_core imports {cli_package}"


def _repository_text_files():
    skip_dirs = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", ".venv", "venv"}
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in skip_dirs or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        try:
            yield rel, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (PNG figures)


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"\.\./" + "shared|/work/" + "shared")  # split so this file does not match itself
    hits = [f"{rel}:{n}" for rel, text in _repository_text_files()
            for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert hits == [], "references to a directory users never have: " + ", ".join(hits)


def test_helpers_are_imported_as_packages_not_through_sys_path():
    edits = [f"{rel}:{n}" for rel, text in _repository_text_files() if rel.suffix == ".py"
             for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*sys\.path\.(insert|append)\(", line)]
    assert edits == []


def _docs_game_table() -> dict[str, tuple[int, float | None, float | None]]:
    text = (ROOT / "docs" / "games.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():
            rows[cells[0]] = (int(cells[1]), *(None if c == "-" else float(c) for c in cells[2:4]))
    return rows


def test_docs_game_table_is_the_catalog():
    table = _docs_game_table()
    assert set(table) == set(catalog.KNOWN_GAMES)
    for name, (actions, random, human) in table.items():
        assert actions == len(catalog.minimal_action_set(name)), name
        assert (random, human) == catalog.REFERENCE_SCORES.get(name, (None, None)), name
    assert sum(table[name][0] for name in catalog.ATARI40) == 501

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


# ------------------------------------------------------------------------------------------- layers
# The packages from the bottom up: a module imports only from its own layer or the ones below it (at the
# top of a file or inside a function alike), and no chain of imports leads back to where it started.
LAYERS = (
    ("base", ("sqlcli_core", "sqlcli_core.errors", "sqlcli_core.atomic", "sqlcli_core.provenance", "sqlcli_core.accelerators",
              "sqlcli_core.settings", "sqlcli_core.ranges", "sqlcli_core.locks")),
    ("games", ("sqlcli_core.games", "sqlcli_core.synthetic")),  # synthetic: the known-answer games
    ("data", ("sqlcli_core.data",)),
    ("networks", ("sqlcli_core.networks",)),
    ("methods", ("sqlcli_core.methods",)),
    ("acting", ("sqlcli_core.acting", "sqlcli_core.evaluation")),
    ("runs", ("sqlcli_core.runs",)),
    ("training", ("sqlcli_core.training",)),
    ("analysis", ("sqlcli_core.analysis",)),
    ("cli", ("sqlcli",)),
)


def _module_files() -> dict[str, Path]:
    files = {}
    for package in ("sqlcli", "sqlcli_core"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            files[name] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (a name imported from a package that is a
    submodule counts as that submodule)."""
    import ast

    files = _module_files()
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix that names `module`'s package."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "sqlcli_core" and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer: add its package to LAYERS"
    return best


def find_climbs(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
                  for module, targets in graph.items() for target in targets if layer_of(target) > layer_of(module))


def find_circles(graph: dict[str, set[str]]) -> list[str]:
    """Each import circle found by a depth-first walk, as 'a -> b -> a'."""
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target):], module, target] if target in path
                                           else [module, target]))
            elif target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return circles


def test_no_import_climbs_to_a_higher_layer():
    assert find_climbs(import_graph()) == []


def test_no_import_circle():
    assert find_circles(import_graph()) == []


def test_layer_checks_see_a_climb_and_a_circle():
    """The checks can fail: the data layer importing acting is a climb (collect once did, via training), and
    the old checkpoint <-> lifecycle pair is a circle."""
    graph = import_graph()
    assert "sqlcli_core.acting.collect_runs" in graph["sqlcli_core.acting.collect"]  # the graph sees real edges
    climbing = {**graph, "sqlcli_core.data.sampler": graph["sqlcli_core.data.sampler"] | {"sqlcli_core.acting.collect"}}
    assert find_climbs(climbing) == ["sqlcli_core.data.sampler (data) -> sqlcli_core.acting.collect (acting)"]
    circular = {"a.checkpoint": {"a.lifecycle"}, "a.lifecycle": {"a.metrics", "a.checkpoint"}, "a.metrics": set()}
    assert find_circles(circular) == ["a.checkpoint -> a.lifecycle -> a.checkpoint"]
    assert layer_of("sqlcli_core.errors") == 0 and layer_of("sqlcli_core.games.catalog") == 1
    assert layer_of("sqlcli_core.runs.policy") < layer_of("sqlcli_core.training.update") < layer_of("sqlcli.main")


def test_no_library_module_over_500_lines():
    long = {name: n for name, path in _module_files().items() if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}

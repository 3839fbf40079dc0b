"""What a user gets from the repository and the package: links that resolve where the file is read, no claim of
a published package, no placeholder URLs in the metadata, accelerator extras, and an sdist that carries what
its tests read (built for real with `python -m build --sdist`, then two of its tests run from the unpacked copy)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold commands, not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return [a or b for a, b in LINK.findall(text)]


def test_markdown_links_resolve_inside_the_repository():
    checked, broken = 0, []
    for page in markdown_files():
        for target in links(page):
            if re.match(r"[a-z]+:", target):  # a web address: only the real ones the pages cite
                assert "scaled-ql/sql" not in target and "github.com/scaled-ql" not in target, (page.name, target)
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            checked += 1
            if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []
    assert checked > 60  # the README's table and the docs' cross references were all seen


def test_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [a](missing.md), [b](page.md#nothing), `[c](not-a-link.md)` and [d](page.md#title)\n# Title\n")
    assert links(page) == ["missing.md", "page.md#nothing", "page.md#title"]
    assert "nothing" not in heading_anchors(page) and "title" in heading_anchors(page)


def test_readme_claims_no_published_package_and_names_the_install_page():
    readme = (ROOT / "README.md").read_text()
    assert "pip install scaled-ql`" not in readme and "released package" not in readme
    assert "no published package" in readme and "(docs/install.md)" in readme


def test_package_metadata_has_no_placeholder_urls_and_has_accelerator_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "urls" not in project  # none rather than addresses that do not exist
    extras = project["optional-dependencies"]
    assert any(r.startswith("jax[cuda12]") for r in extras["cuda12"])
    assert any(r.startswith("jax[tpu]") for r in extras["tpu"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the `build` package (pip install build)")
def test_sdist_carries_docs_and_examples_and_their_tests_pass_from_it(tmp_path):
    # From a copy without build leftovers: setuptools would otherwise reuse an old *.egg-info/SOURCES.txt list.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist",
                                                                "__pycache__", ".*cache"))
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and re.search(r"Could not find a version|Network is unreachable|Max retries", proc.stdout
                                          + proc.stderr):
        pytest.skip("building in an isolated environment needs setuptools from PyPI, which is unreachable")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sdist,) = (tmp_path / "dist").glob("scaled_ql-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (top,) = (tmp_path / "unpacked").iterdir()
    shipped = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    tracked = subprocess.run(["git", "ls-files", "docs", "examples", "tests"], cwd=ROOT, capture_output=True,
                             text=True)
    wanted = set(tracked.stdout.split()) if tracked.returncode == 0 else \
        {p.relative_to(ROOT).as_posix() for d in ("docs", "examples") for p in (ROOT / d).rglob("*") if p.is_file()}
    assert {"docs/install.md", "docs/games.md", "examples/atari40_pretrain.sh", "LICENSE", "CHANGELOG.md"} <= shipped
    assert wanted - shipped == set()
    assert not any("__pycache__" in name for name in shipped)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_hygiene.py::test_docs_game_table_is_the_catalog",
                          "tests/test_examples.py::test_there_are_examples"],
                         cwd=top, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "2 passed" in run.stdout

"""Refusals that leave nothing behind and say the right thing (issue 25's papercuts)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.atomic import make_directories, writable_directory
from sqlcli_core.errors import SqlError, UsageError
from sqlcli_core.locks import directory_lock, writer_lock

runner = CliRunner()
TOO_LONG = "x" * 300  # over the 255 bytes a file name may have on Linux file systems


def test_a_refused_over_long_name_leaves_no_empty_parent_folder(tmp_path):
    with pytest.raises(OSError):
        make_directories(tmp_path / "new" / "deeper" / TOO_LONG)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SqlError, match="too long"):
        writable_directory(tmp_path / "new" / TOO_LONG, "--out")
    with pytest.raises(SqlError, match="too long"):
        with writer_lock(tmp_path / "new" / TOO_LONG / ".lock", what="x", hint="y"):
            pass
    with pytest.raises(SqlError, match="too long"):
        with writer_lock(tmp_path / "new" / f".{TOO_LONG}.lock", what="x", hint="y"):  # eval's lock beside its --out
            pass
    assert list(tmp_path.iterdir()) == []
    assert make_directories(tmp_path / "a" / "b") == [tmp_path / "a", tmp_path / "a" / "b"]
    assert make_directories(tmp_path / "a" / "b") == []


def test_a_run_dir_that_is_a_file_is_named_as_such(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(UsageError, match=r"^the run directory .*afile is a file, not a directory"):
        with directory_lock(afile, what=f"the run directory {afile}", hint="h"):
            pass
    assert afile.read_text() == "mine"


def test_demo_refuses_a_pattern_outside_a_games_actions_before_creating_its_folder(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--policy", "pattern:9"])
    assert result.exit_code == 2
    assert result.output.startswith("error: policy pattern uses action 9 but Freeway has 3 actions")
    assert not out.exists()


def test_finetune_online_help_counts_agent_steps():
    def help_of(command: str, flag: str) -> str:
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "220"}).output
        line = next(ln for ln in text.splitlines() if f" {flag} " in ln)
        return " ".join(line.split())

    assert "Agent steps (transitions over all environments). Default: 20,000" in help_of("finetune-online", "--steps")
    assert "Agent steps between checkpoints" in help_of("finetune-online", "--checkpoint-every")
    assert "Gradient steps. Default: 50,000" in help_of("finetune-offline", "--steps")

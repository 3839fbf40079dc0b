"""The `sql` command itself, run as users run it (real subprocesses): pipeable tables, one-line parse errors,
one exit code for a missing path, `python -m sqlcli`, shell completion, and no third-party noise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlcli_core import __version__
from sqlcli_core.data import store as st
from sqlcli_core.games import catalog
from tests.replay_fixture import write_run
from tests.tensorboard_events import read_tensorboard_scalars

BOX_DRAWING = set("╭╮╰╯│─┃━")


def sql(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlcli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=400, env=env, **kw)


def sql_all(cases: list[list]) -> list[subprocess.CompletedProcess]:
    """Run several `sql` commands at once (each pays the interpreter start-up)."""
    procs = [subprocess.Popen([sys.executable, "-m", "sqlcli.main", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in cases]
    out = []
    for args, p in zip(cases, procs):
        stdout, stderr = p.communicate(timeout=400)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def test_games_table_goes_to_stdout_whole_when_piped():
    proc = sql("games", "atari40")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("│ ").split("│")]
                                          for line in proc.stdout.splitlines()) if cells[0] in catalog.ATARI40}
    assert set(rows) == set(catalog.ATARI40)
    for name, cells in rows.items():  # every column at full width, no cell cut short
        random, human = catalog.REFERENCE_SCORES.get(name, (None, None))
        assert cells == [name, f"ALE/{name}-v5", catalog.rom_id(name), str(len(catalog.minimal_action_set(name))),
                         "-" if random is None else str(random), "-" if human is None else str(human)]
    assert "…" not in proc.stdout
    assert f"reference scores: {catalog.REFERENCE_SCORE_SOURCE}" in proc.stdout.splitlines()


def test_games_through_a_shell_pipe():
    proc = subprocess.run(f"{sys.executable} -m sqlcli.main games atari40 | grep Breakout", shell=True,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1 and "ALE/Breakout-v5" in proc.stdout


def test_games_json_keeps_stdout_for_the_summary():
    proc = sql("games", "heldout5", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # the whole of stdout is the one object; the table went to stderr
    assert [g["game"] for g in summary["games"]] == list(catalog.HELDOUT5)
    assert "MsPacman" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["shard"], "error: missing argument 'SRC' (see 'python -m sqlcli.main shard --help')"),
    (["shard", "a", "b", "--jobs", "x"], "error: invalid value for '--jobs': "),
    (["shard", "a", "b", "--jobs", "0"], "error: invalid value for '--jobs': "),
    (["shard", "a", "b", "--bogus"], "error: no such option: --bogus"),
    (["nope"], "error: no such command 'nope' (see 'python -m sqlcli.main --help')"),
    (["eval", "--protocol"], "error: option '--protocol' requires an argument"),
])
def test_parse_errors_are_one_line_and_exit_2(args, message):
    proc = sql(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(message), proc.stderr
    assert not BOX_DRAWING & set(proc.stderr)


def test_sql_alone_prints_the_help():
    proc = sql()
    assert proc.returncode == 2 and "Commands" in proc.stdout and "pretrain" in proc.stdout


def test_a_missing_path_is_exit_2_in_every_command(tmp_path):
    nope = tmp_path / "nope"
    cases = [
        (["shard", nope, tmp_path / "dst"], "does not exist"),
        (["shard", "--verify", nope], f"store {nope} does not exist"),
        (["pretrain", "--data", nope, "--run-dir", tmp_path / "run"], f"data store {nope} does not exist"),
        (["pretrain", "--config", tmp_path / "nope.toml", "--run-dir", tmp_path / "run"], "does not exist"),
        (["eval", nope], f"run {nope} does not exist"),
        (["finetune-offline", "--from", nope, "--game", "Alien", "--data", tmp_path, "--run-dir", tmp_path / "ft"],
         f"pre-trained run {nope} does not exist"),
        (["finetune-offline", "--game", "Alien", "--init", "scratch", "--data", nope, "--run-dir", tmp_path / "ft"],
         f"data store {nope} does not exist"),
        (["finetune-online", "--from", nope, "--game", "breakout", "--run-dir", tmp_path / "fo"],
         f"pre-trained run {nope} does not exist"),
        (["collect", "--games", "pong", "--policy", f"checkpoint:{nope}", "--out", tmp_path / "c"],
         f"policy run {nope} does not exist"),
        (["fetch-data", "--games", "pong", "--runs", "1", "--checkpoints", "0", "--from", nope, "--out",
          tmp_path / "f"], "no such directory"),
        (["scale-report", nope, "--out", tmp_path / "rep"], "not a directory"),
    ]
    for (args, message), proc in zip(cases, sql_all([args for args, _ in cases])):
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was created


def test_python_m_sqlcli():
    proc = subprocess.run([sys.executable, "-m", "sqlcli", "--version"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0 and proc.stdout == f"sql {__version__}\n"


def test_shell_completion():
    # Named explicitly (`_SQL_COMPLETE=source_bash`, what `--show-completion` prints from a bash prompt): the
    # flag itself detects the parent shell, which a test run from a scheduler or CI runner may not have.
    def complete(**env):
        return subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'sql'; from sqlcli.main import main; main()"],
                              capture_output=True, text=True, timeout=400, env={**os.environ, **env})

    script = complete(_SQL_COMPLETE="source_bash")
    assert script.returncode == 0 and "complete -o default -F" in script.stdout, script.stderr
    # What the installed script's completion asks for: `sql fin<TAB>` (click's protocol, prog name `sql`).
    proc = complete(_SQL_COMPLETE="complete_bash", COMP_WORDS="sql fin", COMP_CWORD="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["finetune-offline", "finetune-online"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    write_run(src, "Pong", 1, capacity=150, total=300, num_actions=6, seed=5, mean_episode=25)
    store = tmp_path_factory.mktemp("store") / "store"
    st.shard(src, store, config=st.ShardConfig(frame_chunk=32, scalar_chunk=128))
    run = tmp_path_factory.mktemp("runs") / "run"
    proc = sql("pretrain", "--data", store, "--games", "pong", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11",
               "--batch-size", "8", "--steps", "2", "--checkpoint-every", "2", "--log-every", "2",
               "--cache-bytes", "8000000", "--run-dir", run)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return run


@pytest.mark.slow
def test_no_third_party_warnings_unless_verbose(tiny_run, tmp_path):
    args = ["eval", tiny_run, "--seeds", "0", "--episodes", "1", "--max-steps", "20"]
    quiet = sql(*args, "--out", tmp_path / "quiet.json")
    assert quiet.returncode == 0, quiet.stderr
    assert "WARNING" not in quiet.stderr and "absl" not in quiet.stderr, quiet.stderr
    verbose = sql("--verbose", *args, "--out", tmp_path / "verbose.json")
    assert verbose.returncode == 0, verbose.stderr
    assert "WARNING:absl:" in verbose.stderr  # orbax's lines are really there, and --verbose brings them back


@pytest.mark.slow
def test_tiny_pretrain_leaves_tensorboard_events_curves_and_flat_metrics(tiny_run, tmp_path):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["kind"] == "train" for r in records)
    assert all(not isinstance(v, dict) for r in records for v in r.values())  # flat columns only
    assert {"td_loss/Pong", "samples/Pong"} <= set(records[-1])
    scalars = read_tensorboard_scalars(tiny_run / "tensorboard")
    for column in ("loss", "td_loss", "q_data", "td_loss/Pong", "steps_per_s"):  # the same numbers, as float32
        assert scalars[f"train/{column}"] == [(r["step"], pytest.approx(r[column], rel=1e-6)) for r in records
                                              if r.get(column) is not None], column
    png = (tiny_run / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    plotted = sql("plot", tiny_run, tiny_run, "--metric", "loss", "--metric", "td_loss/Pong", "--out",
                  tmp_path / "cmp.png", "--json")
    assert plotted.returncode == 0, plotted.stderr
    assert json.loads(plotted.stdout)["panels"] == ["loss", "td_loss/Pong"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = sql("plot", tiny_run, "--metric", "nope", "--out", tmp_path / "x.png")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: no metric nope in these runs")


@pytest.mark.slow
def test_progress_shows_in_a_log_file_while_pretrain_runs(tiny_run, tmp_path):
    store = json.loads((tiny_run / "run.json").read_text())["config"]["data"]
    log = tmp_path / "train.log"
    env = {**os.environ, "SQL_PROGRESS_SECONDS": "0.2"}
    with open(log, "w") as stderr:  # as nohup or SLURM would: stderr is a file
        proc = subprocess.Popen([sys.executable, "-m", "sqlcli.main", "pretrain", "--data", store, "--games", "pong",
                                 "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8",
                                 "--steps", "60", "--checkpoint-every", "20", "--log-every", "10",
                                 "--cache-bytes", "8000000", "--run-dir", tmp_path / "run"],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        seen_while_running = ""
        while proc.poll() is None:
            text = log.read_text()
            if re.search(r"pretrain  \d+/60 steps", text):
                seen_while_running = text
            time.sleep(0.05)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert seen_while_running, "no progress line appeared before the command ended"
    lines = [line for line in log.read_text().splitlines() if "pretrain  " in line and "/60 steps" in line]
    assert lines[-1].split("  ")[2] == "60/60 steps (100.0%)" and "steps/s" in lines[-1] and "loss " in lines[-1]
    assert "\x1b" not in log.read_text() and not BOX_DRAWING & set(log.read_text())  # plain text, no bars


def test_wandb_without_the_extra_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "wandb.py").write_text("raise ImportError('wandb is not installed here')\n")  # hides a real install
    proc = sql("pretrain", "--data", tmp_path, "--run-dir", tmp_path / "run", "--wandb", "proj", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --wandb needs the wandb package, which is not installed "
                                   "(pip install 'scaled-ql[wandb]', or drop --wandb)")


COMMANDS = ("fetch-data", "collect", "shard", "pretrain", "eval", "finetune-offline", "finetune-online", "plot",
            "scale-report", "demo", "games", "env", "diagnose")


def test_help_panels_examples_choices_and_defaults_once():
    procs = sql_all([[command, "--help"] for command in COMMANDS])
    for command, proc in zip(COMMANDS, procs):
        assert proc.returncode == 0, (command, proc.stderr)
        text = proc.stdout
        assert "[default:" not in text and "<bool>" not in text, command  # defaults once, flags as flags
        assert f"Example: sql {command}" in " ".join(text.split()), command
    pretrain = procs[COMMANDS.index("pretrain")].stdout
    for panel in ("Data", "Network", "Optimisation", "Run", "Distributed"):
        assert f"─ {panel} ─" in pretrain, panel
    assert "<scaled-ql|bc|c51>" in pretrain.replace(" ", "") or "scaled-ql|bc|c51" in pretrain
    online = procs[COMMANDS.index("finetune-online")].stdout
    assert "<pretrained|scratch>" in online and "<none|torso|shared>" in online and "<dopamine|no-sticky>" in online


@pytest.mark.parametrize("args, value, allowed", [
    (["finetune-offline", "--init", "bogus"], "bogus", "'pretrained', 'scratch'"),
    (["finetune-online", "--freeze", "all"], "all", "'none', 'torso', 'shared'"),
    (["eval", "--policy", "greedy"], "greedy", "'checkpoint', 'random'"),
    (["scale-report", "r", "--metric", "max"], "max", "'iqm', 'median', 'mean'"),
    (["finetune-offline", "--slice", "last"], "last", "'spread', 'first'"),
])
def test_a_bad_choice_is_one_line_naming_the_choices(args, value, allowed):
    proc = sql(*args)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"'{value}' is not one of {allowed}" in proc.stderr and not BOX_DRAWING & set(proc.stderr)

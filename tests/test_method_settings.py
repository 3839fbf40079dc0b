"""A method declares its own settings: adding one (tests/toy_method.py plus one catalog line) makes its setting an
option of `sql pretrain --help`, records it in run.json and re-creates it on resume, with no other edit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sqlcli_core.data import store as st
from sqlcli_core.methods import catalog
from sqlcli_core.training import pretrain
from sqlcli_core.training.configs import LearnerConfig
from tests.replay_fixture import write_run
from tests.toy_method import ENTRY

ROOT = Path(__file__).resolve().parents[1]
# The one catalog line of the toy method, added before the CLI loads its commands.
ADD_TOY = ("from sqlcli_core.methods.catalog import MethodEntry, add_method; "
           f"add_method('toy', MethodEntry({ENTRY[0]!r}, {ENTRY[1]!r}, config={ENTRY[2]!r})); "
           "from sqlcli.main import main; main()")
TINY = ["--games", "pong", "--arch", "dqn", "--width", "0.25", "--num-atoms", "11", "--batch-size", "8",
        "--checkpoint-every", "2", "--log-every", "2", "--seed", "1", "--lr", "1e-3", "--cache-bytes", "8000000"]


def sql_with_toy(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax-cache")
    return subprocess.run([sys.executable, "-c", ADD_TOY, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)


@pytest.fixture
def toy_in_catalog():
    catalog.add_method("toy", catalog.MethodEntry(ENTRY[0], ENTRY[1], config=ENTRY[2]))
    yield
    del catalog.METHODS["toy"]


def test_scaled_ql_owns_alpha_and_other_methods_have_none():
    assert LearnerConfig().method_config.alpha == 0.05
    assert LearnerConfig(method="bc", method_config={"alpha": 0.7}).method_config is None  # not bc's setting
    assert catalog.method_setting_owners()["alpha"] == "scaled-ql"
    with pytest.raises(Exception, match="CQL alpha must be >= 0"):
        LearnerConfig(method_config={"alpha": -1.0})


def test_two_methods_may_not_declare_the_same_setting(toy_in_catalog):
    catalog.METHODS["toy2"] = catalog.MethodEntry(ENTRY[0], "twin", config=ENTRY[2])
    try:
        with pytest.raises(ValueError, match="both declare setting 'toy_weight'"):
            catalog.method_setting_owners()
    finally:
        del catalog.METHODS["toy2"]


def test_a_new_methods_setting_is_in_help_run_json_and_resume(tmp_path, toy_in_catalog):
    helped = sql_with_toy(["pretrain", "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "--toy-weight" in helped.stdout and "Method toy" in helped.stdout and "0.25 (ours)" in helped.stdout

    src = tmp_path / "src"
    write_run(src, "Pong", 1, capacity=150, total=400, num_actions=6, seed=11, mean_episode=25)
    store = tmp_path / "store"
    st.shard(src, store, config=st.ShardConfig(frame_chunk=32, scalar_chunk=128))
    run = tmp_path / "run"
    first = sql_with_toy(["pretrain", "--data", str(store), "--run-dir", str(run), "--method", "toy",
                          "--toy-weight", "0.5", "--steps", "2", *TINY, "--json"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["learner"]["method"] == "toy"
    assert record["config"]["learner"]["method_config"] == {"toy_weight": 0.5}
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(line["loss"] - (line["td_loss"] + 0.5 * line["cql_loss"])) < 1e-4  # the loss reads the setting

    # Resume: `--config RUN/run.json` re-creates the setting (in this process and in the CLI).
    _, config = pretrain.resolve_settings(run / "run.json", {})
    assert config.learner.method_config.toy_weight == 0.5
    resumed = sql_with_toy(["pretrain", "--config", str(run / "run.json"), "--steps", "4", "--json"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["resumed_from"] == 2 and summary["steps"] == 4 and summary["config"]["toy_weight"] == 0.5
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 4 and abs(line["loss"] - (line["td_loss"] + 0.5 * line["cql_loss"])) < 1e-4


@pytest.mark.parametrize("command, classes", [
    ("pretrain", ("PretrainConfig", "LearnerConfig", "NetworkConfig", "ScaledQLConfig", "DTConfig")),
    ("finetune-offline", ("OfflineConfig",)),
    ("finetune-online", ("OnlineConfig",)),
])
def test_every_setting_field_is_an_option_with_its_flag_default_and_help(command, classes):
    """Adding a setting is one line: each `setting(...)` field (but cli=False ones) is an option of the command
    with the field's flag, default None (not given: the dataclass default applies) and the field's help."""

    from sqlcli.main import load_command
    from sqlcli_core.methods import configs as method_configs
    from sqlcli_core.networks import config as network_configs
    from sqlcli_core.settings import field_flag, field_help, setting_specs
    from sqlcli_core.training import configs

    params = {opt: param for param in load_command(command).params for opt in param.opts}
    for name in classes:
        cls = next(getattr(m, name) for m in (configs, network_configs, method_configs) if hasattr(m, name))
        for spec in setting_specs(cls).values():  # its own fields and those of its nested configs (the learner)
            field = spec.field
            if not field.metadata["cli"] or field.name == "compute_dtype":
                continue
            param = params.get(field_flag(field))
            assert param is not None, f"{command}: {cls.__name__}.{field.name} has no option {field_flag(field)}"
            assert param.default is None and param.help == spec.help()
            assert param.help.startswith(field_help(spec.owner, field.name).split(" Default:")[0])


@pytest.mark.parametrize("command, flag, shown", [
    ("finetune-offline", "--lr", "Default: 0.0001 (ours)"), ("finetune-offline", "--alpha", "Default: 0.05"),
    ("finetune-offline", "--target-update-period", "Default: 2000 (paper)"),
    ("finetune-online", "--lr", "Default: 0.0001 (ours)"), ("finetune-online", "--alpha", "Default: 0.0 (ours)"),
    ("finetune-online", "--target-update-period", "Default: 1000 (ours)"), ("finetune-online", "--gamma", "0.99"),
    ("finetune-online", "--adam-eps", "Default: 0.0003125"),
])
def test_fine_tuning_options_show_the_nested_learners_command_defaults(command, flag, shown):
    """The fine-tuning configs nest the learner's config with their own defaults; the generated options (the
    learner's flags and help) show those defaults, not pretrain's (2e-4, target period 2000)."""
    from sqlcli.main import load_command
    from sqlcli_core.training import finetune_offline, finetune_online

    params = {opt: param for param in load_command(command).params for opt in param.opts}
    assert shown in params[flag].help
    module = finetune_offline if command == "finetune-offline" else finetune_online
    flags = {"game": "alien", "data": "/x"} if command == "finetune-offline" else {"game": "breakout"}
    defaults = module.resolve_config(None, flags).learner
    assert (defaults.learning_rate, defaults.gamma) == (1e-4, 0.99)
    assert (defaults.target_update_period, defaults.method_config.alpha) == (
        (2000, 0.05) if command == "finetune-offline" else (1000, 0.0))
    given = module.resolve_config(None, {**flags, "learning_rate": 3e-4, "alpha": 0.5})
    assert (given.learner.learning_rate, given.learner.method_config.alpha) == (3e-4, 0.5)


def test_a_setting_of_another_method_is_refused_not_ignored(tmp_path):
    """`--method bc --alpha 0.3` would train bc and drop alpha: one line naming the setting and its method (exit 2),
    from the flags and from a --config file alike; alpha at its default (not given) and a run.json of 0.2 that
    recorded alpha for a bc run are fine."""
    from typer.testing import CliRunner

    from sqlcli.main import app
    from sqlcli_core.errors import UsageError

    result = CliRunner().invoke(app, ["pretrain", "--dry-run", "--method", "bc", "--alpha", "0.3", "--games", "pong"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --alpha is a setting of method scaled-ql, which --method bc does not read")
    assert len(result.output.strip().splitlines()) == 1
    path = tmp_path / "bc.toml"
    path.write_text('data = "/x"\nrun_dir = "/r"\nmethod = "bc"\nalpha = 0.05\n')
    with pytest.raises(UsageError, match="--alpha is a setting of method scaled-ql"):
        pretrain.resolve_settings(path, {})
    _, config = pretrain.resolve_settings(None, {"data": "/x", "run_dir": "/r", "method": "bc"})
    assert config.learner.method_config is None
    _, config = pretrain.resolve_settings(None, {"data": "/x", "run_dir": "/r", "alpha": 0.3})
    assert config.learner.method_config.alpha == 0.3
    old_bc = {"kind": "sql-run", "config": {"command": "pretrain", "data": "/x", "run_dir": "/r", "network": {"arch": "dqn"},
                                           "learner": {"method": "bc", "learning_rate": 1e-3, "alpha": 0.05}}}
    (tmp_path / "run.json").write_text(json.dumps(old_bc))
    settings, config = pretrain.resolve_settings(tmp_path / "run.json", {})
    assert config.learner.method == "bc" and config.learner.learning_rate == 1e-3

"""Run directories written by release 0.2 still resume: their run.json (tests/fixtures/release_0_2, written by
that release's `sql demo`, `finetune-offline` and `finetune-online`) re-creates the same settings through
`--config RUN/run.json`, and the resume checks accept them, refusing a changed setting."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import resolve_games
from sqlcli_core.networks.config import num_actions_for
from sqlcli_core.runs.run_record import check_resume_settings, prepare_run_dir, read_run, run_identity
from sqlcli_core.settings import flatten
from sqlcli_core.training import finetune_offline, finetune_online, pretrain
from sqlcli_core.training.configs import flat_identity

FIXTURES = Path(__file__).parent / "fixtures" / "release_0_2"


def old_run(tmp_path: Path, command: str) -> Path:
    run = tmp_path / command
    run.mkdir()
    shutil.copy(FIXTURES / f"{command}.run.json", run / "run.json")
    return run


def test_an_old_pretrain_run_recreates_its_settings_and_identity(tmp_path):
    run = old_run(tmp_path, "pretrain")
    record = read_run(run)
    settings, config = pretrain.resolve_settings(run / "run.json", {})
    # Every recorded setting, in today's shape: scaled-ql's alpha moved from the learner into its method config.
    expected = json.loads(json.dumps(record["config"]))
    expected["learner"]["method_config"] = {"alpha": expected["learner"].pop("alpha")}
    assert config.to_dict() == expected
    assert config.learner.method_config.alpha == record["config"]["learner"]["alpha"] == 0.05
    games = resolve_games(config.games)
    identity = run_identity(config.network.to_dict(), [g.name for g in games], num_actions_for(config.network, games),
                            config.learner.method)
    assert identity == record["identity"]
    prepare_run_dir(run, identity=identity, config=config.to_dict(), parameter_counts=record["parameter_counts"],
                    seed=config.seed, write=False)  # the resume's identity check passes
    wider = run_identity({**config.network.to_dict(), "width": 2.0}, identity["games"], identity["num_actions"])
    with pytest.raises(UsageError, match="holds a different run"):
        prepare_run_dir(run, identity=wider, config=config.to_dict(), parameter_counts={}, seed=0, write=False)


@pytest.mark.parametrize("command, module", [("finetune_offline", finetune_offline),
                                             ("finetune_online", finetune_online)])
def test_an_old_finetuning_run_resumes_with_its_settings_and_refuses_others(tmp_path, command, module):
    run = old_run(tmp_path, command)
    record = read_run(run)
    config = module.resolve_config(run / "run.json", {})
    recorded = record["config"]["settings"]  # flat: the learner's settings beside the command's own
    flat = json.loads(json.dumps(flat_identity(config)))
    assert {k: v for k, v in flat.items() if k in recorded} == recorded
    # Today's config nests them: the learner's fields and scaled-ql's alpha in its method config.
    assert config.learner.learning_rate == recorded["learning_rate"]
    assert config.learner.target_update_period == recorded["target_update_period"]
    assert config.learner.method_config.alpha == recorded["alpha"]
    name = command.replace("_", "-")
    read_flat = functools.partial(flatten, type(config))
    check_resume_settings(run, name, flat_identity(config), record["config"]["from"],
                          defaults=module.identity_defaults(), recorded=read_flat)
    changed = {**flat_identity(config), "gamma": 0.9}
    with pytest.raises(UsageError, match=r"other settings \(gamma\)"):
        check_resume_settings(run, name, changed, record["config"]["from"], defaults=module.identity_defaults(),
                              recorded=read_flat)


@pytest.mark.parametrize("command, module", [("finetune_offline", finetune_offline),
                                             ("finetune_online", finetune_online)])
def test_a_finetuning_run_json_of_this_release_nests_the_learner_and_recreates_it(tmp_path, command, module):
    """This release records config.settings with the learner nested (method_config within); `--config RUN/run.json`
    and the resume check read it back to the same config."""
    run = old_run(tmp_path, command)
    config = module.resolve_config(run / "run.json", {"learning_rate": 3e-4, "alpha": 0.2})
    record = read_run(run)
    record["config"]["settings"] = json.loads(json.dumps(config.identity_fields()))
    (run / "run.json").write_text(json.dumps(record))
    learner = record["config"]["settings"]["learner"]
    assert "learning_rate" not in record["config"]["settings"] and learner["learning_rate"] == 3e-4
    assert learner["method"] == "scaled-ql" and learner["method_config"] == {"alpha": 0.2}
    assert module.resolve_config(run / "run.json", {}) == config
    name = command.replace("_", "-")
    read_flat = functools.partial(flatten, type(config))
    check_resume_settings(run, name, flat_identity(config), record["config"]["from"],
                          defaults=module.identity_defaults(), recorded=read_flat)
    with pytest.raises(UsageError, match=r"other settings \(alpha\)"):
        check_resume_settings(run, name, {**flat_identity(config), "alpha": 0.3}, record["config"]["from"],
                              defaults=module.identity_defaults(), recorded=read_flat)


def test_a_dt_run_from_before_its_method_config_recreates_its_settings_and_identity(tmp_path):
    """A Decision Transformer run written before `DTConfig` (tests/fixtures/before_dt_config: `sql pretrain --method
    dt --arch dt-10m --width 0.05` on that code) has no method config: it re-creates its settings with the DT's
    defaults (the loss weights it trained with, 1 each) and passes the resume's identity check."""
    run = tmp_path / "dt"
    run.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "before_dt_config" / "pretrain_dt.run.json", run / "run.json")
    record = read_run(run)
    assert record["config"]["learner"]["method_config"] is None
    settings, config = pretrain.resolve_settings(run / "run.json", {})
    assert config.learner.method == "dt" and config.learner.method_config.weights() == (1.0, 1.0, 1.0)
    expected = json.loads(json.dumps(record["config"]))
    expected["learner"]["method_config"] = {"action_loss_weight": 1.0, "return_loss_weight": 1.0,
                                            "reward_loss_weight": 1.0}
    assert config.to_dict() == expected
    games = resolve_games(config.games)
    identity = run_identity(config.network.to_dict(), [g.name for g in games], num_actions_for(config.network, games),
                            config.learner.method)
    assert identity == record["identity"]
    prepare_run_dir(run, identity=identity, config=config.to_dict(), parameter_counts=record["parameter_counts"],
                    seed=config.seed, write=False)
    # Its own settings resume and are recorded: a given weight changes the config, not the identity.
    _, weighted = pretrain.resolve_settings(run / "run.json", {"return_loss_weight": 0.5})
    assert weighted.learner.method_config.return_loss_weight == 0.5
    assert weighted.to_dict()["learner"]["method_config"]["return_loss_weight"] == 0.5

"""Typed settings: every source (flags, TOML, RUN/run.json) is checked against the config dataclasses' field
types before anything runs, with one line naming the key, the file and the expected type (exit 2)."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.errors import UsageError
from sqlcli_core.settings import check_settings, setting
from sqlcli_core.training import finetune_offline, finetune_online, pretrain

runner = CliRunner()


@dataclasses.dataclass(frozen=True)
class Example:
    count: int = setting(3, "An int.")
    rate: float = setting(0.5, "A float.", flag="--lr")
    on: bool = setting(True, "A bool.")
    name: str = setting("a", "A str.")
    limit: int | None = setting(None, "An optional int.")
    mode: Literal["fast", "slow"] = setting("fast", "An enumeration.")
    sizes: tuple[int, ...] = setting((1, 2), "A tuple of ints.")


@pytest.mark.parametrize("key, value, converted", [
    ("count", 4, 4), ("count", 20.0, 20),            # a whole float is the int it spells
    ("rate", 1, 1.0), ("rate", 2.5, 2.5),            # an int is fine for a float field
    ("on", False, False), ("name", "b", "b"), ("limit", None, None), ("limit", 7, 7),
    ("mode", "slow", "slow"), ("sizes", [3, 4], (3, 4)),
])
def test_values_of_the_declared_type_pass_and_are_converted(key, value, converted):
    out = check_settings([Example], {key: value}, "cfg.toml")
    assert out[key] == converted and type(out[key]) is type(converted)


@pytest.mark.parametrize("key, value, words", [
    ("count", True, "must be an integer (a whole number), got true"),      # bool is not int
    ("count", 20.7, "must be an integer (a whole number), got 20.7"),      # no silent truncation
    ("count", "3", 'must be an integer (a whole number), got "3"'),
    ("rate", "0.001", 'must be a number, got "0.001"'),                     # a float field refuses a string
    ("rate", False, "must be a number, got false"),
    ("on", 1, "must be true or false, got 1"),
    ("name", 5, "must be a string, got 5"),
    ("limit", 2.5, "must be an integer (a whole number) (or left out: none), got 2.5"),
    ("mode", "medium", 'must be one of fast, slow, got "medium"'),          # choices named
    ("sizes", [1, "x"], "must be a list of integer (a whole number)s"),
])
def test_a_value_of_another_type_is_one_line_naming_key_file_and_type(key, value, words):
    with pytest.raises(UsageError) as err:
        check_settings([Example], {key: value}, "dir/cfg.toml", spelled={key: key.replace("_", "-")})
    line = str(err.value)
    assert f"setting '{key}' in dir/cfg.toml {words}" in line and "\n" not in line
    assert err.value.exit_code == 2


def test_the_command_line_source_names_the_flag():
    with pytest.raises(UsageError, match=r"^--lr must be a number, got \"x\""):
        check_settings([Example], {"rate": "x"})


def toml(tmp_path, text: str):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("batch_size = true\n", "setting 'batch_size' in {} must be an integer (a whole number), got true"),
    ("steps = 20.7\n", "setting 'steps' in {} must be an integer (a whole number), got 20.7"),
    ('width = "wide"\n', "setting 'width' in {} must be a number, got \"wide\""),
    ('lr = "0.001"\n', "setting 'lr' in {} must be a number, got \"0.001\""),
    ("normalize-features = 1\n", "setting 'normalize-features' in {} must be true or false, got 1"),
    ('max_grad_norm = "off"\n', "setting 'max_grad_norm' in {} must be a number (or left out: none)"),
])
def test_pretrain_toml_values_are_checked_before_anything_runs(tmp_path, text, words):
    path = toml(tmp_path, text)
    result = runner.invoke(app, ["pretrain", "--dry-run", "--games", "pong", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: " + words.format(path)), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_pretrain_toml_spellings_that_mean_the_type_are_accepted(tmp_path):
    """A whole float for an int (1e1 steps), an int for a float (width = 1), `bf16 = true`, `slice`-style
    flag names: all are the declared type after reading."""
    path = toml(tmp_path, 'data = "/x"\nrun_dir = "/r"\narch = "dqn"\nsteps = 1e1\nwidth = 1\nbf16 = true\nlr = 1\n')
    settings, config = pretrain.resolve_settings(path, {})
    assert config.steps == 10 and type(settings["steps"]) is int
    assert config.network.width == 1.0 and type(config.network.width) is float
    assert config.network.compute_dtype == "bfloat16" and config.learner.learning_rate == 1.0


def test_run_json_values_are_checked_like_toml(tmp_path):
    """A run record edited by hand (or written by a buggy version) is refused, naming run.json."""
    record = {"kind": "sql-run", "config": {"command": "pretrain", "data": "/x", "run_dir": "/r", "steps": 20.7,
                                            "network": {"arch": "dqn"}, "learner": {}}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UsageError, match=rf"setting 'steps' in {path} must be an integer \(a whole number\), got 20.7"):
        pretrain.resolve_settings(path, {})
    record["config"]["steps"] = 20
    record["config"]["learner"] = {"learning_rate": "0.001"}
    path.write_text(json.dumps(record))
    with pytest.raises(UsageError, match=rf"setting 'learning_rate' in {path} must be a number"):
        pretrain.resolve_settings(path, {})


def test_flags_are_checked_by_the_same_rule(tmp_path):
    result = runner.invoke(app, ["pretrain", "--dry-run", "--steps", "20.7"])
    assert result.exit_code == 2 and "'--steps'" in result.output
    with pytest.raises(UsageError, match=r"^--steps must be an integer"):
        pretrain.resolve_settings(None, {"steps": True})
    with pytest.raises(UsageError, match=r"^--lr must be a number"):
        finetune_offline.resolve_config(None, {"game": "alien", "data": "/x", "learning_rate": "fast"})


def test_a_range_refused_in_a_settings_file_names_the_file(tmp_path):
    """The range rules name the flag (`--steps`); a value from --config says where it came from."""
    path = toml(tmp_path, "steps = 0\n")
    with pytest.raises(UsageError, match=rf"^--steps must be at least 1, got 0 \(settings read from {path}\)"):
        pretrain.resolve_settings(path, {"data": "/x", "run_dir": "/r"})
    with pytest.raises(UsageError, match=r"^--steps must be at least 1, got 0$"):  # from a flag: nothing to add
        pretrain.resolve_settings(None, {"data": "/x", "run_dir": "/r", "steps": 0})
    path = toml(tmp_path, 'game = "alien"\ndata = "/x"\nlr = -1\n')
    with pytest.raises(UsageError, match=rf"must be positive \(settings read from {path}\)"):
        finetune_offline.resolve_config(path, {})


def test_fine_tuning_toml_values_are_checked(tmp_path):
    path = toml(tmp_path, 'game = "alien"\ndata = "/x"\ntransitions = true\n')
    with pytest.raises(UsageError, match=rf"setting 'transitions' in {path} must be an integer"):
        finetune_offline.resolve_config(path, {})
    path = toml(tmp_path, 'game = "breakout"\nepsilon_end = "0.01"\n')
    with pytest.raises(UsageError, match=rf"setting 'epsilon_end' in {path} must be a number"):
        finetune_online.resolve_config(path, {})
    path = toml(tmp_path, 'game = "breakout"\nmode = 1.5\n')
    with pytest.raises(UsageError, match=r"setting 'mode' .* must be an integer \(a whole number\) \(or left out"):
        finetune_online.resolve_config(path, {})
    # a field's own flag name is accepted as a key (--slice for slice_rule, --lr for learning_rate)
    path = toml(tmp_path, 'game = "alien"\ndata = "/x"\nslice = "first"\nlr = 3e-4\n')
    config = finetune_offline.resolve_config(path, {})
    assert (config.slice_rule, config.learner.learning_rate) == ("first", 3e-4)


def test_a_nested_config_is_flat_settings_with_the_commands_defaults():
    """`nested(...)`: a command's config holding another config; the listed fields (a config within whole) are its
    flat settings with the command's defaults, `compose` builds it back, `flatten` reads both record shapes."""
    import dataclasses

    from sqlcli_core.settings import compose, flatten, nested, setting_specs, spec_defaults

    @dataclasses.dataclass(frozen=True)
    class Inner:
        rate: float = setting(2.0, "Rate.", tag="paper")

    @dataclasses.dataclass(frozen=True)
    class Middle:
        size: int = setting(3, "Size.")
        hidden: int = setting(9, "Not an option of the command.")
        own: Inner = Inner()

    @dataclasses.dataclass(frozen=True)
    class Command:
        name: str = setting("x", "Name.")
        middle: Middle = nested(Middle(size=4), options=("size", "own"), panel="P")

    specs = setting_specs(Command)
    assert list(specs) == ["name", "size", "rate"] and spec_defaults(Command) == {"name": "x", "size": 4, "rate": 2.0}
    assert specs["size"].help() == "Size. Default: 4 (ours)." and specs["rate"].help() == "Rate. Default: 2.0 (paper)."
    assert specs["rate"].path == ("middle", "own") and specs["size"].panel == "P"
    built = compose(Command, {"size": 5, "rate": 0.5})
    assert built == Command(middle=Middle(size=5, own=Inner(0.5)))
    recorded = dataclasses.asdict(built)
    assert flatten(Command, recorded) == {"name": "x", "size": 5, "rate": 0.5}  # hidden: not a setting
    assert flatten(Command, {"name": "x", "size": 5, "rate": 0.5}) == {"name": "x", "size": 5, "rate": 0.5}

    @dataclasses.dataclass(frozen=True)
    class Twice:
        size: int = setting(1, "Size again.")
        middle: Middle = nested(Middle(), options=("size",))

    with pytest.raises(ValueError, match="declared twice"):
        setting_specs(Twice)

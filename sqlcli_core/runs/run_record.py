"""The run record: a run's identity, RUN/run.json (settings, parameter counts, provenance, history), and
the checks a resume makes against it (same identity; same settings, old keys at their defaults)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlcli_core.atomic import atomic_output, write_json
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.methods.catalog import DEFAULT_METHOD
from sqlcli_core.networks.config import config_class
from sqlcli_core.provenance import provenance
from sqlcli_core.runs.metrics import METRICS_FILE

RUN_FILE = "run.json"


# Network settings that change how the network computes but not its parameters: a run may switch them.
NUMERICS_ONLY = frozenset({"compute_dtype"})


def run_identity(network_config: dict, games: Sequence[str], num_actions: Sequence[int],
                 method: str = DEFAULT_METHOD) -> dict:
    """What a checkpoint must match to be resumed or loaded: the method, the network config and the game list."""
    return {"method": method, "network": dict(network_config), "games": list(games),
            "num_actions": [int(n) for n in num_actions]}


def identity_method(identity: dict) -> str:
    """The method of a run identity; runs written before methods existed are scaled-ql."""
    return identity.get("method") or DEFAULT_METHOD


def _identity_difference(saved: dict, wanted: dict) -> str | None:
    """A short description of the first difference between two identities, or None when equal.

    Network settings are compared on the keys both sides know; a key only one side has is equal when the
    other side's value is its NetworkConfig default (a field added later does not change an older run).
    """

    if identity_method(saved) != identity_method(wanted):
        return f"method {identity_method(saved)} vs {identity_method(wanted)}"
    if saved.get("games") != wanted.get("games"):
        return f"games {_short(saved.get('games'))} vs {_short(wanted.get('games'))}"
    saved_net, wanted_net = saved.get("network", {}), wanted.get("network", {})
    if config_class(saved_net.get("arch", "")) is not config_class(wanted_net.get("arch", "")):
        return f"network arch {saved_net.get('arch')!r} vs {wanted_net.get('arch')!r}"
    defaults = config_class(wanted_net.get("arch", ""))().to_dict()
    for key in settings_difference({k: v for k, v in saved_net.items() if k not in NUMERICS_ONLY},
                                   {k: v for k, v in wanted_net.items() if k not in NUMERICS_ONLY}, defaults):
        return f"network {key} {saved_net.get(key, defaults.get(key))!r} vs {wanted_net.get(key, defaults.get(key))!r}"
    if saved.get("num_actions") != wanted.get("num_actions"):
        return f"action-set sizes {saved.get('num_actions')} vs {wanted.get('num_actions')}"
    return None


def _short(names: Any) -> str:
    names = list(names or [])
    return ",".join(names) if len(names) <= 4 else ",".join(names[:3]) + f",... ({len(names)} games)"


def prepare_run_dir(run_dir: str | os.PathLike, *, identity: dict, config: dict, parameter_counts: dict,
                    seed: int, command: str = "pretrain", write: bool = True) -> dict:
    """Create RUN/run.json, or check that an existing one describes the same run; return the record.

    An existing run of another identity (architecture, width, atoms, games...) is refused. Other settings
    (steps, learning rate, logging) may change between invocations: run.json then records the new config
    and keeps the earlier ones under `history`. Only the writing process (`write=True`) touches files.
    """
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    previous = read_run(run_dir) if path.exists() else None
    if previous is not None:
        diff = _identity_difference(previous.get("identity", {}), identity)
        if diff is not None:
            raise UsageError(
                f"run directory {run_dir} holds a different run ({diff})",
                hint="pass another --run-dir, or repeat that run's --arch/--width/--games/atom settings to resume it",
            )
    record = {
        "kind": "sql-run",
        "format_version": 1,
        "identity": identity,
        "config": config,
        "seed": seed,
        "parameter_counts": parameter_counts,
        "num_parameters": int(sum(parameter_counts.values())),
        "provenance": provenance(command, config, seed),
        "history": [],
    }
    if previous is not None:
        record["history"] = list(previous.get("history", []))
        if previous.get("config") != config:
            record["history"].append({"config": previous.get("config"),
                                      "created": previous.get("provenance", {}).get("created")})
        record["provenance"]["first_created"] = previous.get("provenance", {}).get(
            "first_created", previous.get("provenance", {}).get("created"))
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
    return record


def read_run(run_dir: str | os.PathLike) -> dict:
    """RUN/run.json as a dict, or a DataError naming the file."""
    path = Path(run_dir) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", hint="pass a run directory written by `sql pretrain`") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                        hint="the run directory is damaged; restore run.json or start a new run") from None
    if record.get("kind") != "sql-run":
        raise DataError(f"{path} is not a run record of sql", hint="pass a run directory written by `sql pretrain`")
    return record


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop metric lines past `step` (left by a run killed after its last checkpoint), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    with atomic_output(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))


def settings_difference(had: Mapping[str, Any], wanted: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the settings that differ, comparing the keys both sides know.

    A key only one side has counts as equal when the other side's value is its default (`defaults`): a
    setting added by a newer version, left at its default, does not make an older run different.
    """
    defaults = defaults or {}
    diff = []
    for key in sorted(set(had) | set(wanted)):
        if key in had and key in wanted:
            if had[key] != wanted[key]:
                diff.append(key)
        elif key in defaults:
            value = had[key] if key in had else wanted[key]
            if value != defaults[key]:
                diff.append(key)
    return diff


def check_resume_settings(run_dir: str | Path, command: str, settings: Mapping[str, Any], source: str | None,
                          defaults: Mapping[str, Any] | None = None,
                          recorded: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> None:
    """Refuse to continue a run directory written by another command or started with other settings.

    settings: what a resumed run must repeat, flat (run.json records it under config.settings); recorded(s):
    the recorded settings in that flat form (a nested config lifted, `settings.flatten`); source: the run it
    starts from (config.from). Nothing happens for a directory without run.json (a new run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        return
    previous = read_run(run_dir).get("config", {})
    if previous.get("command") != command:
        raise UsageError(f"run directory {run_dir} was not written by `sql {command}`", hint="pass a new --run-dir")
    had = previous.get("settings") or {}
    diff = settings_difference(recorded(had) if recorded is not None else had, settings, defaults)
    if previous.get("from") != source:
        diff.append("from")
    if diff:
        raise UsageError(f"run directory {run_dir} was started with other settings ({', '.join(diff)})",
                         hint="repeat that run's options to resume it, or pass a new --run-dir")

"""The pre-training recipe: store -> sampler -> the method's update step -> the run directory.

A run's settings are one flat dict (what `--config FILE.toml` and the flags give, and what run.json's
config re-creates): the fields of `PretrainConfig`, the network's (`NetworkConfig`, or
`DecisionTransformerConfig` for an arch dt-*), `LearnerConfig` and every method's own config class
(`methods/catalog.py`; only the chosen method's is read and recorded) by name. The method's batch kind picks the
sampler: transitions (`ReplaySampler`) or windows of steps (`SequenceSampler`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax

from sqlcli_core.data.sampler import ReplaySampler, default_cache_bytes
from sqlcli_core.data.sequence_sampler import SequenceSampler
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import canonical_name, resolve_games
from sqlcli_core.methods.catalog import (
    DEFAULT_METHOD,
    make_method_config,
    method_config_class,
    method_names,
    method_setting_owners,
)
from sqlcli_core.networks.config import (
    AnyNetworkConfig,
    DecisionTransformerConfig,
    NetworkConfig,
    network_config,
    network_defaults,
    network_setting_names,
    num_actions_for,
)
from sqlcli_core.networks.network import parameter_table
from sqlcli_core.runs.run_record import run_identity
from sqlcli_core.settings import field_flag, field_names, given_settings, naming_settings_file
from sqlcli_core.training import memory
from sqlcli_core.training.configs import LEARNER_SETTINGS, LearnerConfig, PretrainConfig
from sqlcli_core.training.mesh import check_batch_size, make_mesh
from sqlcli_core.training.offline_recipe import OfflineRun, train_offline
from sqlcli_core.training.update import abstract_train_state, init_train_state, make_train_step

COMMAND = "pretrain"


# ---------------------------------------------------------------------------------------------------------
# Flat settings <-> PretrainConfig

_TOP_FIELDS = tuple(n for n in field_names(PretrainConfig) if n not in ("network", "learner"))
SETTING_NAMES = _TOP_FIELDS + network_setting_names() + LEARNER_SETTINGS + tuple(method_setting_owners())
# Other spellings accepted in files: the CLI's short flag and the boolean form of the compute dtype.
SETTING_ALIASES = {"lr": "learning_rate", "bf16": "compute_dtype"}
# The dataclasses that declare the flat settings (and so their types: settings.check_settings).
SETTING_CLASSES = (PretrainConfig, NetworkConfig, DecisionTransformerConfig, LearnerConfig,
                   *filter(None, map(method_config_class, method_names())))


def default_settings() -> dict[str, Any]:
    """Every flat setting with its default, read from the dataclasses."""
    out = {n: PretrainConfig.__dataclass_fields__[n].default for n in _TOP_FIELDS}
    out.update(network_defaults())
    out.update({n: getattr(LearnerConfig(), n) for n in LEARNER_SETTINGS})
    for method in method_names():  # every method's own settings (each is read only by its method)
        cls = method_config_class(method)
        out.update({f.name: f.default for f in dataclasses.fields(cls)} if cls is not None else {})
    return out


def normalize_setting(name: str, value: Any) -> Any:
    """The value a flat setting holds: `bf16 = true` means compute_dtype "bfloat16"."""
    if name == "compute_dtype" and isinstance(value, bool):
        return "bfloat16" if value else "float32"
    return value


def settings_from_run(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings a pretrain run's run.json records (its config), for `--config RUN/run.json`."""
    config = record.get("config") or {}
    if config.get("command") not in (None, COMMAND) or "network" not in config:
        raise UsageError("the run.json given to --config is not a `sql pretrain` run",
                         hint="pass RUN/run.json of a pre-training run, or a TOML file")
    flat = {k: config[k] for k in _TOP_FIELDS if k in config}
    flat.update(config.get("network") or {})
    learner = dict(config.get("learner") or {})
    flat.update(learner.pop("method_config", None) or {})  # runs before 0.3 hold alpha in the learner itself
    flat.update(learner)
    # A 0.2 run of another method recorded scaled-ql's alpha too (then a learner field): not this run's setting.
    method = flat.get("method") or DEFAULT_METHOD
    return {k: v for k, v in flat.items() if method_setting_owners().get(k, method) == method}


def resolve_settings(config_file: str | Path | None, flags: Mapping[str, Any]) -> tuple[dict, PretrainConfig]:
    """Defaults <- `--config` (TOML or RUN/run.json) <- given flags -> (flat settings, PretrainConfig)."""
    defaults = default_settings()
    given = given_settings(defaults, config_file, flags, from_run=settings_from_run, aliases=SETTING_ALIASES,
                           classes=SETTING_CLASSES, normalize=normalize_setting)
    settings = {**defaults, **given}
    with naming_settings_file(config_file):
        check_method_settings(settings["method"], given)
        settings["game_weights"] = parse_game_weights(settings["game_weights"])
        return settings, config_from_settings(settings)


def parse_game_weights(value: Any) -> dict[str, float] | None:
    """'Pong=2,Breakout=1' (the flag) or a TOML/JSON table -> {"Pong": 2.0, "Breakout": 1.0}, names canonical.
    A weight is a finite number >= 0: `true` (which Python would read as 1) and inf are refused."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        pairs = []
        for item in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, weight = item.partition("=")
            if not sep:
                raise UsageError(f"bad --game-weights item '{item}'", hint="write GAME=WEIGHT pairs, e.g. Pong=2,Breakout=1")
            pairs.append((name.strip(), weight.strip()))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise UsageError("game_weights must be a string or a table", hint="e.g. game_weights = {Pong = 2.0}")
    weights = {}
    for name, weight in pairs:
        try:
            w = float(weight) if not isinstance(weight, bool) else math.nan
        except (TypeError, ValueError):
            w = math.nan
        if not (math.isfinite(w) and w >= 0):
            raise UsageError(f"weight of {name} must be a finite number >= 0, got {weight!r}",
                             hint="e.g. --game-weights Pong=2,Breakout=1")
        weights[canonical_name(str(name))] = w
    return weights


def check_method_settings(method: str, given: Iterable[str]) -> None:
    """Refuse (exit 2) a method's own setting given for another method: `--method bc --alpha 0.3` would
    otherwise train bc and silently ignore alpha. Settings left at their defaults are not given."""
    owners = method_setting_owners()
    for name in given:
        owner = owners.get(name)
        if owner is not None and owner != method:
            flag = field_flag(method_config_class(owner).__dataclass_fields__[name])
            raise UsageError(f"{flag} is a setting of method {owner}, which --method {method} does not read",
                             hint=f"drop {flag} (or {name} from the --config file), or pass --method {owner}")


def config_from_settings(settings: Mapping[str, Any]) -> PretrainConfig:
    """A PretrainConfig from complete flat settings (defaults filled in); UsageErrors name the fix."""
    s = dict(settings)
    if not s["data"]:
        raise UsageError("no data store given", hint="pass --data STORE (a Zarr store written by `sql shard`)")
    if not s["run_dir"]:
        raise UsageError("no run directory given", hint="pass --run-dir RUN (created if missing, resumed if present)")
    network = network_config({k: s[k] for k in network_setting_names() if k in s})
    learner = LearnerConfig(**{k: s[k] for k in LEARNER_SETTINGS}, method_config=make_method_config(s["method"], s))
    _check_method_fits_network(learner, network)
    check_minimal_action_sets(network)
    data = str(s["data"])
    return PretrainConfig(
        # Absolute, so that run.json still names the store when read from another directory (scale-report).
        data=data if "://" in data else str(Path(data).resolve()), run_dir=str(s["run_dir"]), games=str(s["games"]),
        network=network, learner=learner, batch_size=int(s["batch_size"]), n_step=int(s["n_step"]),
        steps=int(s["steps"]), seed=int(s["seed"]), checkpoint_every=int(s["checkpoint_every"]), keep=int(s["keep"]),
        log_every=int(s["log_every"]), game_weights=s["game_weights"],
        cache_bytes=None if s["cache_bytes"] is None else int(s["cache_bytes"]), prefetch=int(s["prefetch"]),
        prefetch_units=int(s["prefetch_units"]))


def check_minimal_action_sets(network: AnyNetworkConfig) -> None:
    """Refuse `full_action_space` for training: stores hold minimal-set action indices (DQN-Replay's), which
    18-wide heads would read as ALE ids (Breakout's RIGHT, index 2, as ALE's UP) with no mapping in the
    samplers or at acting, so the run would train silently wrong. Parameter tables still accept it."""
    if network.full_action_space:
        raise UsageError("full_action_space is not supported for training: the data holds minimal-set action "
                         "indices, which 18-action heads would misread", hint="remove full_action_space from the "
                         "config (minimal action sets are the default)")


def _check_method_fits_network(learner: LearnerConfig, network: AnyNetworkConfig) -> None:
    """A sequence method trains a Decision Transformer arch, every other method a torso arch."""
    wants_dt = learner.get_method().batch_kind == "sequences"
    is_dt = not isinstance(network, NetworkConfig)
    if wants_dt and not is_dt:
        raise UsageError(f"--method {learner.method} trains a Decision Transformer, not --arch {network.arch}",
                         hint="pass --arch dt-40m (or dt-10m, dt-80m, dt-200m)")
    if is_dt and not wants_dt:
        raise UsageError(f"--arch {network.arch} is a Decision Transformer, which --method {learner.method} "
                         "does not train", hint="pass --method dt, or a torso arch such as resnet101")


# ---------------------------------------------------------------------------------------------------------
# The recipe


def _sampler_weights(config: PretrainConfig, games) -> list[float] | None:
    if not config.game_weights:
        return None
    unknown = sorted(set(config.game_weights) - {g.name for g in games})
    if unknown:
        raise UsageError(f"--game-weights names games that are not trained: {unknown}", hint="weight only games of --games")
    return [float(config.game_weights.get(g.name, 1.0)) for g in games]


def make_sampler(config: PretrainConfig, games, local_batch: int):
    """The sampler of the method's batch kind over `games`, this process's share of the batch.

    transitions: `ReplaySampler` (n-step transitions); sequences: `SequenceSampler` (windows of the network's
    context_steps steps). Both are seeded by the run's seed and resume from their JSON state_dict.
    """

    common = dict(games=[g.name for g in games], batch_size=local_batch, seed=config.seed,
                  game_weights=_sampler_weights(config, games),
                  **({} if config.cache_bytes is None else {"cache_bytes": config.cache_bytes}),
                  process_index=jax.process_index(), process_count=jax.process_count())
    if config.learner.get_method().batch_kind == "sequences":
        return SequenceSampler(config.data, window=config.network.context_steps, **common)
    return ReplaySampler(config.data, n_step=config.n_step, gamma=config.learner.gamma,
                         prefetch_units=config.prefetch_units, **common)


def check_memory(config: PretrainConfig, num_games: int, local_batch: int, devices: int) -> None:
    """Refuse (exit 5, with the numbers) a run whose batches and sampler cache cannot fit in this machine."""
    sequences = config.learner.get_method().batch_kind == "sequences"
    sample = (memory.sequence_sample_bytes(config.network.context_steps) if sequences
              else memory.TRANSITION_SAMPLE_BYTES)
    cache = config.cache_bytes if config.cache_bytes is not None else default_cache_bytes(num_games)
    # The sampler's queue (2) and the batch it builds, then the Prefetcher's copies on their way to the devices.
    estimate = memory.training_estimate(local_batch=local_batch, sample_bytes=sample, cache_bytes=cache,
                                        host_batches=3 + config.prefetch, device_batches=config.prefetch + 1,
                                        devices=devices)
    memory.check_fits(estimate, hint="lower --batch-size (or --cache-bytes, --prefetch), or use a larger machine")


def run_pretraining(config: PretrainConfig, *, on_start: Callable[[dict], None] | None = None,
                    on_log: Callable[[dict], None] | None = None,
                    on_step: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) the run in `config.run_dir` up to `config.steps` gradient steps; return a summary.

    Re-running with the same config continues from the newest checkpoint: parameters, Adam state, step,
    RNG and every process's sampler position are restored, so an interrupted run ends where an
    uninterrupted one would. on_start(info) receives the run facts before the first step (start step,
    parameter counts, devices); on_log(record) each metrics record (also appended to RUN/metrics.jsonl);
    on_step(step) every step.
    """

    began = time.perf_counter()
    method = config.learner.get_method()
    games = resolve_games(config.games)
    game_names = [g.name for g in games]
    num_actions = num_actions_for(config.network, games)
    mesh = make_mesh()
    local_batch = check_batch_size(config.batch_size, mesh)
    primary = jax.process_index() == 0
    check_memory(config, len(games), local_batch, mesh.devices.size)  # before the sampler allocates anything

    sampler = make_sampler(config, games, local_batch)
    try:
        sampler_games = [g.name for g in sampler.games]
        if sampler_games != game_names:
            raise UsageError(f"the sampler serves games {sampler_games}, not the {len(games)} asked for",
                             hint="pass --games in the store's order or check the store")

        counts = parameter_table(config.network, games, method.head)["parts"]
        identity = run_identity(config.network.to_dict(), game_names, num_actions, method.name)
        names = tuple(game_names)
        run = OfflineRun(config.run_dir, command=COMMAND, identity=identity, config=config.to_dict(),
                         parameter_counts=counts, seed=config.seed, steps=config.steps, batch_size=config.batch_size,
                         log_every=config.log_every, checkpoint_every=config.checkpoint_every, keep=config.keep,
                         prefetch=config.prefetch, write=primary)

        def started(start_step: int, resumed_from: int | None) -> None:
            if on_start is not None:
                on_start({"start_step": start_step, "resumed_from": resumed_from, "parameter_counts": counts,
                          "devices": mesh.devices.size, "processes": jax.process_count(), "games": game_names,
                          "method": method.name})

        result = train_offline(
            run, sampler=sampler, mesh=mesh, method=method, game_names=game_names,
            train_step=make_train_step(config.network, num_actions, config.learner, mesh, games=names),
            abstract_state=abstract_train_state(config.network, num_actions, config.learner, mesh, names),
            initial_state=lambda: init_train_state(config.network, num_actions, config.learner, config.seed, mesh, names),
            on_start=started, on_log=on_log, on_step=on_step)
    finally:
        sampler.close()
    return {
        "run_dir": str(Path(config.run_dir)), "method": method.name, "steps": int(jax.device_get(result.state.step)),
        "start_step": result.start_step, "resumed_from": result.resumed_from, "checkpoint_step": result.checkpoint_step,
        "games": game_names, "num_parameters": int(sum(counts.values())), "parameter_counts": counts,
        "devices": int(mesh.devices.size), "processes": jax.process_count(), "last_metrics": result.last_metrics,
        "seconds": time.perf_counter() - began,
    }

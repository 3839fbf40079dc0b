"""Run directories, Orbax checkpoints, resuming, and loading a trained policy.

    RUN/run.json          config (network, learner, games, num_actions, data), parameter counts, provenance
    RUN/metrics.jsonl     one JSON object per logging step
    RUN/checkpoints/N/    Orbax checkpoint of step N: item `state` (params, target params, Adam state, step,
                          RNG) and item `meta` (JSON: the run's identity and every process's sampler state)

A checkpoint is only ever restored into a run of the same identity (network config and game list): the
identity is compared before any array is read, so a mismatch is a one-line error, not a shape error deep in
Orbax. Arrays are restored with the caller's shardings, so a run saved on 8 devices resumes on 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.atari.games import Game
from sqlcli_core.atomic import atomic_output, write_json
from sqlcli_core.errors import DataError, NonFiniteError, SqlError, SqlWarning, UsageError, from_os_error
from sqlcli_core.methods import DEFAULT_METHOD, get_method
from sqlcli_core.provenance import provenance
from sqlcli_core.training import integrity
from sqlcli_core.training.metrics import METRICS_FILE

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged-checkpoints"
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
    from sqlcli_core.networks import config_class
    from sqlcli_core.training.lifecycle import settings_difference

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


# ---------------------------------------------------------------------------------------------------------
# The run directory


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


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _gather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-able), in process order. Collective: all processes must call it."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    longest = int(np.max(lengths))
    padded = np.zeros((longest,), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), longest)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, np.ravel(lengths))]


class Checkpointer:
    """An Orbax CheckpointManager for one run: async saves every `every` steps, keeps the newest `keep`.

    `save` is collective (every process calls it; Orbax writes each array once); the sampler states of
    all processes are gathered into the JSON item, indexed by process. Every save carries the checksums of
    what it saves (`integrity`) and refuses a non-finite state; `restore_intact` verifies them and falls
    back to the newest intact checkpoint.
    """

    def __init__(self, run_dir: str | os.PathLike, identity: dict, *, every: int = 1000, keep: int = 3,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        if every < 1 or keep < 1:
            raise UsageError("--checkpoint-every and --keep must be at least 1", hint="e.g. --checkpoint-every 1000 --keep 3")
        self.directory = Path(run_dir).absolute() / CHECKPOINT_DIR
        self.identity = identity
        self.every = every
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # `save` decides; Orbax would also save the first step it sees
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=not read_only, read_only=read_only)
        with orbax_errors(f"opening the checkpoints in {self.directory}"):
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, sampler_state: dict | None, *, force: bool = False) -> bool:
        """Save when `step` is a multiple of `every` (or `force`); returns whether a save started.

        A state with a non-finite float in its params, target params or optimizer state is never saved
        (NonFiniteError, exit 6).
        """
        if not force and step % self.every:
            return False
        if step in self.manager.all_steps():
            return False
        bad = integrity.first_non_finite(state)
        if bad is not None:
            raise NonFiniteError(f"training diverged: the {bad} hold non-finite values at step {step}",
                                 step=step)
        sampler_states = _gather_json(sampler_state)
        meta = integrity.seal_meta({"step": int(step), "identity": self.identity, "process_count": jax.process_count(),
                                    "sampler_states": sampler_states}, integrity.state_checksums(state))
        ocp = self._ocp
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            return bool(self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True))

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON item of checkpoint `step` (default: newest), checked against its own checksum."""
        step = self._step_or_latest(step)
        ocp = self._ocp
        try:
            meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as exc:  # Orbax raises many kinds for a missing or unparsable item
            raise integrity.CheckpointDamaged(f"its JSON item cannot be read ({_first_line(exc)})") from None
        integrity.verify_meta(meta)
        return meta

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of checkpoint `step` (default: newest), arrays placed as `abstract_state` says.

        Refuses, before reading arrays, a checkpoint whose identity differs from this run's; a damaged
        checkpoint is a DataError naming it (`restore_intact` falls back instead).
        """
        step = self._step_or_latest(step)
        try:
            return self._restore_verified(lambda meta: abstract_state, step)
        except integrity.CheckpointDamaged as exc:
            raise damaged_error(self.directory / str(step), exc.reason) from None

    def restore_intact(self, abstract_for: Callable[[dict], Any], step: int | None = None
                       ) -> tuple[Any, dict, int, list[tuple[int, str]]]:
        """(state, meta, step, damaged) of the newest intact checkpoint (or of `step`, which must be intact).

        abstract_for(meta) gives the restore target (shapes and shardings) of a checkpoint. damaged: the
        (step, reason) of every newer checkpoint that failed verification; each is also a SqlWarning.
        None of them intact: a DataError (exit 3) naming them.
        """
        candidates = [self._step_or_latest(step)] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not candidates:
            raise DataError(f"no checkpoint in {self.directory}", hint="train with `sql pretrain` first")
        damaged: list[tuple[int, str]] = []
        for candidate in candidates:
            try:
                state, meta = self._restore_verified(abstract_for, candidate)
            except integrity.CheckpointDamaged as exc:
                damaged.append((candidate, exc.reason))
                continue
            for bad, reason in damaged:
                warnings.warn(f"checkpoint {self.directory / str(bad)} is damaged ({reason}); using checkpoint "
                              f"{candidate} instead", SqlWarning, stacklevel=2)
            return state, meta, candidate, damaged
        bad, reason = damaged[0]
        raise damaged_error(self.directory / str(bad), reason, others=len(damaged) - 1)

    def _restore_verified(self, abstract_for: Callable[[dict], Any], step: int):
        meta = self.read_meta(step)
        diff = _identity_difference(meta.get("identity", {}), self.identity)
        if diff is not None:
            raise UsageError(f"checkpoint {self.directory / str(step)} belongs to a different run ({diff})",
                             hint="restore it with the settings it was trained with, or pass another --run-dir")
        abstract = abstract_for(meta)
        ocp = self._ocp
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as exc:  # a truncated or missing array file: Orbax raises many kinds
            raise integrity.CheckpointDamaged(f"its arrays cannot be read ({_first_line(exc)})") from None
        state = jax.tree.unflatten(jax.tree.structure(abstract), jax.tree.leaves(restored.state))
        integrity.verify_items(integrity.top_items(state), meta)
        return state, meta

    def set_aside(self, steps: Sequence[int]) -> Path | None:
        """Move damaged checkpoints out of the way (to RUN/damaged-checkpoints/), so that new saves can take
        their steps; returns the folder. Only the writing process calls this."""
        if not steps:
            return None
        aside = self.directory.parent / DAMAGED_DIR
        for step in steps:
            target = aside / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.directory / str(step), target)
            except OSError as exc:
                raise from_os_error(exc, f"moving the damaged checkpoint {step} aside") from None
        self.manager.reload()
        return aside

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.manager.latest_step()
        if step is None:
            raise DataError(f"no checkpoint in {self.directory}", hint="train with `sql pretrain` first")
        if step not in self.manager.all_steps():
            raise DataError(f"no checkpoint of step {step} in {self.directory}",
                            hint=f"available steps: {self.manager.all_steps()}")
        return step

    def wait(self) -> None:
        """Block until async saves are on disk."""
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with orbax_errors(f"writing checkpoints to {self.directory}"):
            self.manager.wait_until_finished()
            self.manager.close()


def damaged_error(path: Path, reason: str, others: int = 0) -> DataError:
    more = f" (and {others} older checkpoint{'s' if others > 1 else ''} too)" if others else ""
    return DataError(f"checkpoint {path} is damaged: {reason}{more}",
                     hint="no intact checkpoint to use; restore the run directory from a copy or train again")


def _first_line(exc: BaseException) -> str:
    """`Type: first sentence` of an exception, short enough for a one-line error."""
    text = (str(exc).strip().splitlines() or [""])[0].split(". See full")[0][:120]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError that caused `exc`, if any: Orbax wraps them, and TensorStore reports them as a ValueError
    whose text carries `[os_error_code='28']`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        found = re.search(r"os_error_code='(\d+)'", str(exc))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def orbax_errors(action: str):
    """OS errors raised by Orbax (directly, wrapped, or from its background save thread) as one-line
    SqlErrors: a full disk is exit 5, a read-only or unusable path exit 2 (`errors.from_os_error`)."""
    try:
        yield
    except SqlError:
        raise
    except Exception as exc:
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        raise from_os_error(os_error, action) from None


# ---------------------------------------------------------------------------------------------------------
# Loading a policy


@dataclasses.dataclass
class RunPolicy:
    """A trained multi-game network of a run, ready to act (an `evaluation.evaluate.QPolicy`).

    games: the run's games, in head order (batch `game` ids index this list). run_config: run.json's
    record. step: the checkpoint's gradient step. params: the online network's parameters. method: the run's
    method name (acting plays the argmax of `q_values`, which are the method's action values).
    """

    games: list[Game]
    run_config: dict
    step: int
    params: Any
    network_config: Any
    num_actions: tuple[int, ...]
    method: str = DEFAULT_METHOD
    _q_fn: Callable = dataclasses.field(repr=False, default=None)

    def q_values(self, obs: np.ndarray, game: np.ndarray) -> np.ndarray:
        """obs (N, 4, 84, 84) uint8, game (N,) int32 -> (N, A_max) float32 action values.

        Expected returns for value methods (scaled-ql, c51), policy logits for bc. Entries of actions outside
        each sample's game are -inf, so an argmax never picks them.
        """
        game = np.asarray(game, np.int32)
        if game.size and (game.min() < 0 or game.max() >= len(self.games)):
            raise UsageError(f"game ids must lie in 0..{len(self.games) - 1}, got {game.min()}..{game.max()}",
                             hint="index games as in policy.games")
        return np.asarray(self._q_fn(self.params, jnp.asarray(obs, jnp.uint8), jnp.asarray(game)))


@dataclasses.dataclass
class SequenceRunPolicy:
    """A trained sequence model of a run (the Decision Transformer), ready to act (`evaluation.SequencePolicy`).

    Same fields as RunPolicy; instead of q_values it hands out actors that keep each emulator slot's context:
    `actor(num_envs)` -> an object with start_episodes / act / record (`Method.make_actor`; for dt a
    `methods.decision_transformer.DecisionTransformerPolicy`, acting by expert action inference).
    """

    games: list[Game]
    run_config: dict
    step: int
    params: Any
    network_config: Any
    num_actions: tuple[int, ...]
    method: str
    _network: Any = dataclasses.field(repr=False, default=None)

    def actor(self, num_envs: int, acting: Any = None):
        """acting: the method's acting settings (dt: `evaluation.acting_settings.DTActing`); None: its defaults."""
        return get_method(self.method).make_actor(self._network, self.params, self.network_config, num_envs, acting)


def make_q_fn(network_config, num_actions: Sequence[int], method: str = DEFAULT_METHOD,
              games: Sequence[str] | None = None) -> Callable:
    """Jitted (params, obs (N,4,84,84) uint8, game (N,) int32) -> (N, A_max) action values, -inf off each game.

    The values are the method's acting output (`Method.make_action_values`): Q for scaled-ql and c51, the
    policy logits for bc. Acting never depends on the loss family.
    """
    from sqlcli_core import networks

    m = get_method(method)
    network = m.network(network_config, tuple(num_actions), None if games is None else tuple(games))
    return m.make_action_values(network, networks.action_mask(tuple(num_actions)))


def _resolve_checkpoint(path: Path) -> tuple[Path, int | None]:
    """(run directory, step or None for newest) from a run directory, its checkpoints/ or one step's folder."""
    if (path / RUN_FILE).exists():
        return path, None
    if path.name == CHECKPOINT_DIR and (path.parent / RUN_FILE).exists():
        return path.parent, None
    if path.name.isdigit() and path.parent.name == CHECKPOINT_DIR and (path.parent.parent / RUN_FILE).exists():
        return path.parent.parent, int(path.name)
    raise DataError(f"{path} is neither a run directory nor one of its checkpoints",
                    hint="pass RUN (newest checkpoint) or RUN/checkpoints/STEP")


def load_policy(run_or_checkpoint: str | os.PathLike) -> RunPolicy | SequenceRunPolicy:
    """The online network of a run's newest intact checkpoint (or of RUN/checkpoints/STEP): a RunPolicy, or a
    SequenceRunPolicy for a method that acts on a context of steps (dt).

    Checkpoints are verified against their checksums: from RUN, a damaged newest checkpoint is skipped with a
    SqlWarning for the newest intact one; a damaged RUN/checkpoints/STEP (or none intact) is a DataError.
    A checkpoint whose parameters do not fit the architecture run.json declares is a DataError too.
    """
    from sqlcli_core import networks

    path = Path(run_or_checkpoint)
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="pass a run directory written by `sql pretrain`")
    run_dir, step = _resolve_checkpoint(path)
    record = read_run(run_dir)
    identity = record["identity"]
    network_config = networks.config_from_dict(identity["network"])
    num_actions = tuple(identity["num_actions"])
    method = get_method(identity_method(identity))
    network = method.network(network_config, num_actions, tuple(identity["games"]))
    expected = jax.eval_shape(network.init, jax.random.PRNGKey(0),
                              *method.init_inputs(network_config))
    checkpointer = Checkpointer(run_dir, identity, read_only=True)
    try:
        candidates = ([checkpointer._step_or_latest(step)] if step is not None
                      else sorted(checkpointer.manager.all_steps(), reverse=True))
        if not candidates:
            raise DataError(f"no checkpoint in {checkpointer.directory}", hint="train with `sql pretrain` first")
        damaged: list[tuple[int, str]] = []
        for candidate in candidates:
            try:
                params = _read_params(checkpointer, Path(run_dir), candidate, expected, network_config)
            except integrity.CheckpointDamaged as exc:
                damaged.append((candidate, exc.reason))
                continue
            for bad, reason in damaged:
                warnings.warn(f"checkpoint {checkpointer.directory / str(bad)} is damaged ({reason}); using "
                              f"checkpoint {candidate} instead", SqlWarning, stacklevel=2)
            step = candidate
            break
        else:
            bad, reason = damaged[0]
            raise damaged_error(checkpointer.directory / str(bad), reason, others=len(damaged) - 1)
    finally:
        checkpointer.close()

    games = [Game(n) for n in identity["games"]]
    if method.make_action_values is None:
        return SequenceRunPolicy(games=games, run_config=record, step=int(step), params=params,
                                 network_config=network_config, num_actions=num_actions, method=method.name,
                                 _network=network)
    q_fn = make_q_fn(network_config, num_actions, method.name, identity["games"])
    return RunPolicy(games=games, run_config=record, step=int(step), params=params,
                     network_config=network_config, num_actions=num_actions, method=method.name, _q_fn=q_fn)


def _read_params(checkpointer: Checkpointer, run_dir: Path, step: int, expected: Any, network_config) -> Any:
    """The verified float32 `params` of checkpoint `step` (CheckpointDamaged when it cannot be trusted)."""
    from sqlcli_core import networks

    meta = checkpointer.read_meta(step)
    saved = saved_param_shapes(checkpointer.directory / str(step) / "state")
    has_torso = any(m.split("/", 1)[0] == "torso" for m in expected)  # a sequence model (dt) has none
    if has_torso and not any(m.split("/", 1)[0] == "torso" for m in saved):
        raise DataError(f"checkpoint of {run_dir} holds no torso parameters",
                        hint="pass a run written by `sql pretrain` (its checkpoints save the whole network)")
    order = {part: i for i, part in enumerate(networks.PARTS)}
    for module in sorted(expected, key=lambda m: (order.get(m.split("/", 1)[0], len(order)), m)):  # torso first
        for name, leaf in expected[module].items():
            got = saved.get(module, {}).get(name)
            if got != tuple(leaf.shape):
                raise DataError(
                    f"checkpoint of {run_dir} does not match its architecture ({module}/{name} is "
                    f"{got if got is not None else 'missing'}, {network_config.arch} width {network_config.width} "
                    f"needs {tuple(leaf.shape)})",
                    hint="the run directory was mixed up; pass the run that wrote this checkpoint")
    diff = _identity_difference(meta.get("identity", {}), checkpointer.identity)
    if diff is not None:
        raise DataError(f"checkpoint {step} of {run_dir} does not match its run.json ({diff})",
                        hint="the run directory was mixed up; train again or restore run.json")
    ocp = checkpointer._ocp
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32, sharding=sharding), expected)}
    try:
        restored = checkpointer.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                         partial_restore=True)))
    except Exception as exc:  # a truncated or missing array file: Orbax raises many kinds
        raise integrity.CheckpointDamaged(f"its arrays cannot be read ({_first_line(exc)})") from None
    params = restored.state["params"]
    integrity.verify_items({"params": params}, meta)
    return params


def saved_param_shapes(directory: Path) -> dict[str, dict[str, tuple]]:
    """{module: {name: shape}} of the `params` saved in a checkpoint's state item, from Orbax's metadata only."""
    import orbax.checkpoint as ocp

    try:
        meta = ocp.PyTreeCheckpointer().metadata(directory)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        params = tree.get("params") if hasattr(tree, "get") else None
    except Exception as exc:  # Orbax raises many kinds for unreadable metadata
        raise integrity.CheckpointDamaged(f"its array metadata cannot be read ({_first_line(exc)})") from None
    if not params:
        raise DataError(f"checkpoint {directory} holds no network parameters",
                        hint="pass a run written by `sql pretrain`")
    return {module: {name: tuple(getattr(leaf, "shape", ()) or ()) for name, leaf in leaves.items()}
            for module, leaves in params.items()}

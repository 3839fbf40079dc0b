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

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.atari.games import Game
from sqlcli_core.atomic import atomic_output, write_json
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.methods import DEFAULT_METHOD, get_method
from sqlcli_core.provenance import provenance
from sqlcli_core.training.metrics import METRICS_FILE

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
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
    from sqlcli_core.networks import NetworkConfig
    from sqlcli_core.training.lifecycle import settings_difference

    if identity_method(saved) != identity_method(wanted):
        return f"method {identity_method(saved)} vs {identity_method(wanted)}"
    if saved.get("games") != wanted.get("games"):
        return f"games {_short(saved.get('games'))} vs {_short(wanted.get('games'))}"
    saved_net, wanted_net = saved.get("network", {}), wanted.get("network", {})
    defaults = NetworkConfig().to_dict()
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
    all processes are gathered into the JSON item, indexed by process.
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
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, sampler_state: dict | None, *, force: bool = False) -> bool:
        """Save when `step` is a multiple of `every` (or `force`); returns whether a save started."""
        if not force and step % self.every:
            return False
        if step in self.manager.all_steps():
            return False
        sampler_states = _gather_json(sampler_state)
        meta = {"step": int(step), "identity": self.identity, "process_count": jax.process_count(),
                "sampler_states": sampler_states}
        ocp = self._ocp
        return bool(self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True))

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON item of checkpoint `step` (default: newest)."""
        step = self._step_or_latest(step)
        ocp = self._ocp
        return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, abstract_state, step: int | None = None):
        """(state, meta) of checkpoint `step` (default: newest), arrays placed as `abstract_state` says.

        Refuses, before reading arrays, a checkpoint whose identity differs from this run's.
        """
        step = self._step_or_latest(step)
        meta = self.read_meta(step)
        diff = _identity_difference(meta.get("identity", {}), self.identity)
        if diff is not None:
            raise UsageError(f"checkpoint {self.directory / str(step)} belongs to a different run ({diff})",
                             hint="restore it with the settings it was trained with, or pass another --run-dir")
        ocp = self._ocp
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored.state, meta

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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


def make_q_fn(network_config, num_actions: Sequence[int], method: str = DEFAULT_METHOD) -> Callable:
    """Jitted (params, obs (N,4,84,84) uint8, game (N,) int32) -> (N, A_max) action values, -inf off each game.

    The values are the method's acting output (`Method.make_action_values`): Q for scaled-ql and c51, the
    policy logits for bc. Acting never depends on the loss family.
    """
    from sqlcli_core import networks

    m = get_method(method)
    network = m.network(network_config, tuple(num_actions))
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


def load_policy(run_or_checkpoint: str | os.PathLike) -> RunPolicy:
    """The online network of a run's newest checkpoint (or of RUN/checkpoints/STEP) as a RunPolicy."""
    from sqlcli_core import networks

    path = Path(run_or_checkpoint)
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="pass a run directory written by `sql pretrain`")
    run_dir, step = _resolve_checkpoint(path)
    record = read_run(run_dir)
    identity = record["identity"]
    network_config = networks.NetworkConfig.from_dict(identity["network"])
    num_actions = tuple(identity["num_actions"])
    method = get_method(identity_method(identity))
    checkpointer = Checkpointer(run_dir, identity, read_only=True)
    try:
        step = checkpointer._step_or_latest(step)
        meta = checkpointer.read_meta(step)
        diff = _identity_difference(meta.get("identity", {}), identity)
        if diff is not None:
            raise DataError(f"checkpoint {step} of {run_dir} does not match its run.json ({diff})",
                            hint="the run directory was mixed up; train again or restore run.json")
        ocp = checkpointer._ocp
        abstract = jax.eval_shape(method.network(network_config, num_actions).init, jax.random.PRNGKey(0),
                                  *method.init_inputs(network_config))
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32, sharding=sharding), abstract)}
        restored = checkpointer.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                         partial_restore=True)))
        params = restored.state["params"]
    finally:
        checkpointer.close()

    q_fn = make_q_fn(network_config, num_actions, method.name)
    return RunPolicy(games=[Game(n) for n in identity["games"]], run_config=record, step=int(step), params=params,
                     network_config=network_config, num_actions=num_actions, method=method.name, _q_fn=q_fn)

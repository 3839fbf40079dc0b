"""Loading a trained policy from a run directory or one checkpoint: `load_policy` (what eval, collect and
fine-tuning act with)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.errors import DataError, SqlWarning, UsageError
from sqlcli_core.games.catalog import Game
from sqlcli_core.methods.catalog import DEFAULT_METHOD
from sqlcli_core.methods.registry import get_method
from sqlcli_core.networks.config import config_from_dict
from sqlcli_core.networks.network import PARTS, action_mask
from sqlcli_core.runs import checksums
from sqlcli_core.runs.checkpointer import CHECKPOINT_DIR, Checkpointer, _first_line, damaged_error, saved_param_shapes
from sqlcli_core.runs.run_record import RUN_FILE, _identity_difference, identity_method, read_run


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
        """acting: the method's acting settings (dt: `methods.acting_settings.DTActing`); None: its defaults."""
        return get_method(self.method).make_actor(self._network, self.params, self.network_config, num_envs, acting)


def make_q_fn(network_config, num_actions: Sequence[int], method: str = DEFAULT_METHOD,
              games: Sequence[str] | None = None) -> Callable:
    """Jitted (params, obs (N,4,84,84) uint8, game (N,) int32) -> (N, A_max) action values, -inf off each game.

    The values are the method's acting output (`Method.make_action_values`): Q for scaled-ql and c51, the
    policy logits for bc. Acting never depends on the loss family.
    """

    m = get_method(method)
    network = m.network(network_config, tuple(num_actions), None if games is None else tuple(games))
    return m.make_action_values(network, action_mask(tuple(num_actions)))


class ParamsPolicy:
    """A QPolicy over parameters still in training (the fine-tuning evaluations; `load_policy` reads from disk)."""

    def __init__(self, game: Game, q_fn: Callable, params: Any, step: int | None):
        self.games = [game]
        self.run_config: dict = {}
        self.step = step
        self._q_fn = q_fn
        self.params = params

    def q_values(self, obs: np.ndarray, game: np.ndarray) -> np.ndarray:
        return np.asarray(self._q_fn(self.params, jnp.asarray(obs, jnp.uint8), jnp.asarray(game, jnp.int32)))


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

    path = Path(run_or_checkpoint)
    if not path.exists():
        raise DataError(f"{path} does not exist", hint="pass a run directory written by `sql pretrain`")
    run_dir, step = _resolve_checkpoint(path)
    record = read_run(run_dir)
    identity = record["identity"]
    network_config = config_from_dict(identity["network"])
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
            except checksums.CheckpointDamaged as exc:
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

    meta = checkpointer.read_meta(step)
    saved = saved_param_shapes(checkpointer.directory / str(step) / "state")
    has_torso = any(m.split("/", 1)[0] == "torso" for m in expected)  # a sequence model (dt) has none
    if has_torso and not any(m.split("/", 1)[0] == "torso" for m in saved):
        raise DataError(f"checkpoint of {run_dir} holds no torso parameters",
                        hint="pass a run written by `sql pretrain` (its checkpoints save the whole network)")
    order = {part: i for i, part in enumerate(PARTS)}
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
        raise checksums.CheckpointDamaged(f"its arrays cannot be read ({_first_line(exc)})") from None
    params = restored.state["params"]
    checksums.verify_items({"params": params}, meta)
    return params

"""Transfer: a one-game network whose shared parts come from a pre-trained multi-game run.

Both fine-tuning commands (offline to a held-out game, online to a game variant) build the same thing:

    pre-trained run (G games)                       fine-tuned network (1 game)
    torso, spatial_embedding, projection  --copy-->  torso, spatial_embedding, projection
    heads (D, sum_g A_g * atoms)          --game g's columns, when g was pre-trained--> heads (D, A * atoms)
                                          --otherwise a fresh head

Fine-tuning trains the run's network with the Scaled QL update (C51 + alpha * CQL; alpha 0 = C51),
whatever method pre-trained it. From a behaviour-cloning run the shared parts transfer and the head is
fresh (a policy head has one logit per action, not a return distribution): the BC representation is the
starting point of Q-learning on the new game.

`--init scratch` keeps the architecture (the run's NetworkConfig) and initialises everything afresh: the
baseline that isolates what pre-training brings. Freezing is done in the optimizer (the frozen parts'
updates are set to zero) handed to `make_train_step`, so the update is the learner's own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game
from sqlcli_core.methods.catalog import DEFAULT_METHOD
from sqlcli_core.methods.registry import get_method
from sqlcli_core.networks.config import num_actions_for
from sqlcli_core.networks.heads import head_offsets
from sqlcli_core.networks.network import abstract_params, build_network, values_per_action
from sqlcli_core.runs.policy import _resolve_checkpoint, load_policy
from sqlcli_core.runs.run_record import identity_method, read_run
from sqlcli_core.training.configs import FREEZE_CHOICES, INITS
from sqlcli_core.training.mesh import make_mesh
from sqlcli_core.training.update import make_optimizer, make_train_step

SHARED_PARTS = ("torso", "spatial_embedding", "projection")
FINETUNE_HEAD = get_method(DEFAULT_METHOD).head  # fine-tuning trains Scaled QL: categorical heads


@dataclasses.dataclass
class Pretrained:
    """What fine-tuning takes from a pre-training run: its architecture, games and online parameters."""

    run_dir: Path
    step: int
    network_config: Any  # NetworkConfig
    games: list[Game]
    num_actions: tuple[int, ...]
    params: Any  # haiku params of the online network (host or device arrays)
    method: str = DEFAULT_METHOD  # the pre-training method (its head kind decides whether heads transfer)

    def describe(self) -> dict:
        return {"run": str(self.run_dir), "step": self.step, "arch": self.network_config.arch,
                "width": self.network_config.width, "games": [g.name for g in self.games], "method": self.method}


def part_of(module: str) -> str:
    """The part (torso, spatial_embedding, projection, heads) a haiku module name belongs to."""
    return module.split("/", 1)[0]


def load_pretrained(run_or_checkpoint: str | os.PathLike) -> Pretrained:
    """Read the newest checkpoint of a pre-training run (or RUN/checkpoints/STEP).

    Refuses, with one line each: a path that is no run, a checkpoint that holds no torso, a checkpoint
    whose arrays do not match the architecture its run.json declares, and damaged checkpoints (from RUN, the
    newest intact one is used with a warning, as `load_policy` does).
    """

    path = Path(run_or_checkpoint)
    if not path.exists():
        raise DataError(f"pre-trained run {path} does not exist", hint="pass --from RUN written by `sql pretrain`")
    run_dir, step = _resolve_checkpoint(path)
    record = read_run(run_dir)
    identity = record.get("identity") or {}
    method = get_method(identity_method(identity))
    if method.finetune is not None:  # before reading the network: a dt run has another network config
        raise UsageError(f"runs of method {method.name} cannot be fine-tuned: {method.finetune}",
                         hint="fine-tune a scaled-ql, c51 or bc run")
    if (identity.get("network") or {}).get("full_action_space"):  # only older sql trained these, unmapped
        raise UsageError(f"run {run_dir} was trained with full_action_space, whose heads misread the data's "
                         "minimal-set actions", hint="fine-tune a run trained on minimal action sets")
    policy = load_policy(path)  # verified; the architecture checked against run.json
    return Pretrained(run_dir=Path(run_dir), step=policy.step, network_config=policy.network_config,
                      games=list(policy.games), num_actions=tuple(policy.num_actions), params=policy.params,
                      method=method.name)


def finetune_num_actions(network_config, game: Game) -> tuple[int]:
    """The one-game head size: the game's minimal action set, or 18 when the run used the full set."""

    return num_actions_for(network_config, [game])


def head_module(params: Any) -> str:
    """Name of the (single) module that holds every game's head."""
    names = [m for m in params if part_of(m) == "heads"]
    if len(names) != 1:
        raise DataError(f"expected one head module, found {names}", hint="the parameters were not built by sql")
    return names[0]


def head_columns(params: Any, num_actions: Sequence[int], per_action: int, game: int) -> dict[str, np.ndarray]:
    """Game `game`'s slice of a multi-game head: {"w": (D, A_g * per_action), "b": (A_g * per_action,)}.

    per_action: columns per action (values_per_action: the atoms of a categorical head, 1 for a
    policy head)."""

    offsets = head_offsets(num_actions, per_action)
    lo, hi = int(offsets[game]), int(offsets[game + 1])
    head = params[head_module(params)]
    return {"w": np.asarray(head["w"])[:, lo:hi], "b": np.asarray(head["b"])[lo:hi]}


def transfer_params(fresh: Any, source: Any, *, parts: Sequence[str] = SHARED_PARTS,
                    head: dict[str, np.ndarray] | None = None) -> Any:
    """A copy of `fresh` (the one-game network's initial params) with `parts` taken from `source`.

    head: optional {"w", "b"} for the one-game head (see head_columns). Every copied array must have the
    fresh array's shape; otherwise the two networks are of different architectures (DataError).
    """
    out = {module: dict(leaves) for module, leaves in fresh.items()}
    for module, leaves in fresh.items():
        if part_of(module) not in parts:
            continue
        if module not in source:
            raise DataError(f"the pre-trained parameters have no module '{module}'",
                            hint="fine-tune from a run of the same architecture")
        for name, leaf in leaves.items():
            src = source[module].get(name)
            if src is None or tuple(np.shape(src)) != tuple(np.shape(leaf)):
                raise DataError(f"pre-trained {module}/{name} has shape {None if src is None else np.shape(src)}, "
                                f"the fine-tuned network needs {np.shape(leaf)}",
                                hint="fine-tune from a run of the same architecture")
            out[module][name] = jnp.asarray(src, leaf.dtype)
    if head is not None:
        module = head_module(fresh)
        for name in ("w", "b"):
            if tuple(np.shape(head[name])) != tuple(np.shape(fresh[module][name])):
                raise DataError(f"the pre-trained head has shape {np.shape(head[name])}, "
                                f"the fine-tuned one needs {np.shape(fresh[module][name])}",
                                hint="the game's action set differs from pre-training")
            out[module][name] = jnp.asarray(head[name], fresh[module][name].dtype)
    return out


def trainable_labels(params: Any, freeze: str) -> Any:
    """Per-leaf labels 'train' or 'freeze': `torso` freezes the torso, `shared` everything but the head."""
    if freeze not in FREEZE_CHOICES:
        raise UsageError(f"unknown --freeze '{freeze}'", hint="choose one of " + ", ".join(FREEZE_CHOICES))
    frozen = {"none": (), "torso": ("torso",), "shared": SHARED_PARTS}[freeze]
    return {module: {name: "freeze" if part_of(module) in frozen else "train" for name in leaves}
            for module, leaves in params.items()}


def make_finetune_optimizer(learner_config, labels: Any) -> optax.GradientTransformation:
    """The learner's optimizer on trainable leaves; frozen leaves get zero updates (and no Adam state)."""

    return optax.multi_transform({"train": make_optimizer(learner_config), "freeze": optax.set_to_zero()},
                                 labels)


@functools.lru_cache(maxsize=8)
def _jitted_init(network_config, num_actions: tuple[int, ...]) -> Callable:
    """network.init, jitted once per architecture: op-by-op initialisation compiles every random
    primitive separately (tens of seconds on a CPU)."""

    return jax.jit(build_network(network_config, num_actions).init)


@functools.lru_cache(maxsize=8)
def cached_finetune_step(network_config, num_actions: tuple[int, ...], learner_config, freeze: str,
                         devices: tuple) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, jitted step) for one setting, built once per process so that several runs in one
    process (the benchmark, tests) compile once. `devices`: the mesh's devices."""

    labels = trainable_labels(abstract_params(network_config, num_actions), freeze)
    optimizer = make_finetune_optimizer(learner_config, labels)
    mesh = make_mesh(list(devices))
    return optimizer, make_train_step(network_config, num_actions, learner_config, mesh, optimizer=optimizer)


def initial_params(network_config, num_actions: Sequence[int], seed: int, *, init: str,
                   pretrained: Pretrained | None, game: Game, freeze: str) -> tuple[Any, dict]:
    """The fine-tuned network's starting params and a record of where each part came from.

    init 'pretrained': shared parts from the run, plus the game's own head when it was pre-trained with a
    head of the same kind (categorical); 'scratch': a fresh network of the same architecture. Returns (params, {"init", "head", "parts"}).
    """
    if init not in INITS:
        raise UsageError(f"unknown --init '{init}'", hint="choose pretrained or scratch")
    if init == "scratch" and freeze != "none":
        raise UsageError(f"--freeze {freeze} needs pre-trained parts to freeze", hint="use --init pretrained")
    fresh = _jitted_init(network_config, tuple(num_actions))(
        jax.random.PRNGKey(seed), jnp.zeros((1, 4, 84, 84), jnp.uint8), jnp.zeros((1,), jnp.int32))
    if init == "scratch":
        return fresh, {"init": "scratch", "head": "fresh", "parts": []}
    assert pretrained is not None

    head = None
    names = [g.name for g in pretrained.games]
    if game.name in names and get_method(pretrained.method).head == FINETUNE_HEAD:
        g = names.index(game.name)
        head = head_columns(pretrained.params, pretrained.num_actions,
                            values_per_action(network_config, FINETUNE_HEAD), g)
    params = transfer_params(fresh, pretrained.params, head=head)
    return params, {"init": "pretrained", "head": "pretrained" if head is not None else "fresh",
                    "parts": list(SHARED_PARTS), "from": pretrained.describe()}

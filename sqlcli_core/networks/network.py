"""The Scaled QL network family: a torso, the shared neck, and per-game C51 heads.

    obs (B, 4, 84, 84) uint8, game (B,) int32
      -> channels-last float in [0, 1]                       (B, 84, 84, 4)
      -> torso: dqn | impala | resnet{18,34,50,101,152}      (B, H, W, C)
      -> learned spatial embedding                           (B, C * F)
      -> dense projection + ReLU                             (B, D)
      -> L2 feature normalization                            (B, D)
      -> the sample's own game's linear head                 (B, A_max, K) float32 logits
      -> typed outputs (the head kind, chosen by the method):
           "categorical": CategoricalOutputs(logits (B, A_max, num_atoms), q_values (B, A_max))
           "policy":      PolicyOutputs(logits (B, A_max))

Every torso gets the same neck and heads, so a scaling comparison varies only the torso. Parameters are
grouped in four top-level modules, `torso`, `spatial_embedding`, `projection`, `heads`, which is how
`count_parameters` splits them and how fine-tuning can keep a torso and drop the heads.
See docs/networks.md for the choices and which ones are the paper's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.networks import decision_transformer
from sqlcli_core.networks.config import FULL_ACTION_SPACE, NetworkConfig, num_actions_for
from sqlcli_core.networks.decision_transformer import DecisionTransformerConfig
from sqlcli_core.networks.dqn_cnn import DqnCnn
from sqlcli_core.networks.heads import MultiGameHeads, SpatialEmbedding, l2_normalize, padded_action_mask
from sqlcli_core.networks.impala import ImpalaCnn
from sqlcli_core.networks.resnet import ResNet

PARTS = ("torso", "spatial_embedding", "projection", "heads")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# One network input: the 4 stacked 84x84 frames, frame-major (acting.ale_env's FRAME_SHAPE is one frame).
INPUT_SHAPE = (4, 84, 84)


class CategoricalOutputs(NamedTuple):
    """What the categorical (C51) heads give: per-action return distributions and their means.

    logits (B, A_max, num_atoms) float32; q_values (B, A_max) float32 = sum_j z_j softmax(logits)_j.
    Entries of actions outside a sample's game are meaningless (logits 0): mask them (action_mask).
    """

    logits: jax.Array
    q_values: jax.Array


class PolicyOutputs(NamedTuple):
    """What the policy heads give: one logit per action, logits (B, A_max) float32 (0 off the game)."""

    logits: jax.Array


# Head kind -> (outputs type, values per action given the config). A method names the kind it trains.
HEAD_KINDS = ("categorical", "policy")


def values_per_action(config: NetworkConfig, head: str) -> int:
    """Columns per action in the stacked head matrix: num_atoms for categorical heads, 1 for policy heads."""
    if head not in HEAD_KINDS:
        raise UsageError(f"unknown head kind '{head}'", hint="choose one of " + ", ".join(HEAD_KINDS))
    return config.num_atoms if head == "categorical" else 1




# ---------------------------------------------------------------------------------------------------------
# The two network families behind one flat set of settings: an arch dt-* selects the Decision Transformer.















def action_mask(num_actions: Sequence[int]) -> np.ndarray:
    """(G, A_max) bool: mask[g, a] is True when a < num_actions[g], i.e. a is one of game g's actions."""
    _check_num_actions(num_actions)
    return padded_action_mask(num_actions)


def _check_num_actions(num_actions: Sequence[int]) -> None:
    if len(num_actions) == 0 or min(num_actions) < 1:
        raise UsageError(f"every game needs at least one action, got {list(num_actions)}",
                         hint="pass the games' minimal action-set sizes")


def make_torso(config: NetworkConfig) -> hk.Module:
    """The torso module of `config.arch` (call inside hk.transform). (B, 84, 84, 4) -> (B, H, W, C)."""
    if config.arch == "dqn":
        return DqnCnn(config.width)
    if config.arch == "impala":
        return ImpalaCnn(config.width)
    return ResNet(int(config.arch.removeprefix("resnet")), config.width, config.num_groups)


def shared_features(config: NetworkConfig, obs: jax.Array) -> jax.Array:
    """obs (B, 4, 84, 84) uint8 -> the normalized shared feature (B, D) float32 (inside hk.transform)."""
    if obs.ndim != 4 or tuple(obs.shape[1:]) != INPUT_SHAPE:
        raise DataError(f"network input must have shape (B, 4, 84, 84), got {tuple(obs.shape)}",
                        hint="pass stacked 84x84 grayscale frames, frame-major")
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    x = jnp.transpose(obs, (0, 2, 3, 1)).astype(dtype) / jnp.asarray(255.0, dtype)
    x = make_torso(config)(x)
    x = SpatialEmbedding(config.spatial_embedding_features)(x)
    x = jax.nn.relu(hk.Linear(config.projection_dim, name="projection")(x))
    return l2_normalize(x) if config.normalize_features else x.astype(jnp.float32)


def build_network(config: NetworkConfig, num_actions: Sequence[int], head: str = "categorical") -> hk.Transformed:
    """The multi-game network as a pure (init, apply) pair.

    init(rng, obs, game) -> params, always float32. apply(params, obs, game) -> typed outputs of each sample's
    own game's head: CategoricalOutputs for head "categorical" (C51 logits (B, A_max, num_atoms) and their
    expected values), PolicyOutputs for head "policy" (action logits (B, A_max)); obs (B, 4, 84, 84) uint8,
    game (B,) int32 in [0, G). Logits of actions outside a sample's game (see action_mask) are 0 and carry
    no gradient. With compute_dtype bfloat16, apply casts the params to bfloat16 and the outputs back to float32.
    """
    per_action = values_per_action(config, head)
    num_actions = tuple(int(n) for n in num_actions)
    _check_num_actions(num_actions)
    if config.full_action_space and any(n != FULL_ACTION_SPACE for n in num_actions):
        raise UsageError(f"full_action_space needs 18 actions per game, got {list(num_actions)}",
                         hint="use networks.num_actions_for(config, games)")
    dtype = COMPUTE_DTYPES[config.compute_dtype]

    def transform(cfg: NetworkConfig) -> hk.Transformed:
        def forward(obs: jax.Array, game: jax.Array):
            features = shared_features(cfg, obs).astype(COMPUTE_DTYPES[cfg.compute_dtype])
            logits = MultiGameHeads(num_actions, per_action)(features, game).astype(jnp.float32)
            if head == "policy":
                return PolicyOutputs(logits[..., 0])
            return CategoricalOutputs(logits, categorical_mean(logits, jnp.asarray(cfg.support())))

        return hk.without_apply_rng(hk.transform(forward))

    transformed = transform(config)
    # Haiku creates parameters in the dtype of the activations; initialise through the float32 network so
    # that the master weights are float32 whatever the compute dtype (the parameter trees are identical).
    transformed_f32 = transform(dataclasses.replace(config, compute_dtype="float32"))

    def apply(params: hk.Params, obs: jax.Array, game: jax.Array):
        if dtype != jnp.float32:
            params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
        return transformed.apply(params, obs, game)

    def init(rng: jax.Array, obs: jax.Array, game: jax.Array) -> hk.Params:
        # XLA:CPU compiles the partitionable threefry 3-4x slower (13 s vs 3 s for the tiny DQN, about 20 s
        # for a ResNet-18); parameters are replicated across devices, so partitionable draws buy nothing.
        with jax.threefry_partitionable(False):
            return transformed_f32.init(rng, obs, game)

    return hk.Transformed(init=init, apply=apply)


def categorical_mean(logits: jax.Array, support: jax.Array) -> jax.Array:
    """Q = E[Z]: (..., K) logits, (K,) support -> (...) float32."""
    return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


def count_parameters(params: hk.Params) -> dict[str, int]:
    """Number of scalars per part: {"torso", "spatial_embedding", "projection", "heads"} -> int.

    Works on real arrays and on jax.ShapeDtypeStruct trees (from jax.eval_shape).
    """
    counts = {part: 0 for part in PARTS}
    for module, leaves in params.items():
        part = module.split("/", 1)[0]
        if part not in counts:
            raise DataError(f"parameter module '{module}' belongs to no known part",
                            hint="the parameters were not built by sqlcli_core.networks")
        counts[part] += sum(int(np.prod(v.shape)) for v in leaves.values())
    return counts


def abstract_params(config: NetworkConfig, num_actions: Sequence[int], head: str = "categorical") -> hk.Params:
    """The parameter tree as jax.ShapeDtypeStruct leaves, without allocating or computing any weight."""
    network = build_network(config, num_actions, head)
    obs = jax.ShapeDtypeStruct((1,) + INPUT_SHAPE, jnp.uint8)
    game = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(network.init, jax.random.PRNGKey(0), obs, game)


def parameter_table(config: NetworkConfig | DecisionTransformerConfig, games: Sequence[Any],
                    head: str = "categorical") -> dict[str, Any]:
    """Parameter counts of `config` for `games` (Game objects or action-set sizes), via jax.eval_shape.

    Returns {"arch", "width", "num_games", "num_actions": [...], "parts": {part: int}, "total": int,
    "torso_output": [H, W, C]}. Fast even for resnet152: nothing is allocated or initialised.
    A DecisionTransformerConfig (games as Game objects or names) gets decision_transformer.parameter_table.
    """
    if isinstance(config, DecisionTransformerConfig):
        return decision_transformer.parameter_table(config, games)
    num_actions = num_actions_for(config, games)
    params = abstract_params(config, num_actions, head)
    parts = count_parameters(params)
    kernel = params["spatial_embedding"]["kernel"].shape  # (H, W, C, F)
    return {
        "arch": config.arch,
        "width": config.width,
        "num_games": len(num_actions),
        "num_actions": list(num_actions),
        "parts": parts,
        "total": sum(parts.values()),
        "torso_output": [int(kernel[0]), int(kernel[1]), int(kernel[2])],
    }


__all__ = [
    "CategoricalOutputs", "HEAD_KINDS", "INPUT_SHAPE", "PARTS", "PolicyOutputs", "abstract_params", "action_mask", "build_network",
    "categorical_mean", "count_parameters", "make_torso", "parameter_table", "shared_features",
    "values_per_action",
]

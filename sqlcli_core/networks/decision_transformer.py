"""The multi-game Decision Transformer of Lee et al. 2022 ("Multi-Game Decision Transformers"), in Haiku.

One step t of a context of T steps is 36 + 3 tokens:

    [ patch_1 .. patch_36 | R_t | a_t | r_t ]        (T steps -> T * 39 tokens, oldest step first)

patch_k: a 14x14 patch of the step's single 84x84 frame, embedded linearly, plus a learned patch position;
R_t: the discretised return-to-go; a_t: the action in the 18-action ALE set; r_t: the reward class. A learned
position embedding per token is added, and a GPT-2 style (pre-LayerNorm) causal transformer runs over the
sequence. Causal means: a token attends to itself and every earlier token, and the 36 patch tokens of one
frame also attend to each other (they have no order among themselves). Predictions, each read from the
token *before* the one it predicts:

    return logits of step t  <- output at the last patch token of step t     (P(R_t | ..., o_t))
    action logits of step t  <- output at the R_t token                      (P(a_t | ..., o_t, R_t))
    reward logits of step t  <- output at the a_t token                      (P(r_t | ..., o_t, R_t, a_t))

With `single_return_token` (the authors' released configuration) only step 0's return token is visible:
the later ones are zeroed and masked out as keys, so the whole window is conditioned on one return.

Actions: the dataset indexes each game's minimal ALE action set. The model embeds and predicts in the full
18-action set, shared by all games (the paper's layout: FIRE is one token in every game); `action_sets[g]`
maps game g's minimal index to its ALE id. The action logits come back gathered to the game's minimal set,
(B, T, A_max), and entries beyond the game's set are -1e9 (softmax gives them 0).

Parameters live in four top-level parts: `patch_embedding`, `token_embeddings`, `transformer`, `heads`.
There is nothing per game, so the parameter count does not depend on the games. See
docs/decision-transformer.md for the paper's values and ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game, minimal_action_set
from sqlcli_core.networks.config import FRAME_SHAPE, DecisionTransformerConfig

FULL_ACTIONS = 18  # ALE's full action set
NUM_REWARD_CLASSES = 4  # 0 none, 1 positive, 2 episode end, 3 negative (the authors' classes)
MASKED_LOGIT = -1e9
PARTS = ("patch_embedding", "token_embeddings", "transformer", "heads")




class TokenLayout(NamedTuple):
    """Positions in the flat token sequence (all (T,) int arrays, step-major)."""

    last_patch: np.ndarray  # predicts R_t
    return_token: np.ndarray  # predicts a_t
    action_token: np.ndarray  # predicts r_t
    reward_token: np.ndarray


def token_layout(config: DecisionTransformerConfig) -> TokenLayout:
    first = np.arange(config.context_steps) * config.tokens_per_step
    p = config.num_patches
    return TokenLayout(first + p - 1, first + p, first + p + 1, first + p + 2)


def attention_mask(config: DecisionTransformerConfig) -> np.ndarray:
    """(L, L) bool, L = T * tokens_per_step: may query i attend to key j.

    Lower-triangular (j <= i), plus full attention among the patch tokens of one frame; with
    single_return_token, no query attends to the return tokens of steps 1..T-1.
    """
    n, p, length = config.tokens_per_step, config.num_patches, config.context_steps * config.tokens_per_step
    mask = np.tril(np.ones((length, length), bool))
    for t in range(config.context_steps):
        mask[t * n:t * n + p, t * n:t * n + p] = True
    mask[:, ~token_visible(config)] = False
    return mask


def token_visible(config: DecisionTransformerConfig) -> np.ndarray:
    """(L,) bool: tokens that enter the sequence (False: hidden return tokens of single_return_token)."""
    visible = np.ones(config.context_steps * config.tokens_per_step, bool)
    if config.single_return_token:
        visible[token_layout(config).return_token[1:]] = False
    return visible


def frame_patches(frames: jax.Array, patch_size: int) -> jax.Array:
    """(B, T, 84, 84) uint8 -> (B, T, P, patch_size**2) float32 in [0, 1], patches row-major."""
    b, t, h, w = frames.shape
    k = patch_size
    x = frames.astype(jnp.float32) / 255.0
    x = x.reshape(b, t, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    return x.reshape(b, t, (h // k) * (w // k), k * k)


class DTOutputs(NamedTuple):
    """Typed outputs of the Decision Transformer (float32)."""

    action_logits: jax.Array  # (B, T, A_max): over each sample's game's minimal set; -1e9 beyond it
    return_logits: jax.Array  # (B, T, num_return_bins)
    reward_logits: jax.Array  # (B, T, 4)


class PatchEmbedding(hk.Module):
    """Linear embedding of each frame patch plus a learned position per patch."""

    def __init__(self, config: DecisionTransformerConfig, name: str = "patch_embedding"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, frames: jax.Array) -> jax.Array:
        cfg = self.config
        patches = frame_patches(frames, cfg.patch_size)  # (B, T, P, k*k)
        d, k2 = cfg.model_dim, cfg.patch_size ** 2
        w = hk.get_parameter("w", (k2, d), init=hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"))
        b = hk.get_parameter("b", (d,), init=jnp.zeros)
        positions = hk.get_parameter("positions", (cfg.num_patches, d), init=hk.initializers.RandomNormal(0.02))
        return patches @ w + b + positions


class TokenEmbeddings(hk.Module):
    """Embeddings of return bins, ALE actions and reward classes, and the learned token positions."""

    def __init__(self, config: DecisionTransformerConfig, name: str = "token_embeddings"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, patch_tokens: jax.Array, return_bin: jax.Array, full_action: jax.Array,
                 reward_class: jax.Array) -> jax.Array:
        cfg = self.config
        d = cfg.model_dim
        init = hk.initializers.TruncatedNormal(0.02)
        ret = hk.Embed(cfg.num_return_bins, d, w_init=init, name="return")(return_bin)  # (B, T, D)
        act = hk.Embed(FULL_ACTIONS, d, w_init=init, name="action")(full_action)
        rew = hk.Embed(NUM_REWARD_CLASSES, d, w_init=init, name="reward")(reward_class)
        steps = jnp.concatenate([patch_tokens, ret[:, :, None], act[:, :, None], rew[:, :, None]], axis=2)
        b, t, n, _ = steps.shape
        tokens = steps.reshape(b, t * n, d)
        positions = hk.get_parameter("positions", (t * n, d), init=init)
        tokens = tokens + positions
        return tokens * jnp.asarray(token_visible(cfg), tokens.dtype)[None, :, None]


class CausalTransformer(hk.Module):
    """Pre-LayerNorm GPT-2 blocks (attention + 4x GELU MLP), then a final LayerNorm."""

    def __init__(self, config: DecisionTransformerConfig, name: str = "transformer"):
        super().__init__(name=name)
        self.config = config

    def __call__(self, h: jax.Array, is_training: bool) -> jax.Array:
        cfg = self.config
        init_scale = 2.0 / cfg.num_layers
        rate = cfg.dropout_rate if is_training else 0.0
        mask = jnp.asarray(attention_mask(cfg))[None, None]
        d = h.shape[-1]

        def dropout(x):
            return hk.dropout(hk.next_rng_key(), rate, x) if rate > 0 else x

        def norm(name):
            return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)

        for i in range(cfg.num_layers):
            x = norm(f"layer{i}_norm1")(h)
            x = hk.MultiHeadAttention(cfg.num_heads, cfg.key_size, w_init=hk.initializers.VarianceScaling(init_scale),
                                      model_size=d, name=f"layer{i}_attention")(x, x, x, mask)
            h = h + dropout(x)
            x = norm(f"layer{i}_norm2")(h)
            mlp_init = hk.initializers.VarianceScaling(init_scale)
            x = hk.Linear(4 * d, w_init=mlp_init, name=f"layer{i}_mlp_in")(x)
            x = hk.Linear(d, w_init=mlp_init, name=f"layer{i}_mlp_out")(jax.nn.gelu(x))
            h = h + dropout(x)
        return norm("final_norm")(h)


class DTHeads(hk.Module):
    """Linear return, action and reward heads, each read at the token before the one it predicts."""

    def __init__(self, config: DecisionTransformerConfig, action_sets: Sequence[Sequence[int]], name: str = "heads"):
        super().__init__(name=name)
        self.config = config
        self.table, self.real = action_tables(action_sets)

    def __call__(self, hidden: jax.Array, game: jax.Array) -> DTOutputs:
        layout = token_layout(self.config)
        return_logits = hk.Linear(self.config.num_return_bins, name="return")(hidden[:, layout.last_patch])
        full_logits = hk.Linear(FULL_ACTIONS, name="action")(hidden[:, layout.return_token])  # (B, T, 18)
        reward_logits = hk.Linear(NUM_REWARD_CLASSES, name="reward")(hidden[:, layout.action_token])
        table = jnp.asarray(self.table)[game]  # (B, A_max) ALE ids
        own = jnp.take_along_axis(full_logits, table[:, None, :], axis=2)
        real = jnp.asarray(self.real)[game][:, None, :]
        action_logits = jnp.where(real, own, jnp.asarray(MASKED_LOGIT, own.dtype))
        return DTOutputs(action_logits.astype(jnp.float32), return_logits.astype(jnp.float32),
                         reward_logits.astype(jnp.float32))


def action_tables(action_sets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(G, A_max) int32 ALE id of each minimal action (padding -> 0) and (G, A_max) bool real actions."""
    if len(action_sets) == 0 or any(len(s) == 0 for s in action_sets):
        raise UsageError("every game needs at least one action", hint="pass each game's minimal ALE action set")
    if any(not 0 <= int(a) < FULL_ACTIONS for s in action_sets for a in s):
        raise UsageError("action ids must be ALE ids in 0..17", hint="use games.catalog.minimal_action_set(name)")
    a_max = max(len(s) for s in action_sets)
    table = np.zeros((len(action_sets), a_max), np.int32)
    real = np.zeros((len(action_sets), a_max), bool)
    for g, s in enumerate(action_sets):
        table[g, :len(s)] = s
        real[g, :len(s)] = True
    return table, real


def action_sets_for(games: Sequence[Any], num_actions: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Each game's actions as ALE ids, in head order: its minimal set, or all 18 where the run plays the full
    action space (`num_actions` 18, `full_action_space`). `games`: Game objects or names."""
    names = [g.name if isinstance(g, Game) else str(g) for g in games]
    if len(names) != len(num_actions):
        raise UsageError(f"{len(names)} games but {len(num_actions)} action-set sizes",
                         hint="pass one action-set size per game")
    sets = []
    for name, n in zip(names, num_actions):
        minimal = tuple(minimal_action_set(name))
        if int(n) == len(minimal):
            sets.append(minimal)
        elif int(n) == FULL_ACTIONS:
            sets.append(tuple(range(FULL_ACTIONS)))
        else:
            raise DataError(f"{name} has {len(minimal)} minimal actions, the run expects {n}",
                            hint="use the ale-py version the run was trained with")
    return tuple(sets)


def build_decision_transformer(config: DecisionTransformerConfig, action_sets: Sequence[Sequence[int]]) -> hk.Transformed:
    """The multi-game Decision Transformer as a pure (init, apply) pair.

    init(rng, frames, action, return_bin, reward_class, game) -> params (float32).
    apply(params, rng, frames, action, return_bin, reward_class, game, is_training=False) -> DTOutputs.
    frames (B, T, 84, 84) uint8, oldest step first; action (B, T) int32 minimal-set indices of each sample's
    game; return_bin (B, T) int32 in [0, num_return_bins); reward_class (B, T) int32 in [0, 4); game (B,)
    int32 index into action_sets. rng may be None when is_training is False (no dropout then).
    """
    table, _ = action_tables(action_sets)

    def forward(frames, action, return_bin, reward_class, game, is_training=False):
        b, t = action.shape
        if frames.shape != (b, t, *FRAME_SHAPE):
            raise DataError(f"frames must have shape (B, T, 84, 84) = {(b, t, *FRAME_SHAPE)}, got {tuple(frames.shape)}",
                            hint="one 84x84 frame per step, oldest step first")
        if t != config.context_steps:
            raise DataError(f"windows have {t} steps, the model was built for {config.context_steps}",
                            hint="sample windows of context_steps steps")
        full_action = jnp.take_along_axis(jnp.asarray(table)[game], action, axis=1)  # (B, T) ALE ids
        tokens = TokenEmbeddings(config)(PatchEmbedding(config)(frames), return_bin, full_action, reward_class)
        hidden = CausalTransformer(config)(tokens, is_training)
        return DTHeads(config, action_sets)(hidden, game)

    transformed = hk.transform(forward)

    def init(rng, frames, action, return_bin, reward_class, game):
        with jax.threefry_partitionable(False):  # as networks.build_network: faster XLA:CPU compiles
            return transformed.init(rng, frames, action, return_bin, reward_class, game)

    return hk.Transformed(init=init, apply=transformed.apply)


def count_parameters(params: hk.Params) -> dict[str, int]:
    """Scalars per part {patch_embedding, token_embeddings, transformer, heads}; works on eval_shape trees."""
    counts = {part: 0 for part in PARTS}
    for module, leaves in params.items():
        part = module.split("/", 1)[0]
        if part not in counts:
            raise DataError(f"parameter module '{module}' belongs to no Decision Transformer part",
                            hint="the parameters were not built by networks.decision_transformer")
        counts[part] += sum(int(np.prod(v.shape)) for v in leaves.values())
    return counts


def example_inputs(config: DecisionTransformerConfig) -> tuple[jax.Array, ...]:
    """Zero (frames, action, return_bin, reward_class, game) of one window, for init(rng, *inputs)."""
    t = config.context_steps
    ints = jnp.zeros((1, t), jnp.int32)
    return jnp.zeros((1, t, *FRAME_SHAPE), jnp.uint8), ints, ints, ints, jnp.zeros((1,), jnp.int32)


def abstract_params(config: DecisionTransformerConfig, action_sets: Sequence[Sequence[int]]) -> hk.Params:
    """The parameter tree as jax.ShapeDtypeStruct leaves; nothing allocated or computed."""
    net = build_decision_transformer(config, action_sets)
    inputs = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_inputs(config))
    return jax.eval_shape(net.init, jax.random.PRNGKey(0), *inputs)


def parameter_table(config: DecisionTransformerConfig, games: Sequence[Any]) -> dict[str, Any]:
    """Parameter counts of `config` for `games` (Game objects or names), via jax.eval_shape.

    Same keys as networks.parameter_table where they apply: arch, width, num_games, num_actions, parts,
    total; plus layers, model_dim, heads, context_steps.
    """
    names = [g.name if isinstance(g, Game) else str(g) for g in games]
    sizes = [FULL_ACTIONS if config.full_action_space else len(minimal_action_set(n)) for n in names]
    action_sets = action_sets_for(names, sizes)
    parts = count_parameters(abstract_params(config, action_sets))
    return {
        "arch": config.arch, "width": config.width, "num_games": len(names),
        "num_actions": [len(s) for s in action_sets], "parts": parts, "total": sum(parts.values()),
        "layers": config.num_layers, "model_dim": config.model_dim, "heads": config.num_heads,
        "context_steps": config.context_steps,
    }


__all__ = [
    "DTOutputs", "FULL_ACTIONS", "NUM_REWARD_CLASSES", "PARTS",
    "TokenLayout", "abstract_params", "action_sets_for", "action_tables", "attention_mask", "build_decision_transformer",
    "count_parameters", "example_inputs", "frame_patches", "parameter_table", "token_layout",
    "token_visible",
]

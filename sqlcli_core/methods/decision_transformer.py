"""The multi-game Decision Transformer objective and its expert action inference (Lee et al. 2022).

Discretisation (the model sees tokens, not numbers):
    return bin   = clip(round(R), R_min, R_min + bins - 1) - R_min          R: undiscounted return-to-go
    reward class = 2 on the episode's last step, else 1 if r > 0, 3 if r < 0, 0 if r == 0

Loss, per window of T steps (cross-entropies, each a mean over the tokens it counts):
    action:  - log p(a_t | ..., o_t, R_t)       over real steps (step_mask = 1); logits over the game's actions
    return:  - log p(R_t | ..., o_t)            over visible return tokens (step 0 only with single_return_token)
    reward:  - log p(r_t | ..., o_t, R_t, a_t)  over real steps
    loss = w_a * action + w_R * return + w_r * reward           (weights 1 each: the paper trains all three)
Patch (observation) tokens are never a target.

Expert action inference (acting; settings `methods.acting_settings.DTActing`, defaults from the authors'
notebook). With u(R) = (R - R_min) / (R_max - R_min) in [0, 1]:
    P(R | expert, context)  ∝  P(R | context) * exp(kappa * u(R))
drawn `return_samples` times at inverse temperature beta_R (logits beta_R * (log P(R | context) + kappa * u(R)));
the window is conditioned on the largest draw, and the action is drawn at inverse temperature beta_a from
P(a | context, R) restricted to the top `action_top_fraction` of the game's action logits (or its argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.data.sequence_sampler import SequenceBatch
from sqlcli_core.errors import UsageError
from sqlcli_core.methods.acting_settings import DTActing
from sqlcli_core.methods.registry import LossSetup, Method, register
from sqlcli_core.networks.decision_transformer import (
    FRAME_SHAPE,
    MASKED_LOGIT,
    DecisionTransformerConfig,
    DTOutputs,
    action_sets_for,
    build_decision_transformer,
    example_inputs,
)

REWARD_NONE, REWARD_POSITIVE, REWARD_END, REWARD_NEGATIVE = 0, 1, 2, 3
METRICS = ("action_loss", "return_loss", "reward_loss", "action_accuracy")  # scalar aux names, after "loss"
PER_GAME_METRIC = "action_loss"  # aux per_game_action_loss


def return_to_bin(returns: jax.Array, return_min: int, num_bins: int) -> jax.Array:
    """Returns-to-go (any shape, float) -> int32 bins in [0, num_bins): rounded, clipped, shifted."""
    clipped = jnp.clip(jnp.round(returns), return_min, return_min + num_bins - 1)
    return (clipped - return_min).astype(jnp.int32)


def bin_to_return(bins: jax.Array, return_min: int) -> jax.Array:
    """Inverse of return_to_bin on the bins' range: int32 bins -> float32 returns."""
    return (bins + return_min).astype(jnp.float32)


def reward_to_class(reward: jax.Array, terminal: jax.Array) -> jax.Array:
    """Rewards and terminal flags (same shape) -> int32 classes 0 none, 1 positive, 2 episode end, 3 negative."""
    sign = jnp.where(reward > 0, REWARD_POSITIVE, jnp.where(reward < 0, REWARD_NEGATIVE, REWARD_NONE))
    return jnp.where(terminal > 0, REWARD_END, sign).astype(jnp.int32)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """(..., C) logits, (...) int targets -> (...) -log softmax(logits)[target]."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, target[..., None], axis=-1)[..., 0]


def decision_transformer_loss(outputs: DTOutputs, action: jax.Array, return_bin: jax.Array, reward_class: jax.Array,
                              step_mask: jax.Array, game: jax.Array, num_games: int, single_return_token: bool,
                              weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
                              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The Decision Transformer loss from network outputs.

    outputs: DTOutputs with action_logits (B, T, A) (already -1e9 beyond each game's actions), return_logits
    (B, T, bins), reward_logits (B, T, 4); action (B, T) int32 minimal-set indices; return_bin (B, T) int32;
    reward_class (B, T) int32; step_mask (B, T) float (1 real step, 0 padding row); game (B,) int32 in
    [0, num_games); weights (action, return, reward).
    Returns (loss, aux): aux holds action_loss, return_loss, reward_loss, action_accuracy (over real steps)
    and (G,) per_game_action_loss (0 where a game has no real step) and per_game_count (real steps).
    """
    chex.assert_rank([outputs.action_logits, outputs.return_logits, outputs.reward_logits], 3)
    chex.assert_rank([action, return_bin, reward_class, step_mask], 2)
    chex.assert_rank(game, 1)
    chex.assert_type([action, return_bin, reward_class, game], jnp.int32)
    chex.assert_equal_shape([action, return_bin, reward_class, step_mask])
    chex.assert_equal_shape_prefix([outputs.action_logits, outputs.return_logits, outputs.reward_logits, action], 2)

    step_mask = step_mask.astype(jnp.float32)
    action_ce = _cross_entropy(outputs.action_logits, action)  # (B, T)
    return_ce = _cross_entropy(outputs.return_logits, return_bin)
    reward_ce = _cross_entropy(outputs.reward_logits, reward_class)
    return_weight = jnp.zeros_like(step_mask).at[:, 0].set(1.0) if single_return_token else jnp.ones_like(step_mask)

    action_loss = _masked_mean(action_ce, step_mask)
    return_loss = _masked_mean(return_ce, return_weight)
    reward_loss = _masked_mean(reward_ce, step_mask)
    loss = weights[0] * action_loss + weights[1] * return_loss + weights[2] * reward_loss

    correct = (jnp.argmax(outputs.action_logits, axis=-1) == action).astype(jnp.float32)
    per_game_sum = jax.ops.segment_sum(jnp.sum(action_ce * step_mask, axis=1), game, num_segments=num_games)
    per_game_count = jax.ops.segment_sum(jnp.sum(step_mask, axis=1), game, num_segments=num_games)
    aux = {
        "action_loss": action_loss, "return_loss": return_loss, "reward_loss": reward_loss,
        "action_accuracy": _masked_mean(correct, step_mask),
        "per_game_action_loss": per_game_sum / jnp.maximum(per_game_count, 1.0),
        "per_game_count": per_game_count,
    }
    return loss, aux


def batch_tokens(batch: SequenceBatch, config: DecisionTransformerConfig) -> tuple[jax.Array, jax.Array]:
    """(return_bin, reward_class) tokens of a SequenceBatch."""
    return_bin = return_to_bin(jnp.asarray(batch.return_to_go, jnp.float32), config.return_min, config.num_return_bins)
    return return_bin, reward_to_class(jnp.asarray(batch.reward), jnp.asarray(batch.terminal))


def make_loss_fn(apply: Callable[..., DTOutputs], config: DecisionTransformerConfig, num_games: int,
                 weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
                 ) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """loss_fn(params, batch, rng=None) -> (loss, aux), for jax.value_and_grad(..., has_aux=True).

    apply: build_decision_transformer(...).apply. rng drives dropout (training mode); None trains without
    dropout (the network in evaluation mode).
    """

    def loss_fn(params: hk.Params, batch: SequenceBatch, rng: jax.Array | None = None):
        return_bin, reward_class = batch_tokens(batch, config)
        action = jnp.asarray(batch.action, jnp.int32)
        game = jnp.asarray(batch.game, jnp.int32)
        outputs = apply(params, rng, batch.frames, action, return_bin, reward_class, game, is_training=rng is not None)
        return decision_transformer_loss(outputs, action, return_bin, reward_class, jnp.asarray(batch.step_mask),
                                         game, num_games, config.single_return_token, weights)

    return loss_fn


# ---------------------------------------------------------------------------------------------------------
# Expert action inference


ActingConfig = DTActing  # the acting settings (methods.acting_settings), under the name this module used


def expert_return_logits(return_logits: jax.Array, kappa: float, inverse_temperature: float = 1.0) -> jax.Array:
    """(..., bins) model logits -> logits of beta * (log P(R | context) + kappa * u(R)), u = linspace(0, 1, bins)."""
    bins = return_logits.shape[-1]
    optimality = jnp.linspace(0.0, 1.0, bins, dtype=jnp.float32)
    return inverse_temperature * (jax.nn.log_softmax(return_logits.astype(jnp.float32), axis=-1) + kappa * optimality)


def best_of_returns(keys: jax.Array, return_logits: jax.Array, acting: DTActing) -> jax.Array:
    """keys (N, 2), return logits (N, bins) -> (N,) int32: the largest of `acting.return_samples` bins drawn per
    row from the expert return distribution at inverse temperature `acting.return_inverse_temperature`."""
    tempered = expert_return_logits(return_logits, acting.kappa, acting.return_inverse_temperature)
    draws = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(acting.return_samples,)))(keys, tempered)
    return jnp.max(draws, axis=-1).astype(jnp.int32)


def top_fraction_logits(logits: jax.Array, fraction: float) -> jax.Array:
    """(N, A) action logits (MASKED_LOGIT beyond each game's actions) -> the same with -inf where a real action's
    logit is not above the (1 - fraction) quantile of the row's real logits (linear interpolation, numpy's
    default percentile); the row's largest logit is always kept. fraction 1: unchanged.

    The authors' notebook keeps the logits above the 50th percentile of all 18 outputs; ours takes the quantile
    over the game's own actions (its minimal set), the only ones our heads score."""
    if fraction >= 1.0:
        return logits
    real = logits > MASKED_LOGIT / 2
    count = jnp.sum(real, axis=-1)
    ascending = jnp.sort(jnp.where(real, logits, jnp.inf), axis=-1)  # the real logits first
    position = (1.0 - fraction) * (count - 1).astype(jnp.float32)
    below = jnp.floor(position).astype(jnp.int32)
    above = jnp.ceil(position).astype(jnp.int32)
    low = jnp.take_along_axis(ascending, below[:, None], axis=-1)[:, 0]
    high = jnp.take_along_axis(ascending, above[:, None], axis=-1)[:, 0]
    threshold = low + (position - below) * (high - low)
    best = jnp.max(logits, axis=-1, keepdims=True)
    keep = real & ((logits > threshold[:, None]) | (logits >= best))
    return jnp.where(keep, logits, -jnp.inf)


def act_on_context(apply: Callable[..., DTOutputs], params: hk.Params, rng: jax.Array, frames: jax.Array,
                   action: jax.Array, reward_class: jax.Array, game: jax.Array, config: DecisionTransformerConfig,
                   acting: DTActing) -> tuple[jax.Array, jax.Array]:
    """One expert-action-inference step for N contexts (pure; jit it with apply, config and acting static).

    rng: one key (2,) for all rows, or a key per row (N, 2) (then each row's draws depend on its own key
    only, so a context's action does not depend on the other rows). frames (N, T, 84, 84) uint8 oldest first, the last step being the current one; action (N, T) int32
    minimal-set indices of the steps taken (the last one is ignored); reward_class (N, T) int32 (the last one
    ignored); game (N,) int32. Returns (action (N,) int32 to take now, return_bin (N, T) int32 the sampled
    conditioning returns). Causality makes the placeholders of the current step irrelevant.
    """
    chex.assert_rank(frames, 4)
    chex.assert_rank([action, reward_class], 2)
    n, t = action.shape
    keys = rng if rng.ndim == 2 else jax.random.split(rng, n)  # (N, 2): one stream of draws per row
    draw = jax.vmap(jax.random.categorical)
    return_bin = jnp.zeros((n, t), jnp.int32)
    positions = (0,) if config.single_return_token else tuple(range(t))
    for step in positions:  # a return is sampled at each visible return token, earliest first
        pairs = jax.vmap(jax.random.split)(keys)
        keys, draw_keys = pairs[:, 0], pairs[:, 1]
        logits = apply(params, None, frames, action, return_bin, reward_class, game).return_logits[:, step]
        return_bin = return_bin.at[:, step].set(best_of_returns(draw_keys, logits, acting))
    logits = apply(params, None, frames, action, return_bin, reward_class, game).action_logits[:, -1]
    if acting.greedy_action:
        chosen = jnp.argmax(logits, axis=-1)
    else:
        chosen = draw(keys, acting.action_inverse_temperature * top_fraction_logits(logits, acting.action_top_fraction))
    return chosen.astype(jnp.int32), return_bin


class DecisionTransformerPolicy:
    """Keeps each emulator's context window and acts for many emulators at once.

    Slots 0..num_envs-1 are emulators. Per emulator step: `act(slots, frames)` appends each slot's new frame
    as the current step and returns its action; `record(slots, rewards, terminals)` stores the outcome;
    `start_episodes(slots, games)` clears a slot's window for a new episode (zero frames, action 0, reward 0:
    exactly the dataset's padding rows before an episode). Every call runs the jitted network on all slots
    (a fixed shape, one compile); rows of other slots are computed and ignored.
    """

    def __init__(self, apply: Callable[..., DTOutputs], params: hk.Params, config: DecisionTransformerConfig,
                 num_envs: int, acting: DTActing = DTActing(), seed: int = 0):
        if num_envs < 1:
            raise UsageError(f"num_envs must be >= 1, got {num_envs}")
        self.config, self.acting, self.params = config, acting, params
        t = config.context_steps
        self.frames = np.zeros((num_envs, t, *FRAME_SHAPE), np.uint8)
        self.actions = np.zeros((num_envs, t), np.int32)
        self.rewards = np.zeros((num_envs, t), np.int32)  # reward classes
        self.games = np.zeros(num_envs, np.int32)
        self.last_return_bin = np.zeros((num_envs, t), np.int32)
        self._key = jax.random.PRNGKey(seed)
        self._calls = 0
        self._act = jax.jit(lambda p, k, f, a, r, g: act_on_context(apply, p, k, f, a, r, g, config, acting))

    def start_episodes(self, slots: Sequence[int], games: Sequence[int]) -> None:
        slots = np.asarray(slots, np.int64)
        self.frames[slots] = 0
        self.actions[slots] = 0
        self.rewards[slots] = REWARD_NONE
        self.games[slots] = np.asarray(games, np.int32)

    def act(self, slots: Sequence[int], frames: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """frames (n, 84, 84) or (n, 4, 84, 84) (the newest frame is used) for `slots` -> (n,) int32 actions.

        keys: (n, 2) uint32 PRNG keys of the slots' draws (evaluation derives them from each stream, so that
        scores do not depend on which slot or batch a stream runs in); None: drawn from the policy's seed.
        """
        slots = np.asarray(slots, np.int64)
        frames = np.asarray(frames)
        if frames.ndim == 4:
            frames = frames[:, -1]
        for arr in (self.frames, self.actions, self.rewards):
            arr[slots] = np.roll(arr[slots], -1, axis=1)
        self.frames[slots, -1] = frames
        self.actions[slots, -1] = 0
        self.rewards[slots, -1] = REWARD_NONE
        if keys is None:
            all_keys = jax.random.split(jax.random.fold_in(self._key, self._calls), len(self.games))
        else:
            all_keys = np.zeros((len(self.games), 2), np.uint32)
            all_keys[slots] = np.asarray(keys, np.uint32)
        self._calls += 1
        chosen, return_bin = self._act(self.params, all_keys, self.frames, self.actions, self.rewards, self.games)
        chosen = np.asarray(chosen)[slots]
        self.actions[slots, -1] = chosen
        self.last_return_bin[slots] = np.asarray(return_bin)[slots]
        return chosen

    def record(self, slots: Sequence[int], rewards: Sequence[float], terminals: Sequence[bool],
               actions: Sequence[int] | None = None) -> None:
        """The outcome of the action each slot just took: reward (kept as its class) and end flag.

        actions: the actions really taken, when they differ from act()'s (an evaluation protocol's
        epsilon-random action); the window must hold what the emulator saw.
        """
        slots = np.asarray(slots, np.int64)
        if actions is not None:
            self.actions[slots, -1] = np.asarray(actions, np.int32)
        self.rewards[slots, -1] = np.asarray(reward_to_class(jnp.asarray(rewards, jnp.float32),
                                                             jnp.asarray(terminals, jnp.float32)))


# ---------------------------------------------------------------------------------------------------------
# The method `dt`


def _network(network_config: DecisionTransformerConfig, num_actions: Sequence[int],
             games: Sequence[str] | None) -> hk.Transformed:
    if games is None:
        raise UsageError("the Decision Transformer needs the games of the run (their ALE action sets)",
                         hint="pass games= in head order")
    return build_decision_transformer(network_config, action_sets_for(games, num_actions))


def _make_loss(setup: LossSetup) -> Callable:
    own = setup.learner_config.method_config  # methods.configs.DTConfig: the loss weights
    loss_fn = make_loss_fn(setup.network.apply, setup.network_config, num_games=len(setup.mask),
                           weights=own.weights())

    def with_target(params, target_params, batch, rng):
        del target_params  # no target network
        return loss_fn(params, batch, rng)

    return with_target


def _make_actor(network: hk.Transformed, params: hk.Params, network_config: DecisionTransformerConfig,
                num_envs: int, acting: DTActing | None = None) -> DecisionTransformerPolicy:
    return DecisionTransformerPolicy(network.apply, params, network_config, num_envs, acting or DTActing())


DECISION_TRANSFORMER = register(Method(
    name="dt",
    summary="Multi-game Decision Transformer: return-conditioned sequence model, expert action inference (--arch dt-*)",
    batch_kind="sequences",
    head="decision-transformer",
    acting_output="",
    metrics=METRICS,
    per_game_metric=PER_GAME_METRIC,
    progress=(("action_loss", "act", ".4f"), ("return_loss", "ret", ".3f"), ("action_accuracy", "acc", ".3f")),
    uses_target_network=False,
    learner_fields=(),
    make_loss=_make_loss,
    network=_network,
    init_inputs=example_inputs,
    finetune="fine-tuning reuses a Scaled QL torso and per-game heads, which a Decision Transformer does not have",
    loss_rng=True,
    make_actor=_make_actor,
    acting_modes=("sample", "greedy"),  # the authors' notebook samples
))


__all__ = [
    "ActingConfig", "DECISION_TRANSFORMER", "DTActing", "DecisionTransformerPolicy", "METRICS", "PER_GAME_METRIC",
    "act_on_context", "batch_tokens", "best_of_returns", "bin_to_return", "top_fraction_logits",
    "decision_transformer_loss", "expert_return_logits", "make_loss_fn", "return_to_bin", "reward_to_class",
]

"""The method registry: what a training method is, and the table of methods by name.

A *method* (Scaled QL, plain C51, behaviour cloning, later a Decision Transformer...) is everything the
generic learner, the CLI and acting need to know about one way of training a policy from offline data. The
learner never names a loss, a metric or a network output; it asks the run's `Method`:

    method = get_method(learner_config.method)
    network = method.network(network_config, num_actions, games)     # hk.Transformed, typed outputs
    params = network.init(rng, *method.init_inputs(network_config))
    loss_fn = method.make_loss(LossSetup(network, mask, network_config, learner_config))
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, target_params, batch)
    #   ... or (params, target_params, batch, fold_in(state.rng, state.step)) when method.loss_rng
    metrics = {"loss": loss, **{k: aux[k] for k in method.metrics}, "grad_norm": ...,
               method.game_metric: aux["per_game_" + method.per_game_metric], "game_count": aux["per_game_count"]}
    act = method.make_action_values(network, mask)                    # (params, obs, game) -> (N, A) scores

Contract of each field (see the `Method` docstring) and of the callables:
- `make_loss(setup) -> loss_fn(params, target_params, batch) -> (loss, aux)`, pure and jittable; `batch` is
  the method's batch type (`batch_kind`); aux holds every name of `metrics` (scalars) and the (G,) vectors
  `per_game_<per_game_metric>` and `per_game_count`. With `loss_rng`, loss_fn takes a fourth argument: the
  step's PRNG key (fold_in(run key, step), so a resumed run draws the same), e.g. for dropout.
- `make_action_values(network, mask) -> fn(params, obs (N,4,84,84) uint8, game (N,) int32) -> (N, A_max)`
  float32 scores, -inf outside each sample's game: acting plays argmax of them. For methods whose acting
  needs more than the current frame stack (a sequence model), `make_action_values` is None and the method
  gives `make_actor(network, params, network_config, num_envs, acting=None) -> actor` instead (acting: the
  method's own acting settings, e.g. `methods.acting_settings.DTActing`): an object with
  `start_episodes(slots, games)`, `act(slots, frames, keys)` and `record(slots, rewards, terminals, actions)`
  that keeps each emulator slot's context (evaluation drives it; see evaluation/evaluate.py).
- `network(network_config, num_actions, games) -> hk.Transformed` (games: the game names in head order;
  the standard network ignores them, the Decision Transformer needs them for the games' ALE action sets) and `init_inputs(network_config) -> tuple` of example arrays
  for `network.init(rng, *inputs)`; default: the multi-game torso/neck/heads network of
  `sqlcli_core.networks` with the method's `head` kind.

Adding a method: write `methods/<name>.py` that builds a `Method` and calls `register(...)`, add its line to
`methods/catalog.py` (the name -> module table that lists methods without importing JAX), and (for a new
batch kind) teach `training/pretrain.py` which sampler feeds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from sqlcli_core.methods.catalog import DEFAULT_METHOD, load_method_module, method_entry, method_names

BATCH_KINDS = ("transitions", "sequences")


class LossSetup(NamedTuple):
    """What a method's loss is built from: the network, the (G, A) action mask and both configs."""

    network: hk.Transformed
    mask: Any  # (G, A_max) bool, action_mask
    network_config: Any  # NetworkConfig
    learner_config: Any  # training.update.LearnerConfig


def _standard_network(head: str) -> Callable[..., hk.Transformed]:
    def build(network_config, num_actions, games=None):
        del games  # the heads are sized by num_actions alone
        from sqlcli_core.networks.network import build_network

        return build_network(network_config, num_actions, head)

    return build


def _standard_init_inputs(network_config) -> tuple[jax.Array, jax.Array]:
    from sqlcli_core.networks.network import INPUT_SHAPE

    return jnp.zeros((1,) + INPUT_SHAPE, jnp.uint8), jnp.zeros((1,), jnp.int32)


def greedy_output(field: str) -> Callable:
    """make_action_values that scores actions by the network output `field`, masked to each game's actions."""

    def make(network: hk.Transformed, mask) -> Callable:
        mask = jnp.asarray(mask)

        @jax.jit
        def action_values(params, obs, game):
            scores = getattr(network.apply(params, obs, game), field)  # (N, A_max)
            return jnp.where(mask[game], scores, -jnp.inf)

        return action_values

    return make


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method. Registered by name; the name is recorded in run.json and is part of a run's identity.

    name: the CLI/run.json name (`--method NAME`). summary: one line for --help and tables.
    batch_kind: what the learner feeds the loss: "transitions" (`TransitionBatch` of the replay sampler and
        the online replay) or "sequences" (contiguous windows; a sequence method brings its batch type).
    head: the network head kind of `sqlcli_core.networks` it trains ("categorical" | "policy"); with a
        custom `network` it is a free label.
    acting_output: the field of the network outputs acting maximises ("q_values", "logits"); documentation
        of `make_action_values` when that is `greedy_output(acting_output)`.
    metrics: the scalar aux names of the loss, in the order of metric records (the step adds `loss` before
        them and `grad_norm` after).
    per_game_metric: the per-sample loss averaged per game: aux `per_game_<name>`, metric `game_<name>`.
    progress: (metric, label, format) triples of the CLI progress line after `loss`.
    uses_target_network: whether the loss reads target parameters (kept in the train state and copied every
        `target_update_period` steps); without one the train state holds an empty target.
    learner_fields: the `LearnerConfig` fields besides the optimiser's that the method reads (docs, --help).
    finetune: None when fine-tuning a run of this method is supported, else the reason it is refused.
    loss_rng: whether loss_fn takes the step's PRNG key as a fourth argument (dropout).
    acting_modes: how evaluation may act (`methods.acting_settings.ACTING_MODES`), the default first:
        "greedy" (argmax of the acting output) and/or "sample" (the softmax of the logits; a make_actor method
        samples its own way).
    make_loss, make_action_values, make_actor, network, init_inputs: see the module docstring.
    """

    name: str
    summary: str
    batch_kind: str
    head: str
    acting_output: str
    metrics: tuple[str, ...]
    per_game_metric: str
    progress: tuple[tuple[str, str, str], ...]
    uses_target_network: bool
    learner_fields: tuple[str, ...]
    make_loss: Callable[[LossSetup], Callable]
    make_action_values: Callable | None = None
    network: Callable[..., hk.Transformed] | None = None
    init_inputs: Callable[[Any], tuple] = _standard_init_inputs
    finetune: str | None = None
    loss_rng: bool = False
    make_actor: Callable | None = None
    acting_modes: tuple[str, ...] = ("greedy",)

    def __post_init__(self):
        if self.batch_kind not in BATCH_KINDS:
            raise ValueError(f"method {self.name}: unknown batch kind {self.batch_kind!r}")
        if self.network is None:
            object.__setattr__(self, "network", _standard_network(self.head))
        if self.make_action_values is None and self.acting_output:
            object.__setattr__(self, "make_action_values", greedy_output(self.acting_output))
        if (self.make_action_values is None) == (self.make_actor is None):
            raise ValueError(f"method {self.name}: give make_action_values (or acting_output) or make_actor, not both")

    @property
    def game_metric(self) -> str:
        """The key of the (G,) per-game loss in step metrics, `game_<per_game_metric>`."""
        return f"game_{self.per_game_metric}"

    @property
    def scalar_metrics(self) -> tuple[str, ...]:
        """Every scalar of a step's metrics, in record order."""
        return ("loss", *self.metrics, "grad_norm")

    def initial_target(self, params: Any) -> Any:
        """The target parameters a fresh train state starts with: a copy of `params`, or {} without a target."""
        return jax.tree.map(jnp.copy, params) if self.uses_target_network else {}


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (its name must be new); returns it."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str | None) -> Method:
    """The method called `name` (None: the default, scaled-ql), its module imported on first use; a UsageError
    names the choices."""
    name = DEFAULT_METHOD if name is None else name
    if name not in _REGISTRY:
        method_entry(name)  # an unknown name: one line naming the known ones
        load_method_module(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"module {method_entry(name).module} does not register method {name!r}") from None


__all__ = ["DEFAULT_METHOD", "BATCH_KINDS", "LossSetup", "Method", "get_method", "greedy_output", "method_names",
           "register"]

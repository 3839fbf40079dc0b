"""The update: optimiser settings, the train state, and one jitted, data-parallel step of the run's method.

The step is generic: the loss, the network outputs it reads and the metric names come from the method
registry (`sqlcli_core.methods`), so Scaled QL, C51 and behaviour cloning share this code.
Shapes: B = global batch, G = games, A = the largest minimal action set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sqlcli_core.methods.registry import LossSetup, Method
from sqlcli_core.networks.network import action_mask
from sqlcli_core.training.configs import LearnerConfig
from sqlcli_core.training.mesh import batch_sharding, replicated


class TrainState(NamedTuple):
    """Everything the update step reads and writes. Replicated over the mesh.

    `target_params` is {} for methods without a target network. `rng` (uint32[2]) is the run's base key,
    checkpointed with the rest: a stochastic loss (`Method.loss_rng`, the Decision Transformer's dropout)
    draws from fold_in(rng, step), so a resumed run repeats it.
    """

    params: Any
    target_params: Any
    opt_state: Any
    step: jax.Array  # () int32: gradient steps taken
    rng: jax.Array  # (2,) uint32


def make_optimizer(config: LearnerConfig) -> optax.GradientTransformation:
    """Adam (lr, eps from the config), after optional global-norm clipping."""
    adam = optax.adam(config.learning_rate, eps=config.adam_eps)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def init_params(network_config, num_actions: Sequence[int], method: Method, key: jax.Array,
                games: Sequence[str] | None = None) -> Any:
    """Fresh float32 parameters of `method`'s network (haiku creates params in the input dtype)."""
    network = method.network(network_config, tuple(num_actions), _names(games))
    params = network.init(key, *method.init_inputs(network_config))
    return jax.tree.map(lambda p: p.astype(jnp.float32), params)


def _names(games: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if games is None else tuple(str(g) for g in games)


def _init_fn(network_config, num_actions: Sequence[int], config: LearnerConfig,
             games: tuple[str, ...] | None = None) -> Callable[[jax.Array], TrainState]:
    method = config.get_method()
    optimizer = make_optimizer(config)

    def init(seed: jax.Array) -> TrainState:
        init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
        params = init_params(network_config, num_actions, method, init_key, games)
        target = params if method.uses_target_network else {}
        return TrainState(params, target, optimizer.init(params), jnp.zeros((), jnp.int32), rng)

    return init


def init_train_state(network_config, num_actions: Sequence[int], config: LearnerConfig, seed: int,
                     mesh: Mesh, games: Sequence[str] | None = None) -> TrainState:
    """Fresh parameters from `seed` (target = a copy of them), Adam state and RNG, replicated over `mesh`.

    games: the game names in head order (the Decision Transformer needs them; see `Method.network`).
    """
    return _compiled_init(network_config, tuple(int(n) for n in num_actions), config, mesh, _names(games))(
        jnp.asarray(seed, jnp.uint32))


@functools.lru_cache(maxsize=8)
def _compiled_init(network_config, num_actions: tuple[int, ...], config: LearnerConfig, mesh: Mesh,
                   games: tuple[str, ...] | None = None):
    lowered = jax.jit(_init_fn(network_config, num_actions, config, games), out_shardings=replicated(mesh)).lower(
        jax.ShapeDtypeStruct((), jnp.uint32))
    # Init runs once per run; XLA's CPU backend spends many seconds optimising the threefry/initialiser
    # code at the default level for no measurable gain, so it is compiled without backend optimisation.
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def abstract_train_state(network_config, num_actions: Sequence[int], config: LearnerConfig,
                         mesh: Mesh, games: Sequence[str] | None = None) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, allocating nothing: a restore target."""
    shapes = jax.eval_shape(_init_fn(network_config, num_actions, config, _names(games)), jnp.uint32(0))
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _all_finite(loss: jax.Array, params: Any) -> jax.Array:
    """() bool: the loss and every parameter are finite (one fused reduction, read by the host in batches)."""
    flags = [jnp.isfinite(loss)] + [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]
    return jnp.all(jnp.stack(flags))


def make_train_step(network_config, num_actions: Sequence[int], config: LearnerConfig, mesh: Mesh,
                    optimizer: optax.GradientTransformation | None = None, games: Sequence[str] | None = None,
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """One pure, jitted update of `config.method`: (state, batch) -> (state, metrics). The state is donated.

    network_config: a NetworkConfig (architecture, C51 support, compute dtype); num_actions: the
    games' action-set sizes in head order. batch: the method's batch (a TransitionBatch, a SequenceBatch for dt)
    of (B, ...) arrays sharded over the mesh's 'data' axis (see `put_batch`). metrics: replicated
    scalars `loss`, the method's `metrics` (scaled-ql: td_loss, cql_loss, q_data, q_other, q_max),
    `grad_norm`, and (G,) vectors `game_<per_game_metric>` (scaled-ql: game_td_loss) and `game_count`, and
    the bool `finite` (loss and every new parameter finite; `loop.check_finite` reads it in batches).
    With a target network, it is a hard copy of the online one after every `target_update_period`-th step.
    optimizer: default `make_optimizer(config)`; fine-tuning passes one that freezes some parameters.
    games: the game names in head order (see `Method.network`). A method with `loss_rng` gets the key
    fold_in(state.rng, state.step): the same draws whatever the devices, and again after a resume.
    """

    method = config.get_method()
    network = method.network(network_config, tuple(num_actions), _names(games))
    optimizer = make_optimizer(config) if optimizer is None else optimizer
    loss_fn = method.make_loss(LossSetup(network, action_mask(num_actions), network_config, config))

    def step(state: TrainState, batch):
        extra = (jax.random.fold_in(state.rng, state.step),) if method.loss_rng else ()
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.target_params, batch,
                                                                       *extra)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        target_params = state.target_params
        if method.uses_target_network:
            target_params = optax.periodic_update(params, target_params, new_step, config.target_update_period)
        metrics = {"loss": loss, **{k: aux[k] for k in method.metrics}, "grad_norm": optax.tree.norm(grads),
                   method.game_metric: aux[f"per_game_{method.per_game_metric}"],
                   "game_count": aux["per_game_count"], "finite": _all_finite(loss, params)}
        return TrainState(params, target_params, opt_state, new_step, state.rng), metrics

    state_sharding = replicated(mesh)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, state_sharding), donate_argnums=0)

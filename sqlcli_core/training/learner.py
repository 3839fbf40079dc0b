"""The offline learner: one jitted, data-parallel update step for multi-game CQL + C51.

Data parallelism is expressed with `jax.sharding` only: a 1-D device mesh with the axis 'data' spans every
device of every process; batches are split along their leading axis over it and the train state is
replicated. XLA then inserts the all-reduce of the gradients (the loss is a batch mean), so one code path
serves 1 CPU device, 4 forced host devices, and many hosts joined by `jax.distributed`.

Shapes: B = global batch, G = games, A = the largest minimal action set, N = atoms.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.errors import UsageError

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """Optimisation settings of the learner; defaults from docs/defaults.md (paper unless tagged ours).

    The C51 support and the compute dtype belong to the network (`NetworkConfig`).
    """

    learning_rate: float = 2e-4  # paper
    adam_eps: float = 3.125e-4  # ours: the DQN-Replay offline agents' eps
    alpha: float = 0.05  # CQL weight; ours
    gamma: float = 0.99  # paper
    target_update_period: int = 2000  # paper: hard copy every 2000 gradient steps
    max_grad_norm: float | None = None  # ours: off by default (the paper states none)

    def __post_init__(self):
        if self.learning_rate <= 0 or self.adam_eps <= 0:
            raise UsageError("learning rate and Adam eps must be positive", hint="e.g. --lr 2e-4 --adam-eps 3.125e-4")
        if self.alpha < 0:
            raise UsageError(f"CQL alpha must be >= 0, got {self.alpha}", hint="e.g. --alpha 0.05")
        if not 0.0 <= self.gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {self.gamma}", hint="e.g. --gamma 0.99")
        if self.target_update_period < 1:
            raise UsageError("--target-update-period must be >= 1", hint="e.g. 2000")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise UsageError("--max-grad-norm must be positive", hint="leave it unset for no clipping")


class TrainState(NamedTuple):
    """Everything the update step reads and writes. Replicated over the mesh.

    `rng` (uint32[2]) is the run's base key, checkpointed with the rest: a stochastic part of the update
    (none in the default objective) would draw from fold_in(rng, step), so a resumed run repeats it.
    """

    params: Any
    target_params: Any
    opt_state: Any
    step: jax.Array  # () int32: gradient steps taken
    rng: jax.Array  # (2,) uint32


# ---------------------------------------------------------------------------------------------------------
# Processes, devices, meshes


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Join a multi-process JAX job; returns True when running with more than one process.

    Arguments left None are read from SQL_COORDINATOR / SQL_NUM_PROCESSES / SQL_PROCESS_ID, then from
    JAX's own JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. With none of them set this is a
    single-process run and nothing is initialised. Must run before any other JAX call.
    """
    env = os.environ
    coordinator = coordinator or env.get("SQL_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _env_int("SQL_NUM_PROCESSES") or _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("SQL_PROCESS_ID")
        if process_id is None:
            process_id = _env_int("JAX_PROCESS_ID")
    if coordinator is None and (num_processes or 1) == 1:
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise UsageError(
            "a multi-process run needs the coordinator address, the number of processes and this process's id",
            hint="pass --coordinator HOST:PORT --num-processes N --process-id I (or set SQL_COORDINATOR, ...)",
        )
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id {process_id} is outside 0..{num_processes - 1}", hint="ids count from 0")
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    # CPU devices of different processes talk through gloo; without it cross-process reductions fail.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_count() > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer", hint="unset it or fix it") from None


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: the leading (batch) axis split over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Validate that `global_batch` splits evenly over devices and processes; return the per-process batch."""
    devices = mesh.devices.size
    processes = jax.process_count()
    if global_batch < 1 or global_batch % devices:
        raise UsageError(
            f"batch size {global_batch} does not divide over {devices} devices",
            hint=f"use a multiple of {devices}, e.g. {max(devices, (global_batch // devices) * devices or devices)}",
        )
    if global_batch % processes:
        raise UsageError(f"batch size {global_batch} does not divide over {processes} processes",
                         hint=f"use a multiple of {processes}")
    return global_batch // processes


def put_batch(batch: TransitionBatch, sharding: NamedSharding) -> TransitionBatch:
    """Place this process's rows of a batch on its devices as slices of one global array per field.

    With one process the rows are the whole batch; with P processes each contributes B / P rows, in
    process order, and the result is the (B, ...) global batch.
    """
    return TransitionBatch(*(jax.make_array_from_process_local_data(sharding, np.asarray(x)) for x in batch))


# ---------------------------------------------------------------------------------------------------------
# The update


def make_optimizer(config: LearnerConfig) -> optax.GradientTransformation:
    """Adam (lr, eps from the config), after optional global-norm clipping."""
    adam = optax.adam(config.learning_rate, eps=config.adam_eps)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def _init_fn(network_config, num_actions: Sequence[int], config: LearnerConfig) -> Callable[[jax.Array], TrainState]:
    from sqlcli_core import networks

    network = networks.build_network(network_config, num_actions)
    optimizer = make_optimizer(config)

    def init(seed: jax.Array) -> TrainState:
        init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
        obs = jnp.zeros((1, 4, 84, 84), jnp.uint8)
        game = jnp.zeros((1,), jnp.int32)
        # Master weights are float32 whatever the compute dtype (haiku creates params in the input dtype).
        params = jax.tree.map(lambda p: p.astype(jnp.float32), network.init(init_key, obs, game))
        return TrainState(params, params, optimizer.init(params), jnp.zeros((), jnp.int32), rng)

    return init


def init_train_state(network_config, num_actions: Sequence[int], config: LearnerConfig, seed: int,
                     mesh: Mesh) -> TrainState:
    """Fresh parameters from `seed` (target = a copy of them), Adam state and RNG, replicated over `mesh`."""
    return _compiled_init(network_config, tuple(int(n) for n in num_actions), config, mesh)(
        jnp.asarray(seed, jnp.uint32))


@functools.lru_cache(maxsize=8)
def _compiled_init(network_config, num_actions: tuple[int, ...], config: LearnerConfig, mesh: Mesh):
    lowered = jax.jit(_init_fn(network_config, num_actions, config), out_shardings=replicated(mesh)).lower(
        jax.ShapeDtypeStruct((), jnp.uint32))
    # Init runs once per run; XLA's CPU backend spends many seconds optimising the threefry/initialiser
    # code at the default level for no measurable gain, so it is compiled without backend optimisation.
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})


def abstract_train_state(network_config, num_actions: Sequence[int], config: LearnerConfig,
                         mesh: Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, allocating nothing: a restore target."""
    shapes = jax.eval_shape(_init_fn(network_config, num_actions, config), jnp.uint32(0))
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def make_train_step(network_config, num_actions: Sequence[int], config: LearnerConfig, mesh: Mesh,
                    optimizer: optax.GradientTransformation | None = None,
                    ) -> Callable[[TrainState, TransitionBatch], tuple[TrainState, dict]]:
    """One pure, jitted update: (state, batch) -> (state, metrics). The state argument is donated.

    network_config: a networks.NetworkConfig (architecture, C51 support, compute dtype); num_actions: the
    games' action-set sizes in head order. batch: a TransitionBatch of (B, ...) arrays sharded over the
    mesh's 'data' axis (see `put_batch`). metrics: replicated scalars `loss`, `td_loss`, `cql_loss`,
    `q_data` (mean Q of the data actions), `q_other` (mean Q of the other actions), `q_max`, `grad_norm`,
    and (G,) vectors `game_td_loss`, `game_count`.
    The target network is a hard copy of the online one after every `target_update_period`-th step.
    optimizer: default `make_optimizer(config)`; fine-tuning passes one that freezes some parameters.
    """
    from sqlcli_core import networks
    from sqlcli_core.methods import losses

    network = networks.build_network(network_config, num_actions)
    optimizer = make_optimizer(config) if optimizer is None else optimizer
    loss_fn = losses.make_loss_fn(network.apply, networks.action_mask(num_actions), network_config.support(),
                                  config.gamma, config.alpha)

    def step(state: TrainState, batch: TransitionBatch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.target_params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_step = state.step + 1
        target_params = optax.periodic_update(params, state.target_params, new_step, config.target_update_period)
        metrics = {
            "loss": loss,
            "td_loss": aux["td_loss"],
            "cql_loss": aux["cql_loss"],
            "q_data": aux["q_data"],
            "q_other": aux["q_other"],
            "q_max": aux["q_max"],
            "grad_norm": optax.tree.norm(grads),
            "game_td_loss": aux["per_game_td_loss"],
            "game_count": aux["per_game_count"],
        }
        return TrainState(params, target_params, opt_state, new_step, state.rng), metrics

    state_sharding = replicated(mesh)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding(mesh)),
                   out_shardings=(state_sharding, state_sharding), donate_argnums=0)


# ---------------------------------------------------------------------------------------------------------
# Feeding and driving


class Prefetcher:
    """Draws batches from a sampler and copies them to the devices in a background thread, `depth` ahead.

    Each item is (device batch, sampler state right after drawing it), so a checkpoint taken after
    consuming a batch records exactly the sampler position to resume from, however far ahead the thread
    has read. Errors in the thread are re-raised by `next()`.
    """

    def __init__(self, sampler, sharding: NamedSharding, depth: int = 2):
        self._sampler = sampler
        self._sharding = sharding
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sql-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                host_batch = self._sampler.next_batch()
                sampler_state = self._sampler.state_dict()
                item = (put_batch(host_batch, self._sharding), sampler_state)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._queue.put(exc)

    def __iter__(self) -> Iterator[tuple[TransitionBatch, dict]]:
        return self

    def __next__(self) -> tuple[TransitionBatch, dict]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the prefetch thread stopped without an error") from None
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch in hand) and drop what it prefetched."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SCALAR_METRICS = ("loss", "td_loss", "cql_loss", "q_data", "q_other", "q_max", "grad_norm")


def summarize_metrics(window: list[dict], game_names: Sequence[str]) -> dict:
    """Average the step metrics of one logging window (host numpy dicts) into one JSON-able record.

    Scalars are plain means over the steps; per-game TD losses are weighted by each game's sample count,
    and games without samples in the window are left out.
    """
    record = {k: float(np.mean([m[k] for m in window])) for k in SCALAR_METRICS}
    counts = np.sum([m["game_count"] for m in window], axis=0)
    sums = np.sum([m["game_td_loss"] * m["game_count"] for m in window], axis=0)
    record["game_td_loss"] = {name: float(sums[g] / counts[g]) for g, name in enumerate(game_names) if counts[g] > 0}
    record["game_samples"] = {name: int(counts[g]) for g, name in enumerate(game_names) if counts[g] > 0}
    return record


def fit(step_fn, state: TrainState, batches: Iterator[tuple[TransitionBatch, dict]], *, num_steps: int,
        batch_size: int, game_names: Sequence[str], log_every: int = 100,
        on_log: Callable[[dict], None] | None = None,
        on_step: Callable[[int, TrainState, dict], None] | None = None) -> tuple[TrainState, dict | None]:
    """Run `step_fn` from `state.step` up to `num_steps`, logging every `log_every` steps.

    on_log(record) receives the averaged metrics of each window plus `step`, `steps_per_s`, `samples_per_s`
    (rates exclude the first step of the invocation, which compiles; None for a window of only that step);
    on_step(step, state, sampler_state) runs after every step (checkpointing, progress). Metrics are
    fetched from the devices only once per window, so dispatch runs ahead of the host.
    Returns the final state and the last record (None when no step ran).
    """
    import time

    step = int(jax.device_get(state.step))
    pending: list[dict] = []
    last_record = None
    tick, tick_step, timed = time.perf_counter(), step, False
    while step < num_steps:
        batch, sampler_state = next(batches)
        state, metrics = step_fn(state, batch)
        step += 1
        pending.append(metrics)
        if not timed:  # the first step of an invocation includes compilation: rates start after it
            jax.block_until_ready(metrics)
            tick, tick_step, timed = time.perf_counter(), step, True
        if step % log_every == 0 or step == num_steps:
            window = jax.device_get(pending)
            pending = []
            now = time.perf_counter()
            rate = (step - tick_step) / max(now - tick, 1e-9) if step > tick_step else None
            tick, tick_step = now, step
            last_record = {"step": step, **summarize_metrics(window, game_names), "steps_per_s": rate,
                           "samples_per_s": None if rate is None else rate * batch_size}
            if on_log is not None:
                on_log(last_record)
        if on_step is not None:
            on_step(step, state, sampler_state)
    return state, last_record


# ---------------------------------------------------------------------------------------------------------
# Pre-training: sampler -> learner -> run directory


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """A whole `sql pretrain` run. `network` and `learner` hold the model and optimisation settings.

    batch_size is global (split over processes, then devices); steps is the total number of gradient
    steps (a re-run continues up to it); game_weights maps game name -> relative sampling weight
    (games left out weigh 1; None: uniform over games); cache_bytes is the sampler's per-process chunk cache in bytes.
    """

    data: str
    run_dir: str
    games: str = "atari40"
    network: Any = None  # networks.NetworkConfig
    learner: LearnerConfig = LearnerConfig()
    batch_size: int = 512
    n_step: int = 3
    steps: int = 10_000_000
    seed: int = 0
    checkpoint_every: int = 1000
    keep: int = 3
    log_every: int = 100
    game_weights: dict | None = None
    cache_bytes: int | None = None
    prefetch: int = 2
    prefetch_units: int | None = None  # the sampler's units loaded ahead (None: its default; docs/sampler.md)

    def __post_init__(self):
        for name in ("batch_size", "n_step", "steps", "checkpoint_every", "keep", "log_every", "prefetch"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


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
    import time

    from sqlcli_core import networks
    from sqlcli_core.atari.games import resolve_games
    from sqlcli_core.atomic import append_jsonl
    from sqlcli_core.data.sampler import ReplaySampler
    from sqlcli_core.training import checkpoint

    started = time.perf_counter()
    games = resolve_games(config.games)
    num_actions = networks.num_actions_for(config.network, games)
    mesh = make_mesh()
    local_batch = check_batch_size(config.batch_size, mesh)
    primary = jax.process_index() == 0

    weights = None
    if config.game_weights:
        unknown = sorted(set(config.game_weights) - {g.name for g in games})
        if unknown:
            raise UsageError(f"--game-weights names games that are not trained: {unknown}",
                             hint="weight only games of --games")
        weights = [float(config.game_weights.get(g.name, 1.0)) for g in games]
    sampler = ReplaySampler(
        config.data, games=[g.name for g in games], batch_size=local_batch, n_step=config.n_step,
        gamma=config.learner.gamma, seed=config.seed, game_weights=weights,
        **({} if config.cache_bytes is None else {"cache_bytes": config.cache_bytes}),
        **({} if config.prefetch_units is None else {"prefetch_units": config.prefetch_units}),
        process_index=jax.process_index(), process_count=jax.process_count())
    try:
        sampler_games = [g.name for g in sampler.games]
        if sampler_games != [g.name for g in games]:
            raise UsageError(f"the sampler serves games {sampler_games}, not the {len(games)} asked for",
                             hint="pass --games in the store's order or check the store")

        counts = networks.parameter_table(config.network, games)["parts"]
        identity = checkpoint.run_identity(config.network.to_dict(), [g.name for g in games], num_actions)
        run_dir = Path(config.run_dir)
        checkpoint.prepare_run_dir(run_dir, identity=identity, config=config.to_dict(), parameter_counts=counts,
                                   seed=config.seed, write=primary)
        ckpt = checkpoint.Checkpointer(run_dir, identity, every=config.checkpoint_every, keep=config.keep)
        try:
            resumed_from = ckpt.latest_step()
            if resumed_from is not None:
                abstract = abstract_train_state(config.network, num_actions, config.learner, mesh)
                state, meta = ckpt.restore(abstract, resumed_from)
                state = TrainState(*state)
                saved = meta.get("sampler_states") or []
                if len(saved) == jax.process_count() and saved[jax.process_index()] is not None:
                    sampler.load_state_dict(saved[jax.process_index()])
                else:
                    raise UsageError(
                        f"checkpoint {resumed_from} was written by {len(saved)} processes, this run has "
                        f"{jax.process_count()}", hint="resume with the same number of processes (devices may differ)")
                if primary:
                    checkpoint.truncate_metrics(run_dir, resumed_from)
            else:
                state = init_train_state(config.network, num_actions, config.learner, config.seed, mesh)
                if primary:  # lines of an attempt killed before its first checkpoint
                    checkpoint.truncate_metrics(run_dir, 0)
            start_step = int(jax.device_get(state.step))
            if on_start is not None:
                on_start({"start_step": start_step, "resumed_from": resumed_from, "parameter_counts": counts,
                          "devices": mesh.devices.size, "processes": jax.process_count(),
                          "games": [g.name for g in games]})

            step_fn = make_train_step(config.network, num_actions, config.learner, mesh)
            metrics_path = run_dir / checkpoint.METRICS_FILE
            game_names = [g.name for g in games]

            def log(record: dict) -> None:
                record = {**record, "time": time.time()}
                if primary:
                    append_jsonl(metrics_path, record)
                if on_log is not None:
                    on_log(record)

            def after_step(step: int, state: TrainState, sampler_state: dict) -> None:
                ckpt.save(step, state, sampler_state, force=step == config.steps)
                if on_step is not None:
                    on_step(step)

            last = None
            if start_step < config.steps:
                with Prefetcher(sampler, batch_sharding(mesh), depth=config.prefetch) as batches:
                    state, last = fit(step_fn, state, batches, num_steps=config.steps, batch_size=config.batch_size,
                                      game_names=game_names, log_every=config.log_every, on_log=log,
                                      on_step=after_step)
            ckpt.wait()
            final_step = int(jax.device_get(state.step))
            latest = ckpt.latest_step()
        finally:
            ckpt.close()
    finally:
        sampler.close()
    return {
        "run_dir": str(run_dir), "steps": final_step, "start_step": start_step, "resumed_from": resumed_from,
        "checkpoint_step": latest, "games": game_names, "num_parameters": int(sum(counts.values())),
        "parameter_counts": counts, "devices": int(mesh.devices.size), "processes": jax.process_count(),
        "last_metrics": last, "seconds": time.perf_counter() - started,
    }

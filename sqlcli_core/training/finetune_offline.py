"""Offline fine-tuning to a game that was not in pre-training: Scaled QL on a small slice of its data.

    pre-trained run --torso, embedding, projection--> one-game network with a fresh head
    store (sql shard) --N rows spread over the chosen runs/checkpoints--> ReplaySampler --> fit

The data slice is a row selection of the store's run set (`sqlcli_core.data.view`): its runs list only the
chosen rows as segments, so nothing is copied and the sampler's own validity rules (stack and n-step window
inside a segment) keep every transition inside the slice. The update is the
learner's (same loss, same target copies) with the optimizer of `transfer.py` (optional freezing).
Resuming is the learner's: Orbax checkpoints of the train state plus the sampler's state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from sqlcli_core.acting.protocol import get_protocol
from sqlcli_core.data.sampler import ReplaySampler
from sqlcli_core.data.slices import slice_run_set
from sqlcli_core.data.store import absolute_location
from sqlcli_core.data.view import RunSet
from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation.evaluate import EvalConfig, evaluate
from sqlcli_core.evaluation.results import eval_metrics_record, final_eval_is_current, write_final_eval
from sqlcli_core.games.catalog import Game, canonical_name
from sqlcli_core.networks.network import count_parameters
from sqlcli_core.runs.lifecycle import TrainingRun
from sqlcli_core.runs.policy import ParamsPolicy, make_q_fn
from sqlcli_core.runs.run_record import check_resume_settings, run_identity
from sqlcli_core.settings import flatten
from sqlcli_core.training import memory
from sqlcli_core.training.configs import (
    INITS,
    OfflineConfig,
    finetune_defaults,
    finetune_settings_from_run,
    flat_identity,
    resolve_finetune_config,
)
from sqlcli_core.training.mesh import make_mesh, replicated
from sqlcli_core.training.offline_recipe import OfflineRun, train_offline
from sqlcli_core.training.transfer import (
    cached_finetune_step,
    finetune_num_actions,
    initial_params,
    load_pretrained,
    trainable_labels,
)
from sqlcli_core.training.update import TrainState

COMMAND = "finetune-offline"


# ------------------------------------------------------------------------------------------ data slice


def data_slice(data: str | Path, game: Game, *, runs: str | None, checkpoints: str | None,
               budget: int, rule: str = "spread") -> tuple[RunSet, dict]:
    """(run set for ReplaySampler holding only the selected rows, record of what was selected): see
    `sqlcli_core.data.slices` for the rules (`spread` over the checkpoints, or the `first` rows)."""
    return slice_run_set(data, game.name, runs=runs, checkpoints=checkpoints, budget=budget, rule=rule)


# ------------------------------------------------------------------------------------------ training


def run_offline(config: OfflineConfig, *, run_dir: str | Path, source: str | Path | None,
                on_log: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune offline, then evaluate on real ALE; returns the summary (scores also in RUN/eval/final.json).

    Re-running with the same arguments resumes from the newest checkpoint, or only re-evaluates when the
    training is complete and the result file is missing. on_log(record) receives each metrics record (kind
    "train", and the final "eval").
    """

    # Validate everything before touching the run directory.
    run_dir = Path(run_dir)
    game = Game(canonical_name(config.game))
    config = dataclasses.replace(config, game=game.name, data=absolute_location(config.data))
    protocol = get_protocol(config.protocol)
    if config.eval_max_steps > protocol.max_episode_steps:
        raise UsageError(f"--eval-max-steps must be <= {protocol.max_episode_steps}, got {config.eval_max_steps}",
                         hint="the protocol's cap")
    if source is None:
        raise UsageError("--from is required", hint="pass the pre-trained run (with --init scratch it sets the architecture)")
    trainable_labels({}, config.freeze)
    if config.init not in INITS:
        raise UsageError(f"unknown --init '{config.init}'", hint="choose pretrained or scratch")
    learner_config = config.learner
    method = learner_config.get_method()
    source_str = str(Path(source).absolute())
    check_resume_settings(run_dir, COMMAND, flat_identity(config), source_str, defaults=identity_defaults(),
                          recorded=functools.partial(flatten, OfflineConfig))
    view, selection = data_slice(config.data, game, runs=config.runs, checkpoints=config.checkpoints,
                                 budget=config.transitions, rule=config.slice_rule)

    # The one-game network and its train state.
    pretrained = load_pretrained(source)
    net_config = pretrained.network_config
    num_actions = tuple(finetune_num_actions(net_config, game))
    mesh = make_mesh(jax.local_devices()[:1])
    params, origin = initial_params(net_config, num_actions, config.seed, init=config.init,
                                             pretrained=pretrained, game=game, freeze=config.freeze)
    optimizer, train_step = cached_finetune_step(net_config, num_actions, learner_config, config.freeze,
                                                          tuple(mesh.devices.flat))
    state = TrainState(params, method.initial_target(params), optimizer.init(params),
                       jnp.zeros((), jnp.int32), jax.random.PRNGKey(config.seed + 1))
    state = jax.device_put(state, replicated(mesh))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), state)

    identity = run_identity(net_config.to_dict(), [game.name], num_actions, method.name)
    counts = count_parameters(params)
    run_config = {"command": COMMAND, "settings": config.identity_fields(), "steps": config.steps,
                  "from": source_str, "origin": origin, "data_selection": selection}
    run = OfflineRun(run_dir, command=COMMAND, identity=identity, config=run_config, parameter_counts=counts,
                     seed=config.seed, steps=config.steps, batch_size=config.batch_size, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every, keep=2)
    # Before the sampler allocates its cache (exit 5 with the numbers, nothing created).
    memory.check_fits(memory.training_estimate(local_batch=config.batch_size, sample_bytes=memory.TRANSITION_SAMPLE_BYTES,
                                               cache_bytes=config.cache_bytes, host_batches=5, device_batches=3,
                                               devices=1),
                      hint="lower --batch-size (or --cache-bytes), or use a larger machine")
    final_path = run_dir / "eval" / "final.json"

    def final_evaluation(training: TrainingRun, state: TrainState) -> int:
        """RUN/eval/final.json of the trained parameters, unless it is there for this step already."""
        grad_steps = int(jax.device_get(state.step))
        if final_eval_is_current(final_path, "grad_steps", grad_steps):
            return grad_steps
        cfg = EvalConfig(games=(game.name,), seeds=tuple(range(config.final_seeds)), episodes=config.final_episodes,
                         protocol=protocol, epsilon=protocol.epsilon, max_steps=config.eval_max_steps)
        policy = ParamsPolicy(game, make_q_fn(net_config, num_actions, method.name), state.params, grad_steps)
        results, _ = evaluate(policy, cfg, num_envs=min(config.eval_envs, config.final_seeds * config.final_episodes))
        training.metrics.drop(lambda r: r.get("kind") == "eval")  # of an attempt that died before final.json
        written = training.log(eval_metrics_record(grad_steps, grad_steps, results, final=True))
        if on_log:
            on_log(written)
        write_final_eval(final_path, command=COMMAND, run_config=run_config, seed=config.seed, eval_config=cfg,
                         results=results, run_dir=run_dir, step=grad_steps, arch=net_config.arch,
                         num_params=sum(counts.values()),
                         finetune={"command": COMMAND, "init": config.init, "freeze": config.freeze, "origin": origin,
                                   "grad_steps": grad_steps, "data_rows": selection["rows"]})
        return grad_steps

    sampler = ReplaySampler(view, games=[game.name], batch_size=config.batch_size, n_step=config.n_step,
                            gamma=learner_config.gamma, seed=config.seed, cache_bytes=config.cache_bytes)
    try:
        result = train_offline(run, sampler=sampler, mesh=mesh, train_step=train_step, method=method,
                               game_names=[game.name], abstract_state=abstract, initial_state=lambda: state,
                               on_log=on_log, finish=final_evaluation)
    finally:
        sampler.close()
    final = json.loads(final_path.read_text())
    g = final["games"][game.name]
    return {"run": str(run_dir), "game": game.name, "init": config.init, "freeze": config.freeze,
            "grad_steps": result.finished, "resumed_from": result.resumed_from, "data_rows": selection["rows"],
            "final_mean": g["mean"], "final_std": g["std"], "human_normalized": g["human_normalized"],
            "optimal_normalized": g.get("optimal_normalized"),  # synthetic games: 0 = random, 1 = optimal
            "last_metrics": result.last_metrics, "eval_file": str(final_path), "metrics": str(result.metrics_path)}


def identity_defaults() -> dict:
    """Defaults of the settings a resumed run must repeat (a setting added later, at its default, matches)."""
    return finetune_defaults(OfflineConfig)


def settings_from_run(record: dict) -> dict:
    """The flat settings a `sql finetune-offline` run.json records, for `--config RUN/run.json`."""
    return finetune_settings_from_run(OfflineConfig, COMMAND, record, extra=("steps",))


def resolve_config(config_file: str | Path | None, flags: dict) -> OfflineConfig:
    """Defaults <- `--config` (TOML or RUN/run.json) <- the flags given (not None) -> the config."""
    return resolve_finetune_config(OfflineConfig, config_file, flags, settings_from_run)

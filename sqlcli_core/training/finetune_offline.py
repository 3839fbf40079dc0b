"""Offline fine-tuning to a game that was not in pre-training: Scaled QL on a small slice of its data.

    pre-trained run --torso, embedding, projection--> one-game network with a fresh head
    store (sql shard) --N rows spread over the chosen runs/checkpoints--> ReplaySampler --> learner.fit

The data slice is a row selection of the store's run set (`sqlcli_core.data.view`): its runs list only the
chosen rows as segments, so nothing is copied and the sampler's own validity rules (stack and n-step window
inside a segment) keep every transition inside the slice. The update is the
learner's (same loss, same target copies) with the optimizer of `finetune.py` (optional freezing).
Resuming is the learner's: Orbax checkpoints of the train state plus the sampler's state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from sqlcli_core.atari.env import get_protocol
from sqlcli_core.atari.games import Game, canonical_name
from sqlcli_core.atomic import write_json
from sqlcli_core.data.slices import SLICE_RULES, select_segments, slice_run_set  # noqa: F401 - select_segments re-exported
from sqlcli_core.data.store import absolute_location
from sqlcli_core.data.view import RunSet
from sqlcli_core.errors import UsageError

COMMAND = "finetune-offline"


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """Everything `sql finetune-offline` does (defaults and their sources: docs/finetune.md)."""

    game: str
    data: str
    init: str = "pretrained"
    freeze: str = "none"
    transitions: int = 2_000_000  # paper: about 2M transitions of the new game
    runs: str | None = None  # e.g. "1" or "1-5"; None = every run in the store
    checkpoints: str | None = None  # DQN-Replay checkpoint numbers, e.g. "0-1"; None = all in the store
    slice_rule: str = "spread"  # how `transitions` rows are taken: spread over all checkpoints (ours), or first
    steps: int = 50_000  # gradient steps
    batch_size: int = 32
    learning_rate: float = 1e-4
    adam_eps: float = 3.125e-4
    alpha: float = 0.05  # CQL weight, as in pre-training
    gamma: float = 0.99
    n_step: int = 3
    target_update_period: int = 2000
    cache_bytes: int = 2 << 30
    protocol: str = "dopamine"
    final_seeds: int = 5
    final_episodes: int = 2
    eval_max_steps: int = 27_000
    eval_envs: int = 16
    checkpoint_every: int = 5000
    log_every: int = 500
    seed: int = 0

    def __post_init__(self):
        for name in ("transitions", "steps", "batch_size", "final_seeds", "final_episodes", "eval_max_steps",
                     "eval_envs", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.slice_rule not in SLICE_RULES:
            raise UsageError(f"unknown --slice '{self.slice_rule}'", hint=f"choose {' or '.join(SLICE_RULES)}")

    def learner_config(self):
        from sqlcli_core.training.learner import LearnerConfig

        return LearnerConfig(learning_rate=self.learning_rate, adam_eps=self.adam_eps, alpha=self.alpha,
                             gamma=self.gamma, target_update_period=self.target_update_period)

    def identity_fields(self) -> dict:
        """Settings a resumed run must repeat (everything but its length, logging and evaluation)."""
        d = dataclasses.asdict(self)
        for k in ("steps", "checkpoint_every", "log_every", "final_seeds", "final_episodes", "eval_envs",
                  "cache_bytes"):
            d.pop(k)
        return d


# ------------------------------------------------------------------------------------------ data slice


def data_slice(data: str | Path, game: Game, *, runs: str | None, checkpoints: str | None,
               budget: int, rule: str = "spread") -> tuple[RunSet, dict]:
    """(run set for ReplaySampler holding only the selected rows, record of what was selected): see
    `sqlcli_core.data.slices` for the rules (`spread` over the checkpoints, or the `first` rows)."""
    return slice_run_set(data, game.name, runs=runs, checkpoints=checkpoints, budget=budget, rule=rule)


# ------------------------------------------------------------------------------------------ training


def _check_resume_settings(run_dir: Path, config: OfflineConfig, source: str) -> None:
    from sqlcli_core.training import checkpoint

    if not (run_dir / checkpoint.RUN_FILE).exists():
        return
    previous = checkpoint.read_run(run_dir).get("config", {})
    if previous.get("command") != COMMAND:
        raise UsageError(f"run directory {run_dir} was not written by `sql {COMMAND}`", hint="pass a new --run-dir")
    had = previous.get("settings") or {}
    diff = sorted(k for k, v in config.identity_fields().items() if had.get(k) != v)
    if previous.get("from") != source:
        diff.append("from")
    if diff:
        raise UsageError(f"run directory {run_dir} was started with other settings ({', '.join(diff)})",
                         hint="repeat that run's options to resume it, or pass a new --run-dir")


def run_offline(config: OfflineConfig, *, run_dir: str | Path, source: str | Path | None,
                on_log: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune offline, then evaluate on real ALE; returns the summary (scores also in RUN/eval/final.json).

    Re-running with the same arguments resumes from the newest checkpoint, or only re-evaluates when the
    training is complete and the result file is missing.
    """
    from sqlcli_core import networks
    from sqlcli_core.data.sampler import ReplaySampler
    from sqlcli_core.evaluation import evaluate as evaluation
    from sqlcli_core.provenance import provenance
    from sqlcli_core.training import checkpoint, finetune, learner
    from sqlcli_core.training.checkpoint import make_q_fn
    from sqlcli_core.training.finetune_online import ParamsPolicy

    run_dir = Path(run_dir)
    game = Game(canonical_name(config.game))
    config = dataclasses.replace(config, game=game.name, data=absolute_location(config.data))
    protocol = get_protocol(config.protocol)
    if config.eval_max_steps > protocol.max_episode_steps:
        raise UsageError(f"--eval-max-steps must be <= {protocol.max_episode_steps}, got {config.eval_max_steps}",
                         hint="the protocol's cap")
    if source is None:
        raise UsageError("--from is required", hint="pass the pre-trained run (with --init scratch it sets the architecture)")
    finetune.trainable_labels({}, config.freeze)
    if config.init not in finetune.INITS:
        raise UsageError(f"unknown --init '{config.init}'", hint="choose pretrained or scratch")
    learner_config = config.learner_config()
    source_str = str(Path(source).absolute())
    _check_resume_settings(run_dir, config, source_str)
    view, selection = data_slice(config.data, game, runs=config.runs, checkpoints=config.checkpoints,
                                 budget=config.transitions, rule=config.slice_rule)

    pretrained = finetune.load_pretrained(source)
    net_config = pretrained.network_config
    num_actions = tuple(finetune.finetune_num_actions(net_config, game))
    mesh = learner.make_mesh(jax.local_devices()[:1])
    params, origin = finetune.initial_params(net_config, num_actions, config.seed, init=config.init,
                                             pretrained=pretrained, game=game, freeze=config.freeze)
    optimizer, train_step = finetune.cached_finetune_step(net_config, num_actions, learner_config, config.freeze,
                                                          tuple(mesh.devices.flat))
    target = jax.tree.map(jnp.copy, params)  # a separate buffer: the update step donates both
    state = learner.TrainState(params, target, optimizer.init(params), jnp.zeros((), jnp.int32),
                               jax.random.PRNGKey(config.seed + 1))
    state = jax.device_put(state, learner.replicated(mesh))

    identity = checkpoint.run_identity(net_config.to_dict(), [game.name], num_actions)
    counts = networks.count_parameters(params)
    run_config = {"command": COMMAND, "settings": config.identity_fields(), "steps": config.steps,
                  "from": source_str, "origin": origin, "data_selection": selection}
    checkpoint.prepare_run_dir(run_dir, identity=identity, config=run_config, parameter_counts=counts,
                               seed=config.seed, command=COMMAND)
    ckpt = checkpoint.Checkpointer(run_dir, identity, every=config.checkpoint_every, keep=2)
    metrics_path = run_dir / checkpoint.METRICS_FILE
    sampler = ReplaySampler(view, games=[game.name], batch_size=config.batch_size, n_step=config.n_step,
                            gamma=config.gamma, seed=config.seed, cache_bytes=config.cache_bytes)
    resumed_from = None
    last = None
    try:
        latest = ckpt.latest_step()
        if latest is not None:
            replicated = learner.replicated(mesh)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)
            restored, meta = ckpt.restore(abstract, latest)
            state = learner.TrainState(*restored) if not isinstance(restored, learner.TrainState) else restored
            sampler.load_state_dict(meta["sampler_states"][0])
            checkpoint.truncate_metrics(run_dir, latest)
            resumed_from = latest
        elif metrics_path.exists():
            metrics_path.unlink()  # lines of a run killed before its first checkpoint

        def log(record: dict) -> None:
            from sqlcli_core.atomic import append_jsonl

            append_jsonl(metrics_path, {**record, "kind": "train"})
            if on_log:
                on_log(record)

        def on_step(step: int, st, sampler_state: dict) -> None:
            if step % config.checkpoint_every == 0 or step == config.steps:
                ckpt.save(step, st, sampler_state, force=True)

        if int(jax.device_get(state.step)) < config.steps:
            with learner.Prefetcher(sampler, learner.batch_sharding(mesh)) as batches:
                state, last = learner.fit(train_step, state, batches, num_steps=config.steps,
                                          batch_size=config.batch_size, game_names=[game.name],
                                          log_every=config.log_every, on_log=log, on_step=on_step)
        ckpt.wait()
        grad_steps = int(jax.device_get(state.step))

        final_path = run_dir / "eval" / "final.json"
        if not final_path.exists() or json.loads(final_path.read_text()).get("finetune", {}).get(
                "grad_steps") != grad_steps:
            cfg = evaluation.EvalConfig(games=(game.name,), seeds=tuple(range(config.final_seeds)),
                                        episodes=config.final_episodes, protocol=protocol, epsilon=protocol.epsilon,
                                        max_steps=config.eval_max_steps)
            policy = ParamsPolicy(game, make_q_fn(net_config, num_actions), state.params, grad_steps)
            results, _ = evaluation.evaluate(policy, cfg, num_envs=min(config.eval_envs,
                                                                       config.final_seeds * config.final_episodes))
            result = {
                "provenance": provenance(COMMAND, {**run_config, "eval": cfg.play_settings()}, config.seed),
                "protocol": evaluation.protocol_block(cfg),
                "policy": {"kind": "checkpoint", "run": str(run_dir.absolute()), "step": grad_steps,
                           "arch": net_config.arch, "num_params": int(sum(counts.values()))},
                **evaluation.summarize(results, cfg),
                "finetune": {"command": COMMAND, "init": config.init, "freeze": config.freeze, "origin": origin,
                             "grad_steps": grad_steps, "data_rows": selection["rows"]},
            }
            write_json(final_path, result)
        final = json.loads(final_path.read_text())
        g = final["games"][game.name]
        return {"run": str(run_dir), "game": game.name, "init": config.init, "freeze": config.freeze,
                "grad_steps": grad_steps, "resumed_from": resumed_from, "data_rows": selection["rows"],
                "final_mean": g["mean"], "final_std": g["std"], "human_normalized": g["human_normalized"],
                "last_metrics": last, "eval_file": str(final_path), "metrics": str(metrics_path)}
    finally:
        sampler.close()
        ckpt.close()

"""Online fine-tuning on a game variant (an ALE mode/difficulty): epsilon-greedy acting, a replay ring,
C51 (+ optional CQL) updates, periodic evaluation, exact resume.

One iteration of the loop, with E emulators stepped side by side (one batched Q-network call per step):

    epsilon = schedule(agent steps)                  linear decay after a warm-up, Dopamine's shape
    actions = epsilon-greedy(Q(stacks))              (E,) indices into the game's minimal action set
    frames, rewards, over = emulators.step(actions)  AtariGame: Dopamine's preprocessing, real ALE
    replay.add(...)                                  rows as in DQN-Replay (rewards clipped, 3 padding rows)
    gradient steps until grad_steps == (agent steps - min_replay) // update_period

Agent steps count transitions over all emulators (the paper's "20k online steps"). Every quantity the loop
depends on (train state, replay, emulator states, frame stacks, epsilon generator, counters) goes into the
checkpoint, so a run killed at any point and started again with the same command continues exactly as if it
had not been interrupted.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sqlcli_core.acting.backends import backend_for
from sqlcli_core.acting.protocol import get_protocol
from sqlcli_core.atomic import atomic_output
from sqlcli_core.data.online_replay import OnlineReplay
from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation.evaluate import EvalConfig, evaluate
from sqlcli_core.evaluation.results import eval_metrics_record, final_eval_is_current, write_final_eval
from sqlcli_core.games.catalog import Game, canonical_name, validate_variant
from sqlcli_core.networks.network import count_parameters
from sqlcli_core.runs.lifecycle import TrainingRun
from sqlcli_core.runs.metrics import METRICS_FILE
from sqlcli_core.runs.policy import ParamsPolicy, make_q_fn
from sqlcli_core.runs.run_record import check_resume_settings, run_identity
from sqlcli_core.settings import flatten
from sqlcli_core.training.configs import (
    INITS,
    OnlineConfig,
    finetune_defaults,
    finetune_settings_from_run,
    flat_identity,
    resolve_finetune_config,
)
from sqlcli_core.training.loop import check_finite
from sqlcli_core.training.mesh import batch_sharding, make_mesh, put_batch, replicated
from sqlcli_core.training.transfer import (
    cached_finetune_step,
    finetune_num_actions,
    initial_params,
    load_pretrained,
    trainable_labels,
)
from sqlcli_core.training.update import TrainState

COMMAND = "finetune-online"
STACK = 4


def grad_steps_due(agent_steps: int, config: OnlineConfig) -> int:
    """Gradient steps that should have been taken after `agent_steps` agent steps."""
    return max(0, (agent_steps - config.min_replay) // config.update_period)


class Actors:
    """E emulators of one game variant with their frame stacks and episode counters.

    Episodes end at game over or at the protocol's step cap; both count as terminal, as in DQN-Replay.
    """

    def __init__(self, game: Game, config: OnlineConfig, protocol):
        self.game = game
        self.protocol = protocol
        n = config.num_envs
        seeds = np.random.SeedSequence(config.seed).spawn(n)
        # Each game's backend makes its emulators (ALE: the python engine, whose states the checkpoints hold).
        backend = backend_for(game.name)
        self.envs = [backend.make_emulator(game, protocol=protocol, engine="python", mode=config.mode,
                                           difficulty=config.difficulty, seed=seed)
                     for seed in (int(s.generate_state(1)[0] & 0x7FFFFFFF) for s in seeds)]
        self.stacks = np.zeros((n, STACK, 84, 84), np.uint8)
        self.returns = np.zeros((n,), np.float64)
        self.lengths = np.zeros((n,), np.int64)

    def reset(self, replay: OnlineReplay) -> None:
        for e in range(len(self.envs)):
            self._new_episode(e, replay)

    def _new_episode(self, e: int, replay: OnlineReplay) -> None:
        self.stacks[e] = 0
        self.stacks[e, -1] = self.envs[e].reset()
        self.returns[e] = 0.0
        self.lengths[e] = 0
        replay.start_episodes([e])

    def step(self, actions: np.ndarray, replay: OnlineReplay) -> list[dict]:
        """Step every emulator, write the rows, start new episodes; returns the episodes that ended."""
        n = len(self.envs)
        frames = self.stacks[:, -1].copy()
        rewards = np.zeros((n,), np.float32)
        terminals = np.zeros((n,), bool)
        new_frames = np.zeros((n, 84, 84), np.uint8)
        for env, action in zip(self.envs, actions):
            env.send(int(action))
        for e, env in enumerate(self.envs):
            new_frames[e], reward, over = env.recv()
            self.returns[e] += reward
            self.lengths[e] += 1
            rewards[e] = reward
            terminals[e] = over or self.lengths[e] >= self.protocol.max_episode_steps
        replay.add(frames, actions, rewards, terminals)
        self.stacks[:, :-1] = self.stacks[:, 1:]
        self.stacks[:, -1] = new_frames
        ended = []
        for e in np.flatnonzero(terminals):
            ended.append({"return": float(self.returns[e]), "length": int(self.lengths[e])})
            self._new_episode(int(e), replay)
        return ended

    def state_dict(self) -> dict:
        return {"envs": [base64.b64encode(env.save_state()).decode() for env in self.envs],
                "returns": self.returns.tolist(), "lengths": self.lengths.tolist()}

    def load(self, state: dict, stacks: np.ndarray) -> None:
        for env, blob in zip(self.envs, state["envs"]):
            env.restore_state(base64.b64decode(blob))
        self.returns[:] = state["returns"]
        self.lengths[:] = state["lengths"]
        self.stacks[:] = stacks

    def close(self) -> None:
        for env in self.envs:
            env.close()


@functools.lru_cache(maxsize=8)
def resolve_variant(game: str, mode: int | None, difficulty: int | None) -> Game:
    """The game, with its mode and difficulty checked against ALE (the error lists the valid ones)."""
    g = Game(canonical_name(game))
    validate_variant(g, mode, difficulty)
    return g


def write_curve_csv(run_dir: Path) -> Path:
    """RUN/learning_curve.csv (agent_steps, grad_steps, eval_mean, eval_std, episodes) from metrics.jsonl."""

    rows = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "eval":
            rows.append((rec["step"], rec["grad_steps"], rec["mean"], rec["std"], len(rec["scores"])))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["agent_steps", "grad_steps", "eval_mean", "eval_std", "episodes"])
    writer.writerows(rows)
    path = run_dir / "learning_curve.csv"
    with atomic_output(path, "w") as f:
        f.write(buf.getvalue())
    return path


def identity_defaults() -> dict:
    """Defaults of the settings a resumed run must repeat (a setting added later, at its default, matches)."""
    return finetune_defaults(OnlineConfig)


def settings_from_run(record: dict) -> dict:
    """The flat settings a `sql finetune-online` run.json records, for `--config RUN/run.json`."""
    return finetune_settings_from_run(OnlineConfig, COMMAND, record, extra=("steps", "eval_every", "checkpoint_every"))


def resolve_config(config_file: str | Path | None, flags: dict) -> OnlineConfig:
    """Defaults <- `--config` (TOML or RUN/run.json) <- the flags given (not None) -> the config."""
    return resolve_finetune_config(OnlineConfig, config_file, flags, settings_from_run)


def run_online(config: OnlineConfig, *, run_dir: str | Path, source: str | Path | None,
               on_progress: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune online; returns the summary (also written to RUN/eval/final.json with the final scores).

    source: the pre-trained run (for init 'pretrained'; for 'scratch' it gives only the architecture).
    Re-running with the same arguments resumes from the newest checkpoint, or does nothing when finished.
    """

    # Validate everything before touching the run directory.
    run_dir = Path(run_dir)
    game = resolve_variant(config.game, config.mode, config.difficulty)
    config = dataclasses.replace(config, game=game.name)
    protocol = get_protocol(config.protocol)
    if config.eval_max_steps > protocol.max_episode_steps:
        raise UsageError(f"--eval-max-steps must be <= {protocol.max_episode_steps}, got {config.eval_max_steps}",
                         hint="the protocol's cap")
    if source is None:
        raise UsageError("--from is required",
                         hint="pass the pre-trained run (with --init scratch it sets the architecture)")
    trainable_labels({}, config.freeze)  # validates --freeze before anything loads
    if config.init not in INITS:
        raise UsageError(f"unknown --init '{config.init}'", hint="choose pretrained or scratch")
    replay_config = config.replay_config()
    learner_config = config.learner
    method = learner_config.get_method()
    schedule = config.schedule()
    source_str = str(Path(source).absolute())
    check_resume_settings(run_dir, COMMAND, flat_identity(config), source_str, defaults=identity_defaults(),
                          recorded=functools.partial(flatten, OnlineConfig))

    # The one-game network and its train state.
    pretrained = load_pretrained(source)
    net_config = pretrained.network_config
    num_actions = finetune_num_actions(net_config, game)
    mesh = make_mesh(jax.local_devices()[:1])
    params, origin = initial_params(net_config, num_actions, config.seed, init=config.init,
                                             pretrained=pretrained, game=game, freeze=config.freeze)
    optimizer, train_step = cached_finetune_step(net_config, tuple(num_actions), learner_config,
                                                          config.freeze, tuple(mesh.devices.flat))
    rng = jax.random.PRNGKey(config.seed + 1)
    state = TrainState(params, method.initial_target(params), optimizer.init(params),
                               jnp.zeros((), jnp.int32), rng)
    state = jax.device_put(state, replicated(mesh))
    q_fn = make_q_fn(net_config, tuple(num_actions), method.name)
    batch_spec = batch_sharding(mesh)

    identity = run_identity(net_config.to_dict(), [game.name], num_actions, method.name)
    run_config = {"command": COMMAND, "settings": config.identity_fields(), "steps": config.steps,
                  "eval_every": config.eval_every, "checkpoint_every": config.checkpoint_every,
                  "from": source_str, "origin": origin, "variant": {"mode": config.mode,
                                                                    "difficulty": config.difficulty}}
    counts = count_parameters(params)
    metrics_path = run_dir / METRICS_FILE

    # The acting side: replay, emulators, exploration.
    replay = OnlineReplay(replay_config, game_id=0, seed=config.seed)
    actors = Actors(game, config, protocol)
    actor_rng = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(config.num_envs + 1)[-1])
    try:
        with TrainingRun(run_dir, command=COMMAND, identity=identity, config=run_config, parameter_counts=counts,
                         seed=config.seed, checkpoint_every=config.checkpoint_every, keep=2) as run:
            train_shapes = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), state)

            def abstract_for(saved_meta: dict) -> dict:
                loop_state = saved_meta["sampler_states"][0]
                return _to_saved_layout({"train": train_shapes, "replay": _abstract_replay(replay, loop_state["replay"]),
                                         "stacks": jax.ShapeDtypeStruct(actors.stacks.shape, np.uint8)})

            def restore(saved_state, saved_meta: dict, step: int) -> tuple[TrainState, int]:
                meta = saved_meta["sampler_states"][0]
                restored = _from_saved_layout(saved_state)
                replay.load(meta["replay"], {k: np.asarray(v) for k, v in restored["replay"].items()})
                actors.load(meta["actors"], np.asarray(restored["stacks"]))
                actor_rng.bit_generator.state = meta["actor_rng"]
                return TrainState(*restored["train"]), int(meta["agent_steps"])

            def start() -> tuple[TrainState, int]:
                actors.reset(replay)
                return state, 0

            (state, agent_steps), resumed_from = run.resume_or_start(
                abstract_for, restore=restore, start=start,
                metrics_step_for=lambda saved_meta: int(saved_meta["sampler_states"][0]["agent_steps"]))

            def save(force: bool = False) -> None:
                meta = {"replay": replay.state_dict(), "actors": actors.state_dict(),
                        "actor_rng": actor_rng.bit_generator.state, "agent_steps": agent_steps,
                        "grad_steps": int(jax.device_get(state.step))}
                tree = {"train": state, "replay": replay.arrays(), "stacks": actors.stacks.copy()}
                run.save(agent_steps, _to_saved_layout(tree), meta, force=force)

            def evaluate_now(seeds, episodes) -> tuple[list, Any]:
                cfg = EvalConfig(games=(game.name,), seeds=tuple(seeds), episodes=episodes,
                                            protocol=protocol, epsilon=protocol.epsilon, max_steps=config.eval_max_steps,
                                            mode=config.mode, difficulty=config.difficulty)
                policy = ParamsPolicy(game, q_fn, state.params, int(jax.device_get(state.step)))
                width = min(config.num_envs * 2, _episode_count(seeds, episodes))
                results, _ = evaluate(policy, cfg, num_envs=width)
                return results, cfg

            window: list[dict] = []
            episodes: list[dict] = []
            tick, tick_steps = time.perf_counter(), agent_steps
            num_a = game.num_actions
            while agent_steps < config.steps:
                eps = schedule(agent_steps)
                greedy = np.argmax(np.asarray(q_fn(state.params, jnp.asarray(actors.stacks),
                                                   jnp.zeros((config.num_envs,), jnp.int32))), axis=1)
                explore = actor_rng.random(config.num_envs) < eps
                random_actions = actor_rng.integers(0, num_a, size=config.num_envs)
                actions = np.where(explore, random_actions, greedy).astype(np.int32)
                episodes += actors.step(actions, replay)
                before = agent_steps
                agent_steps += config.num_envs
                due = grad_steps_due(agent_steps, config)
                grad_steps = int(jax.device_get(state.step))
                while grad_steps < due:
                    batch = put_batch(replay.sample(config.batch_size), batch_spec)
                    state, metrics = train_step(state, batch)
                    window.append(metrics)
                    grad_steps += 1
                if _crossed(before, agent_steps, config.log_every) or agent_steps >= config.steps:
                    now = time.perf_counter()
                    record = {"step": agent_steps, "kind": "train", "grad_steps": grad_steps, "epsilon": eps,
                              "agent_steps_per_s": (agent_steps - tick_steps) / max(now - tick, 1e-9),
                              "episodes": len(episodes),
                          "episode_return_mean": float(np.mean([e["return"] for e in episodes])) if episodes else None,
                              "episode_returns": [e["return"] for e in episodes],
                              "episode_lengths": [e["length"] for e in episodes]}
                    if window:
                        fetched = jax.device_get(window)
                        check_finite(fetched, grad_steps - len(fetched) + 1, "gradient step")
                        record.update({k: float(np.mean([m[k] for m in fetched])) for k in method.scalar_metrics})
                    run.log(record)
                    if on_progress:
                        on_progress(record)
                    window, episodes = [], []
                    tick, tick_steps = now, agent_steps
                if _crossed(before, agent_steps, config.eval_every) and agent_steps < config.steps:
                    results, _ = evaluate_now((10_000 + config.seed,), config.eval_episodes)
                    _log_eval(run.log, agent_steps, grad_steps, results, on_progress)
                if _crossed(before, agent_steps, config.checkpoint_every):
                    save(force=True)
            save(force=True)
            run.wait()

            final_path = run_dir / "eval" / "final.json"
            grad_steps = int(jax.device_get(state.step))
            if not final_eval_is_current(final_path, "agent_steps", agent_steps):
                run.metrics.drop(_is_final_eval)  # an earlier attempt died before writing its result file
                results, cfg = evaluate_now(range(config.final_seeds), config.final_episodes)
                _log_eval(run.log, agent_steps, grad_steps, results, on_progress, final=True)
                write_final_eval(final_path, command=COMMAND, run_config=run_config, seed=config.seed, eval_config=cfg,
                                 results=results, run_dir=run_dir, step=grad_steps, arch=net_config.arch,
                                 num_params=sum(counts.values()),
                                 finetune={"command": COMMAND, "init": config.init, "freeze": config.freeze,
                                           "origin": origin, "agent_steps": agent_steps, "grad_steps": grad_steps,
                                           "mode": config.mode, "difficulty": config.difficulty})
            curve = write_curve_csv(run_dir)
            final = json.loads(final_path.read_text())
            g = final["games"][game.name]
            return {"run": str(run_dir), "game": game.name, "mode": config.mode, "difficulty": config.difficulty,
                    "init": config.init, "freeze": config.freeze, "agent_steps": agent_steps, "grad_steps": grad_steps,
                    "resumed_from": resumed_from, "final_mean": g["mean"], "final_std": g["std"],
                    "human_normalized": g["human_normalized"], "optimal_normalized": g.get("optimal_normalized"), "eval_file": str(final_path),
                    "learning_curve": str(curve), "metrics": str(metrics_path)}
    finally:
        actors.close()


def _episode_count(seeds, episodes: int) -> int:
    return max(1, len(tuple(seeds)) * episodes)


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return after // every > before // every


def _log_eval(log: Callable[[dict], dict], agent_steps: int, grad_steps: int, results, on_progress,
              final: bool = False) -> None:
    record = log(eval_metrics_record(agent_steps, grad_steps, results, final))
    if on_progress:
        on_progress(record)


def _is_final_eval(record: dict) -> bool:
    return record.get("kind") == "eval" and bool(record.get("final"))


def _abstract_replay(replay: OnlineReplay, state: dict) -> dict:
    rows = int(state["rows"])
    e = replay.config.num_envs
    return {"frames": jax.ShapeDtypeStruct((e, rows, 84, 84), np.uint8),
            "actions": jax.ShapeDtypeStruct((e, rows), np.int32),
            "rewards": jax.ShapeDtypeStruct((e, rows), np.float32),
            "terminals": jax.ShapeDtypeStruct((e, rows), np.uint8)}


def _to_saved_layout(tree: dict) -> dict:
    """The checkpoint's `state` item: the train state's fields at the top (so load_policy finds `params`),
    plus the replay and the frame stacks."""
    train = tree["train"]
    return {"params": train.params if hasattr(train, "params") else train[0],
            "target_params": train[1], "opt_state": train[2], "step": train[3], "rng": train[4],
            "replay": tree["replay"], "stacks": tree["stacks"]}


def _from_saved_layout(saved: dict) -> dict:
    return {"train": (saved["params"], saved["target_params"], saved["opt_state"], saved["step"], saved["rng"]),
            "replay": saved["replay"], "stacks": saved["stacks"]}

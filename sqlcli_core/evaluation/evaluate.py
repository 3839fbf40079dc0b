"""Play real ALE games with a multi-game Q-policy: many emulators stepped together, one batched call per step.

The protocol is Dopamine's, which produced DQN-Replay (`sqlcli_core.acting.protocol.PROTOCOLS`): sticky actions,
frame skip 4 with max-pool, 84x84 grayscale, 4 stacked frames (at reset the stack is [0, 0, 0, o0], as in
the data), epsilon-greedy with the protocol's epsilon, episodes ended at game over or at the step cap.

Each (game, seed) is a *stream*: one emulator, seeded once, and one epsilon generator, both derived from
(seed, game) only, that plays the episodes 0, 1, ... of that seed one after the other (as Dopamine's
evaluation does). Emulators come from `sqlcli_core.acting.ale_vector.EmulatorPool`: ale_py's C++ vector
environment (the emulators step in parallel threads without the GIL) where it plays the protocol bit for
bit, `AtariGame` otherwise (ALE modes/difficulties); both give the same scores. A finished stream's
emulator is re-seeded for the next stream of its game rather than created again. Scores therefore do not depend on how many emulators run at once or in which order. A resumed
evaluation replays the streams it had not finished from their start and reports only the missing episodes,
which come out exactly as an uninterrupted run would have had them. Parallelism is games x seeds streams.

Per step, the frame stacks of all running emulators (whatever their games) go through ONE
`policy.q_values(obs (N, 4, 84, 84) uint8, game (N,) int32)` call; the batch is padded to a fixed N so a
jitted policy compiles once. A `SequencePolicy` (the Decision Transformer) acts on each stream's context of
past steps instead: `SequenceActing` keeps every stream in a fixed slot of its actor and tells it where
episodes start and what each step gave; its random draws come from keys of the stream's own (seed, game,
episode, step), so its scores do not depend on the number of emulators either.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
from threadpoolctl import threadpool_limits

from sqlcli_core.acting.ale_env import FRAME_SHAPE
from sqlcli_core.acting.backend import Emulator
from sqlcli_core.acting.pool import EmulatorPool
from sqlcli_core.acting.protocol import ActingProtocol
from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation.sequence_acting import GreedyActing, SampledActing, SequenceActing, SequencePolicy
from sqlcli_core.games.catalog import Game, game_index, validate_variant
from sqlcli_core.methods.acting_settings import DTActing

FRAME_STACK = 4


@runtime_checkable
class QPolicy(Protocol):
    """What `evaluate` needs of a policy (the contract of `sqlcli_core.runs.policy.load_policy`)."""

    games: list[Game]
    run_config: dict
    step: int | None

    def q_values(self, obs: np.ndarray, game: np.ndarray) -> np.ndarray:
        """obs (N, 4, 84, 84) uint8, game (N,) int32 -> (N, A_max) float32, -inf outside each game's actions."""
        ...


@dataclasses.dataclass
class RandomPolicy:
    """Uniformly random actions over each game's minimal action set (evaluate it with epsilon = 1).

    Its q_values are 0 on real actions and -inf elsewhere, so it also satisfies the QPolicy contract.
    """

    games: list[Game]
    run_config: dict = dataclasses.field(default_factory=dict)
    step: int | None = None

    def q_values(self, obs: np.ndarray, game: np.ndarray) -> np.ndarray:
        sizes = np.array([g.num_actions for g in self.games])
        a_max = int(sizes.max())
        real = np.arange(a_max)[None, :] < sizes[np.asarray(game)][:, None]
        return np.where(real, 0.0, -np.inf).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to play. `max_steps` is the effective cap; the protocol's own cap is protocol.max_episode_steps."""

    games: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    episodes: int = 2  # per game and seed
    protocol: ActingProtocol = ActingProtocol()
    epsilon: float = 0.001
    max_steps: int = 27_000
    mode: int | None = None
    difficulty: int | None = None
    acting: dict | None = None  # methods.acting_settings.acting_block; None: greedy (the DT: its defaults)

    def play_settings(self) -> dict:
        """The settings that determine the scores (not how fast they are obtained)."""
        settings = {
            "games": list(self.games), "seeds": list(self.seeds), "episodes": self.episodes,
            "protocol": self.protocol.to_dict(), "epsilon": self.epsilon, "max_steps": self.max_steps,
            "mode": self.mode, "difficulty": self.difficulty,
        }
        # What plays the episodes, not how it was chosen; greedy acting is what every earlier version did, so it
        # adds nothing (earlier logs and default names of greedy evaluations stay valid).
        acting = {k: v for k, v in (self.acting or {}).items() if k != "method_default"}
        return settings if acting in ({}, {"mode": "greedy"}) else {**settings, "acting": acting}


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One episode: the `episode`-th of the stream (game, seed)."""

    game: str
    seed: int
    episode: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.game, self.seed, self.episode)


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    game: str
    seed: int
    episode: int
    score: float  # raw (unclipped) return
    length: int  # agent steps
    truncated: bool  # cut by the step cap (length >= max_steps; ALE reports game over at the cap itself)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.game, self.seed, self.episode)


@dataclasses.dataclass
class EvalStats:
    env_steps: int = 0
    seconds: float = 0.0
    policy_seconds: float = 0.0
    setup_seconds: float = 0.0  # creating emulators (loading ROMs)
    episodes: int = 0

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"env_steps": self.env_steps, "seconds": round(self.seconds, 3),
                "policy_seconds": round(self.policy_seconds, 3), "setup_seconds": round(self.setup_seconds, 3),
                "episodes": self.episodes, "env_steps_per_s": round(self.env_steps_per_s, 1)}


def stream_seeds(game: str, seed: int) -> tuple[int, np.random.Generator]:
    """(emulator seed, epsilon generator) of the stream (game, seed), derived from those two only."""
    seq = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(game.encode()),))
    env_seq, action_seq = seq.spawn(2)
    return int(env_seq.generate_state(1)[0] & 0x7FFFFFFF), np.random.default_rng(action_seq)


def work_items(config: EvalConfig) -> list[WorkItem]:
    """All episodes, ordered seed, then game, then episode."""
    return [WorkItem(g, s, e) for s in config.seeds for g in config.games for e in range(config.episodes)]


def head_indices(policy: QPolicy, games: Sequence[str]) -> dict[str, int]:
    """{game: index of its head in policy.games}; a game the policy was not trained on is a UsageError."""
    return {g: game_index(policy.games, g) for g in games}


def batch_width(config: EvalConfig, num_envs: int, overlap: bool = False) -> int:
    """Rows of every policy call of `evaluate`, padded to this fixed size (one jit compile): the streams at
    once, or the larger half of them with `overlap`."""
    width = max(1, min(num_envs, len(config.seeds) * len(config.games)))
    return (width + 1) // 2 if overlap else width


def check_action_sets(policy: QPolicy | SequencePolicy, heads: dict[str, int], width: int | None = None) -> None:
    """Refuse a policy whose head of a game does not cover exactly ALE's minimal action set of that game.

    The probe calls come in batches of `width` rows (padded), the shape of `evaluate`'s calls (`batch_width`),
    so a jitted policy compiles here once for the whole evaluation.
    """
    names = list(heads)
    if isinstance(policy, SequencePolicy):
        sizes = [policy.num_actions[heads[g]] for g in names]
    else:
        width = width or len(names)
        sizes = []
        for first in range(0, len(names), width):
            chunk = names[first:first + width]
            ids = np.array([heads[g] for g in chunk] + [heads[chunk[0]]] * (width - len(chunk)), np.int32)
            q = np.asarray(policy.q_values(np.zeros((width, FRAME_STACK, *FRAME_SHAPE), np.uint8), ids))
            sizes += [int(np.isfinite(row).sum()) for row in q[:len(chunk)]]
    for have, name in zip(sizes, names):
        want = Game(name).num_actions
        if have != want:
            hint = ("runs with full_action_space (18 actions) are not evaluated: their heads misread minimal-set "
                    "actions" if have == 18 else "evaluate with the ale-py version the checkpoint was trained with")
            raise UsageError(f"the policy's head for {name} has {have} actions but ALE's minimal action set "
                             f"has {want}", hint=hint)


def make_chooser(policy: QPolicy | SequencePolicy, config: EvalConfig, width: int):
    """How `evaluate` asks `policy` for actions under `config.acting` (greedy when unset)."""
    acting = config.acting or {}
    if isinstance(policy, SequencePolicy):
        dt = acting.get("dt")
        return SequenceActing(policy, width, None if dt is None else DTActing(**dt))
    return SampledActing(policy) if acting.get("mode") == "sample" else GreedyActing(policy)


def validate_config(config: EvalConfig) -> None:
    """Cheap checks before any emulator starts: counts, epsilon, cap, and ALE's modes/difficulties."""
    if config.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {config.episodes}", hint="pass --episodes 1 or more")
    if not config.seeds:
        raise UsageError("no seeds given", hint="pass --seeds 0,1,2")
    if len(set(config.seeds)) != len(config.seeds):
        raise UsageError(f"repeated seeds {list(config.seeds)}", hint="each seed must appear once")
    if not 0.0 <= config.epsilon <= 1.0:
        raise UsageError(f"epsilon must lie in [0, 1], got {config.epsilon}", hint="the protocol uses 0.001")
    if not 1 <= config.max_steps <= config.protocol.max_episode_steps:
        raise UsageError(f"--max-steps must lie in 1..{config.protocol.max_episode_steps}, got {config.max_steps}",
                         hint=f"the protocol's cap is {config.protocol.max_episode_steps} agent steps")
    for name in config.games:
        validate_variant(Game(name), config.mode, config.difficulty)


@dataclasses.dataclass(frozen=True)
class _StreamPlan:
    game: str
    seed: int
    report: frozenset[int]  # episodes to report (the missing ones)
    last: int  # the stream stops after this episode
    record: bool  # hand episode 0's frames to on_record


def plan_streams(config: EvalConfig, done: set[tuple[str, int, int]], record: tuple[str, int] | None
                 ) -> list[_StreamPlan]:
    """The streams that still have something to play, each up to its last needed episode."""
    plans = []
    for seed in config.seeds:
        for game in config.games:
            missing = frozenset(e for e in range(config.episodes) if (game, seed, e) not in done)
            recording = record == (game, seed)
            needed = set(missing) | ({0} if recording else set())
            if needed:
                plans.append(_StreamPlan(game, seed, missing, max(needed), recording))
    return plans


class _Stream:
    """One running stream: its emulator, frame stack, epsilon generator and the current episode's totals."""

    def __init__(self, plan: _StreamPlan, head: int, env: Emulator, first: np.ndarray, rng: np.random.Generator,
                 record_frames: int):
        self.plan, self.head, self.env, self.rng = plan, head, env, rng
        self.num_actions = self.env.num_actions
        self.record_frames = record_frames if plan.record else 0
        self.stack = np.zeros((FRAME_STACK, *FRAME_SHAPE), np.uint8)
        self.episode = -1
        self.start_episode(first)

    def start_episode(self, first: np.ndarray | None = None) -> None:
        self.episode += 1
        self.stack[:] = 0
        self.stack[-1] = self.env.reset() if first is None else first
        self.score, self.length, self.over = 0.0, 0, False
        recording = self.record_frames and self.episode == 0
        self.frames: list[np.ndarray] | None = [self.stack[-1].copy()] if recording else None
        self.actions: list[int] | None = [] if recording else None  # what was sent: a replay shows the screen

    def finish_step(self) -> None:
        frame, reward, self.over = self.env.recv()
        self.stack[:-1] = self.stack[1:]
        self.stack[-1] = frame
        self.score += reward
        self.length += 1
        if self.frames is not None and len(self.frames) < self.record_frames:
            self.frames.append(frame.copy())


def _finish_steps(streams: Sequence[_Stream]) -> None:
    for stream in streams:
        stream.finish_step()


def evaluate(policy: QPolicy | SequencePolicy, config: EvalConfig, *, num_envs: int = 32, threads: int = 1,
             backend: str = "auto", overlap: bool = False,
             done: Iterable[tuple[str, int, int]] = (), record: tuple[str, int] | None = None,
             record_frames: int = 3000,
             on_episode: Callable[[EpisodeResult], None] | None = None,
             on_record: Callable[[WorkItem, list[np.ndarray], list[int]], None] | None = None,
             ) -> tuple[list[EpisodeResult], EvalStats]:
    """Play every episode of `config` whose (game, seed, episode) key is not in `done`.

    Returns the new results (in completion order) and stats. Up to num_envs streams run at once; each step
    makes one policy call for all of them (none when epsilon is 1), sends every action, then collects every
    emulator's step (ale_py's vector emulators run meanwhile in their own threads). `overlap` (Q-policies
    only) splits the streams into two halves that take turns: one half's policy call runs while the other
    half's emulators step (two calls of half the rows per step). `backend`: 'auto' (the vector emulators
    unless a mode/difficulty is set), 'vector' or 'python' (`AtariGame`; threads > 1 steps those in that many
    threads). Scores do not depend on the backend, on num_envs or on overlap. `record` = (game, seed) hands
    that stream's first episode's 84x84 frames (at most `record_frames`, from its start) and the actions sent
    between them (one fewer) to `on_record`;
    it is played again if already in `done`, and then not reported twice.
    """
    validate_config(config)
    if num_envs < 1 or threads < 1:
        raise UsageError(f"--num-envs and --threads must be >= 1, got {num_envs} and {threads}",
                         hint="pass --num-envs 32 --threads 1")
    heads = head_indices(policy, config.games)
    greedy_needed = config.epsilon < 1.0
    plans = plan_streams(config, set(done), record)
    # A resumed call with fewer streams left batches fewer rows (and compiles once more than the CLI's check).
    width = min(batch_width(config, num_envs), max(1, len(plans)))
    overlap = overlap and not isinstance(policy, SequencePolicy) and width > 1
    rows = (width + 1) // 2 if overlap else width
    if greedy_needed:
        check_action_sets(policy, heads, rows)
    results: list[EpisodeResult] = []
    stats = EvalStats()
    if not plans:
        return results, stats

    emulators = EmulatorPool(backend, protocol=config.protocol, mode=config.mode, difficulty=config.difficulty,
                             max_episode_steps=config.max_steps)
    pool = ThreadPoolExecutor(threads) if threads > 1 and emulators.backend == "python" else None
    choose = make_chooser(policy, config, width)
    pending = iter(plans)
    # the streams that take turns, each with its room and its own policy-call buffers
    groups: list[list[_Stream]] = [[], []] if overlap else [[]]
    rooms = [rows, width - rows] if overlap else [width]
    batches = [(np.zeros((rows, FRAME_STACK, *FRAME_SHAPE), np.uint8), np.zeros((rows,), np.int32)) for _ in groups]

    def refill(streams: list[_Stream], room: int) -> None:
        t = time.perf_counter()
        new = [plan for _, plan in zip(range(room - len(streams)), pending)]
        seeds = [stream_seeds(plan.game, plan.seed) for plan in new]
        started = emulators.take_many([(Game(plan.game), env_seed) for plan, (env_seed, _) in zip(new, seeds)])
        for plan, (_, rng), (env, first) in zip(new, seeds, started):
            streams.append(_Stream(plan, heads[plan.game], env, first, rng, record_frames))
        stats.setup_seconds += time.perf_counter() - t

    def finish_episode(stream: _Stream) -> bool:
        """Report the episode that just ended; start the next one. False when the stream is finished."""
        plan = stream.plan
        result = EpisodeResult(plan.game, plan.seed, stream.episode, float(stream.score), stream.length,
                               truncated=stream.length >= config.max_steps)
        if stream.frames is not None and on_record is not None:
            on_record(WorkItem(*result.key), stream.frames, stream.actions)
        if stream.episode in plan.report:
            results.append(result)
            stats.episodes += 1
            if on_episode is not None:
                on_episode(result)
        if stream.episode >= plan.last:
            emulators.give_back(stream.env)
            return False
        stream.start_episode()
        return True

    def act(streams: list[_Stream], obs_batch: np.ndarray, game_batch: np.ndarray) -> None:
        """Choose every stream's action (one policy call) and send it to its emulator."""
        n = len(streams)
        if greedy_needed:
            for i, stream in enumerate(streams):
                obs_batch[i] = stream.stack
                game_batch[i] = stream.head
            game_batch[n:] = game_batch[0]  # padding rows: any valid game id, results ignored
            t = time.perf_counter()
            greedy = choose(streams, obs_batch, game_batch)
            stats.policy_seconds += time.perf_counter() - t
        else:
            greedy = np.zeros(n, np.int64)
        actions = [int(s.rng.integers(s.num_actions)) if s.rng.random() < config.epsilon else int(g)
                   for s, g in zip(streams, greedy)]
        choose.taken(streams, actions)
        for stream, action in zip(streams, actions):
            stream.env.send(action)
            if stream.actions is not None and len(stream.actions) < stream.record_frames - 1:
                stream.actions.append(action)

    def finish(streams: list[_Stream], room: int) -> None:
        """Collect the streams' steps; end finished episodes and streams, and start waiting streams."""
        n = len(streams)
        if pool is None:
            _finish_steps(streams)
        else:
            chunks = np.array_split(np.arange(n), min(threads, n))
            list(pool.map(lambda idx: _finish_steps([streams[i] for i in idx]), chunks))
        stats.env_steps += n
        if any(s.over or s.length >= config.max_steps for s in streams):
            streams[:] = [s for s in streams if not (s.over or s.length >= config.max_steps) or finish_episode(s)]
            refill(streams, room)

    # The 84x84 resize of the python backend is numpy work; OpenBLAS's own threads only fight the emulators
    # for cores. Parallelism comes from the emulators.
    blas_limit = threadpool_limits(limits=1, user_api="blas")
    start = time.perf_counter()
    try:
        for streams, room, batch in zip(groups, rooms, batches):
            refill(streams, room)
            if streams:
                act(streams, *batch)
        while any(groups):
            for streams, room, batch in zip(groups, rooms, batches):
                if streams:
                    finish(streams, room)
                    if streams:
                        act(streams, *batch)
    finally:
        emulators.close()
        if pool is not None:
            pool.shutdown()
        blas_limit.restore_original_limits()
        stats.seconds = time.perf_counter() - start
    return results, stats

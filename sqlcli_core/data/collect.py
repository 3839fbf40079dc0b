"""Play ALE games with a behaviour policy and log every transition as DQN-Replay checkpoints.

The logging follows Dopamine's `OutOfGraphLoggedReplayBuffer` (the writer of the bucket): one ring buffer of
`capacity` rows; before every episode 3 all-zero rows; row i = (frame o_i, action a_i, clipped reward r_i,
terminal_i); checkpoint N is the whole ring buffer saved when add_count mod capacity reaches capacity - 1,
plus a final partial checkpoint at the end, which (like `log_final_buffer()`) stores the ring position as
its add_count (see `ring_buffer.RingBuffer.save`). The layout is the bucket's: ROOT/{Game}/{run}/replay_logs/.

A run is written into ROOT/{Game}/.{run}.partial/ and renamed to ROOT/{Game}/{run}/ when it is complete, so
the final directory only ever holds a finished run. After each checkpoint the collector also saves what it
needs to continue (the emulator's record, see `collect_actors`; policy RNG; current episode); an interrupted
run resumes from its last checkpoint and produces the same files as an uninterrupted one. The emulators are
ale_py's C++ vector environment or `AtariGame` (`--backend`): the same files either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.atari.env import PROTOCOLS, ActingProtocol
from sqlcli_core.atari.games import Game, game_index, validate_variant
from sqlcli_core.atari.vector import choose_backend
from sqlcli_core.atomic import atomic_output, writable_directory, write_json
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.collect_actors import make_actor, replay_stream
from sqlcli_core.data.collect_policy import BehaviourPolicy, PolicySpec
from sqlcli_core.data.collect_policy import parse_policy as parse_policy  # the CLI's and demo's import
from sqlcli_core.data.ring_buffer import RingBuffer
from sqlcli_core.errors import DataError, ResourceError, UsageError, from_os_error
from sqlcli_core.locks import writer_lock
from sqlcli_core.provenance import provenance
from sqlcli_core.synthetic.emulator import chain_experts

LOG_NAME = "collect_log.json"
RESUME_NAME = "resume.json"
MIN_CAPACITY = rf.STACK_SIZE + 1  # Dopamine asserts capacity >= stack_size + update_horizon
ROW_BYTES = 84 * 84 + 4 + 4 + 1  # observation + action + reward + terminal

ProgressFn = Callable[[int], None]
Step = tuple[np.ndarray, float, bool]  # what an emulator's step gives the play loop: frame, raw reward, over


# --------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one game/run's files (the output root does not)."""

    game: str
    run: int
    transitions: int
    capacity: int = rf.BUCKET_CAPACITY
    protocol: ActingProtocol = PROTOCOLS["dopamine"]
    mode: int | None = None
    difficulty: int | None = None
    seed: int = 0
    policy: PolicySpec = PolicySpec()

    def to_dict(self) -> dict:
        return {
            "game": self.game, "run": self.run, "transitions": self.transitions, "capacity": self.capacity,
            "protocol": self.protocol.to_dict(), "mode": self.mode, "difficulty": self.difficulty,
            "seed": self.seed, "policy": self.policy.to_dict(),
        }


def validate(config: RunConfig) -> None:
    """Raise UsageError for values the collector cannot honour (before any emulator starts)."""
    if config.transitions < 1:
        raise UsageError(f"--transitions {config.transitions} must be at least 1", hint="pass the agent steps per run, e.g. 100000")
    if config.run < 1:
        raise UsageError(f"run {config.run} must be at least 1", hint="runs are numbered from 1, like the bucket")
    if config.capacity < MIN_CAPACITY:
        raise UsageError(
            f"--capacity {config.capacity} is below {MIN_CAPACITY} rows",
            hint=f"use at least {MIN_CAPACITY} (Dopamine's stack size + update horizon); the bucket uses {rf.BUCKET_CAPACITY}",
        )
    game = Game(config.game)
    validate_variant(game, config.mode, config.difficulty)
    if config.policy.kind == "pattern" and max(config.policy.pattern) >= game.num_actions:
        raise UsageError(
            f"policy pattern uses action {max(config.policy.pattern)} but {game.name} has {game.num_actions} actions",
            hint=f"use indices 0..{game.num_actions - 1} of its minimal action set (see `sql games {game.name}`)",
        )
    if config.policy.kind == "checkpoint":
        _checkpoint_head(config.policy.run, game)
    if config.policy.kind == "mixture" and not game.synthetic:
        raise UsageError(f"policy mixture needs a game with known good and poor policies, not {game.name}",
                         hint="use a known-answer game (`sql games diagnostic`), or another --policy")


@functools.lru_cache(maxsize=4)
def load_q_policy(run: str):
    """checkpoint.load_policy, once per process and run (restoring an Orbax checkpoint takes seconds)."""
    from sqlcli_core.training.checkpoint import load_policy

    return load_policy(run)


def _checkpoint_head(run: str, game: Game) -> int:
    """The head of `game` in the checkpoint's network; refuses heads over another action set."""
    q = load_q_policy(run)
    head = game_index(q.games, game.name)
    if q.num_actions[head] != game.num_actions:
        raise UsageError(
            f"the checkpoint's {game.name} head has {q.num_actions[head]} actions, DQN-Replay logs the "
            f"{game.num_actions} of its minimal action set",
            hint="use a run trained on minimal action sets (not full_action_space)",
        )
    return head


def check_memory(capacity: int, jobs: int = 1) -> None:
    """Raise ResourceError when `jobs` ring buffers of `capacity` rows cannot fit in available memory."""
    need = jobs * capacity * ROW_BYTES
    available = _mem_available()
    if available is not None and need > available:
        raise ResourceError(
            f"{jobs} ring buffer(s) of {capacity} rows need {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available",
            hint="lower --capacity or --jobs",
        )


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


def derive_seeds(seed: int, game: str, run: int) -> tuple[int, int]:
    """(emulator seed, policy seed) for one game/run: independent streams from one user seed."""
    state = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(game.encode()), run)).generate_state(2, np.uint32)
    return int(state[0] >> 1), int(state[1])


# ------------------------------------------------------------------------------------------ collector


def run_dir(root: str | os.PathLike, game: str, run: int) -> Path:
    """ROOT/{Game}/{run}: a finished run (its replay_logs/ and collect_log.json)."""
    return rf.replay_dir(root, game, run).parent


def partial_dir(root: str | os.PathLike, game: str, run: int) -> Path:
    """ROOT/{Game}/.{run}.partial: a run being collected."""
    return Path(root) / game / f".{run}.partial"


def _normalised(d: dict) -> dict:
    return json.loads(json.dumps(d))


def finished_log(root: str | os.PathLike, config: RunConfig) -> dict | None:
    """The collect_log of this game/run if it is finished with this config; None if there is none yet.

    Raises UsageError if the directory holds a run collected with another config, or data that
    `sql collect` did not write.
    """
    final = run_dir(root, config.game, config.run)
    log_path = final / LOG_NAME
    if not final.exists():
        return None
    if not log_path.exists():
        raise UsageError(f"{final} exists but has no {LOG_NAME} (not written by sql collect)",
                         hint="choose another --out; collect never overwrites other data")
    try:
        log = json.loads(log_path.read_text())
        recorded = log["provenance"]["config"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{log_path}: unreadable ({exc})", hint="delete that run directory to collect it again") from exc
    want = _normalised(config.to_dict())
    if recorded != want:
        diff = sorted(k for k in set(want) | set(recorded) if want.get(k) != recorded.get(k))
        raise UsageError(f"{final} was collected with other settings ({', '.join(diff)})",
                         hint="use another --out, or delete that directory to collect it again")
    return log


class _Run:
    """The state of one game/run being collected; everything `resume.json` must hold lives here."""

    def __init__(self, config: RunConfig, work: Path, backend: str = "auto"):
        self.config = config
        self.work = work
        self.logs = work / "replay_logs"
        self.game = Game(config.game)
        self.env_seed, self.policy_seed = derive_seeds(config.seed, config.game, config.run)
        self.env = make_actor(backend, self.game, config.protocol, config.mode, config.difficulty, self.env_seed)
        self.policy_info = config.policy.to_dict()
        greedy = None
        if config.policy.kind == "checkpoint":
            greedy = self._checkpoint_greedy(config.policy.run)
        experts = chain_experts(self.game, self.env) if config.policy.kind == "mixture" else None
        self.policy = BehaviourPolicy(config.policy, self.env.num_actions, self.policy_seed, greedy, experts)
        self.buffer = RingBuffer(config.capacity)
        self.stack = np.zeros((rf.STACK_SIZE, *rf.FRAME_SHAPE), dtype=np.uint8)  # the agent's state
        self.env_steps = 0
        self.episodes: list[dict] = []
        self.episode: dict | None = None  # the episode being played
        self.padding_left = 0
        self.checkpoints: list[dict] = []
        self.play_s = 0.0
        self.save_s = 0.0
        self._mark = time.perf_counter()

    def _checkpoint_greedy(self, run: str) -> Callable[[np.ndarray], int]:
        q, head = load_q_policy(run), _checkpoint_head(run, self.game)
        self.policy_info.update(step=q.step, arch=q.network_config.arch, games=[g.name for g in q.games])
        game_ids, n = np.array([head], dtype=np.int32), self.env.num_actions

        def greedy(state: np.ndarray) -> int:
            return int(np.argmax(q.q_values(state[None], game_ids)[0, :n]))

        return greedy

    # -- resumable state -------------------------------------------------------------------------

    def save_resume(self) -> None:
        n = len(self.checkpoints) - 1
        state_path = self.work / f"resume_state.{n}.npz"
        with atomic_output(state_path, "wb") as f:
            np.savez(f, stack=self.stack, **self.env.resume_record(self.episode is not None))
        write_json(self.work / RESUME_NAME, {
            "config": _normalised(self.config.to_dict()), "checkpoint": n, "state_file": state_path.name,
            "emulator": self.env.kind,
            "add_count": self.buffer.add_count, "env_steps": self.env_steps, "episodes": self.episodes,
            "episode": self.episode, "padding_left": self.padding_left, "checkpoints": self.checkpoints,
            "policy": self.policy.state_dict(), "play_s": self.play_s, "save_s": self.save_s,
        })
        for old in self.work.glob("resume_state.*.npz"):
            if old != state_path:
                old.unlink()

    def load_resume(self, r: dict) -> None:
        """Continue from resume.json `r`: the ring buffer from its checkpoint, the emulator by its kind of record
        (the caller made `self.env` a PythonActor for a "state" record)."""
        n, in_episode = r["checkpoint"], r["episode"] is not None
        self.buffer.load(self.logs, n, r["add_count"], hint=f"delete {self.work} to collect this run again")
        with np.load(self.work / r["state_file"], allow_pickle=False) as z:
            record = {k: z[k] for k in z.files}
        self.stack[...] = record.pop("stack")
        if resume_kind(r) == "state":
            frame = self.env.restore(record, in_episode)
        else:
            frame = replay_stream(self.env, record["stream_actions"], self.config.protocol.max_episode_steps,
                                  in_episode)
        if in_episode and frame is not None and not np.array_equal(frame, self.stack[-1]):
            raise DataError(f"{self.work}: replaying the actions does not reach the saved frame",
                            hint=f"delete {self.work} to collect this run again")
        self.policy.load_state_dict(r["policy"])
        self.env_steps, self.episodes, self.episode = r["env_steps"], r["episodes"], r["episode"]
        self.padding_left, self.checkpoints = r["padding_left"], r["checkpoints"]
        self.play_s, self.save_s = r["play_s"], r["save_s"]

    # -- playing ---------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        t0 = time.perf_counter()
        self.play_s += t0 - self._mark  # time spent playing since the last checkpoint (saving excluded)
        n = len(self.checkpoints)
        self.buffer.save(self.logs, n)
        self.checkpoints.append({"checkpoint": n, "add_count": self.buffer.add_count, "cursor": self.buffer.cursor})
        self.save_resume()
        self._mark = time.perf_counter()
        self.save_s += self._mark - t0

    def _add(self, frame: np.ndarray | None, action: int, reward: float, terminal: bool) -> None:
        self.buffer.add(frame, action, reward, terminal)
        if self.buffer.cursor == self.config.capacity - 1:
            self._checkpoint()

    def play(self, progress: ProgressFn | None = None, report_every: int = 500) -> Generator[int, Step, None]:
        """Play until `transitions` agent steps are logged, checkpointing as the ring buffer wraps.

        A coroutine, so that several runs can step their emulators at once: it yields each action and is sent
        back that step's (frame, raw reward, episode over); resets and padding rows happen inside.
        """
        cfg, max_steps = self.config, self.config.protocol.max_episode_steps
        self._mark = time.perf_counter()
        frame = self.stack[-1].copy()
        while self.env_steps < cfg.transitions:
            if self.episode is None:
                frame = self.env.reset()
                self.policy.begin_episode()
                self.stack[...] = 0
                self.stack[-1] = frame
                self.padding_left = rf.PADDING_ROWS
                self.episode = {"start": None, "length": 0, "return": 0.0, "clipped_return": 0.0,
                                "terminal": False, "capped": False}
            if self.padding_left:  # Dopamine writes these zero rows before the episode's first real row
                self.padding_left -= 1
                if self.padding_left == 0:
                    self.episode["start"] = self.buffer.add_count + 1
                self._add(None, 0, 0.0, False)
                continue
            action = self.policy.act(self.stack)
            next_frame, reward, game_over = yield action
            self.env_steps += 1
            ep = self.episode
            ep["length"] += 1
            capped = ep["length"] >= max_steps  # by length: ALE reports game over at the cap itself
            clipped = np.float32(min(max(reward, -1.0), 1.0))
            ep["return"] += reward
            ep["clipped_return"] += float(clipped)
            ended = game_over or capped
            if ended:
                ep["terminal"], ep["capped"] = True, capped
                self.episodes.append(ep)
                self.episode = None
            elif self.env_steps == cfg.transitions:  # run ends mid-episode: no terminal row (documented)
                self.episodes.append(ep)
            row = (frame, action, clipped, ended)
            frame = next_frame  # the stack moves on before _add, which may save it for a resume
            self.stack[:-1] = self.stack[1:]
            self.stack[-1] = frame
            self._add(*row)
            if progress is not None and self.env_steps % report_every == 0:
                progress(self.env_steps)
        if not self.checkpoints or self.checkpoints[-1]["add_count"] != self.buffer.add_count:
            self._checkpoint()  # the final partial checkpoint
        self.play_s += time.perf_counter() - self._mark
        if progress is not None:
            progress(self.env_steps)

    def log(self, wall_s: float) -> dict:
        cfg = self.config
        return {
            "provenance": provenance("collect", _normalised(cfg.to_dict()), cfg.seed),
            "game": cfg.game, "run": cfg.run, "seed": cfg.seed, "env_seed": self.env_seed,
            "policy_seed": self.policy_seed, "policy": self.policy_info, "protocol": cfg.protocol.to_dict(),
            "mode": cfg.mode, "difficulty": cfg.difficulty, "capacity": cfg.capacity,
            "transitions": self.env_steps, "add_count": self.buffer.add_count,
            "padding_rows_per_episode": rf.PADDING_ROWS, "checkpoints": self.checkpoints,
            "num_episodes": len(self.episodes), "episodes": self.episodes,
            "env_steps_per_s": self.env_steps / self.play_s if self.play_s > 0 else None,
            "play_s": self.play_s, "save_s": self.save_s, "wall_s": wall_s,
        }


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while playing.

    The per-step 84x84 resize is two small matrix products; a multi-threaded BLAS turns them into thread
    hand-offs that cost 10-40x more than the work on a busy machine. Collection parallelises over
    processes (`--jobs`) instead. A no-op where threadpoolctl is not installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is an optional dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def collect_run(config: RunConfig, root: str | os.PathLike, progress: ProgressFn | None = None,
                progress_every: int = 500, backend: str = "auto") -> dict:
    """Collect one game/run into ROOT/{Game}/{run}/ (resuming or skipping as its files allow).

    Returns a summary: game, run, status ("collected", "resumed" or "skipped"), add_count, transitions,
    num_episodes, checkpoints, env_steps_per_s, path. `progress(env_steps)` is called every
    `progress_every` agent steps; an exception it raises (e.g. KeyboardInterrupt) leaves the run resumable.
    `backend`: the emulators ('auto', 'vector' or 'python', as in `sqlcli_core.atari.vector`); the files
    do not depend on it.
    """
    report = (lambda game, run, steps: progress(steps)) if progress is not None else None
    return collect_together([config], root, width=1, backend=backend, progress=report,
                            progress_every=progress_every)[0]


@dataclasses.dataclass
class _Playing:
    """A game/run being played by `collect_together`: its state, its play coroutine and its next action."""

    index: int
    state: _Run
    steps: Generator[int, Step, None]
    action: int | None
    resumed: bool
    lock: contextlib.ExitStack
    t0: float


def collect_together(configs: Sequence[RunConfig], root: str | os.PathLike, *, width: int = 1,
                     backend: str = "auto", progress: Callable[[str, int, int], None] | None = None,
                     progress_every: int = 500) -> list[dict]:
    """Collect game/runs in this process, `width` at a time; summaries in the order of `configs`.

    Each playing run always has one step in flight: the loop takes the runs' steps in turn, logs each and sends
    that run's next action at once, so vector emulators step in their own threads (without the GIL) while
    Python logs the other runs' steps. Runs never share state: each one's files are what it writes alone.
    """
    summaries: list[dict] = [{}] * len(configs)
    waiting = list(enumerate(configs))
    playing: list[_Playing] = []
    try:
        with single_threaded_blas():
            while waiting or playing:
                while waiting and len(playing) < width:
                    index, config = waiting.pop(0)
                    started = _start(index, config, root, backend, progress, progress_every)
                    if isinstance(started, dict):
                        summaries[index] = started
                    elif started.action is None:  # resumed after its final checkpoint: nothing left to play
                        summaries[index] = _finish(started, root)
                    else:
                        started.state.env.send(started.action)
                        playing.append(started)
                for run in list(playing):
                    try:
                        with _writing(root, run.state.config):
                            run.action = run.steps.send(run.state.env.recv())
                    except StopIteration:
                        playing.remove(run)
                        summaries[run.index] = _finish(run, root)
                    else:
                        run.state.env.send(run.action)
    finally:
        for run in playing:
            run.state.env.close()
            run.lock.close()
    return summaries


@contextlib.contextmanager
def _writing(root: str | os.PathLike, config: RunConfig):
    """A full or read-only disk while a run is written: one line naming it; the partial run stays resumable."""
    try:
        yield
    except OSError as exc:
        raise from_os_error(exc, f"writing {partial_dir(root, config.game, config.run)}") from None


def _summary(config: RunConfig, root: str | os.PathLike, status: str, log: dict) -> dict:
    return {
        "game": config.game, "run": config.run, "status": status, "add_count": log["add_count"],
        "transitions": log["transitions"], "num_episodes": log["num_episodes"],
        "checkpoints": len(log["checkpoints"]), "env_steps_per_s": log["env_steps_per_s"],
        "path": str(run_dir(root, config.game, config.run)),
    }


def _start(index: int, config: RunConfig, root: str | os.PathLike, backend: str,
           progress: Callable[[str, int, int], None] | None, progress_every: int) -> _Playing | dict:
    """Lock a game/run and set it playing (resumed where its files allow), or its summary if it is finished."""
    validate(config)
    lock = contextlib.ExitStack()
    try:
        log = finished_log(root, config)
        if log is None:
            lock.enter_context(_run_lock(root, config.game, config.run))
            log = finished_log(root, config)  # another process may have finished it meanwhile
        if log is not None:
            lock.close()
            if progress is not None:
                progress(config.game, config.run, log["transitions"])
            return _summary(config, root, "skipped", log)
        t0 = time.perf_counter()
        with _writing(root, config):
            work = partial_dir(root, config.game, config.run)
            resume = _read_resume(work, config)
            if resume is None and work.exists():
                shutil.rmtree(work)  # our own scratch directory, from other settings or from before any checkpoint
            work.mkdir(parents=True, exist_ok=True)
            # ALE's saved state can only be restored into AtariGame: such a run finishes on the python backend
            state = _Run(config, work, "python" if resume and resume_kind(resume) == "state" else backend)
            try:
                if resume is not None:
                    state.load_resume(resume)
                report = None if progress is None else (lambda steps: progress(config.game, config.run, steps))
                steps = state.play(report, progress_every)
                action = next(steps, None)
            except BaseException:
                state.env.close()
                raise
    except BaseException:
        lock.close()
        raise
    return _Playing(index, state, steps, action, resume is not None, lock, t0)


def _finish(run: _Playing, root: str | os.PathLike) -> dict:
    """Write a played run's log and publish it under its final name; release its lock."""
    state = run.state
    try:
        state.env.close()
        log = state.log(time.perf_counter() - run.t0)
        with _writing(root, state.config):
            write_json(state.work / LOG_NAME, log)
            (state.work / RESUME_NAME).unlink()
            for f in state.work.glob("resume_state.*.npz"):
                f.unlink()
            os.replace(state.work, run_dir(root, state.config.game, state.config.run))
    finally:
        run.lock.close()
    return _summary(state.config, root, "resumed" if run.resumed else "collected", log)


def resume_kind(resume: dict) -> str:
    """How resume.json's emulator record continues the run: "state" (ALE's saved state; files written before
    the vector backend have no key) or "actions" (every action since the stream's start)."""
    return resume.get("emulator", "state")


def _run_lock(root: str | os.PathLike, game: str, run: int) -> contextlib.AbstractContextManager:
    """One collector per game/run: ROOT/{Game}/.{run}.lock (`sqlcli_core.locks`: a flock the kernel releases
    when its holder dies; the file stays, deleting it would let two processes hold the lock)."""
    return writer_lock(Path(root) / game / f".{run}.lock", what=f"{game}/{run} under {root}",
                       hint="wait for that collect to finish, or use another --out")


def _read_resume(work: Path, config: RunConfig) -> dict | None:
    path = work / RESUME_NAME
    with contextlib.suppress(OSError, ValueError):
        r = json.loads(path.read_text())
        if r.get("config") == _normalised(config.to_dict()):
            return r
    return None


# ----------------------------------------------------------------------------------- many runs at once


def _worker(config: RunConfig, root: str, queue: Any, backend: str) -> dict:
    def progress(steps: int) -> None:
        queue.put((config.game, config.run, steps))

    return collect_run(config, root, progress, backend=backend)


def collect_all(configs: Sequence[RunConfig], root: str | os.PathLike, jobs: int = 1,
                progress: Callable[[str, int, int], None] | None = None, backend: str = "auto") -> list[dict]:
    """Collect every game/run, `jobs` at a time; progress(game, run, env_steps) as they play.

    On the vector backend the `jobs` runs play together in this process (`collect_together`: one C++ thread
    per emulator); on the python backend (ALE modes or difficulties, or asked for) in `jobs` processes.
    Summaries come back in the order of `configs`.
    """
    for c in configs:
        validate(c)
    together = all(choose_backend(backend, c.mode, c.difficulty) == "vector" for c in configs)
    if configs:
        check_memory(max(c.capacity for c in configs), min(jobs, len(configs)))
        writable_directory(root, "--out")  # a file, /proc, read-only, a too long name: one line, exit 2
    if together or jobs <= 1 or len(configs) <= 1:
        return collect_together(configs, root, width=jobs if together else 1, backend=backend, progress=progress)
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no forked emulator or BLAS thread state
    with ctx.Manager() as manager:
        q = manager.Queue()
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, c, str(root), q, backend) for c in configs]
            pending = set(futures)
            while pending:
                _, pending = cf.wait(pending, timeout=0.2)
                while True:
                    try:
                        game, run, steps = q.get_nowait()
                    except queue_mod.Empty:
                        break
                    if progress:
                        progress(game, run, steps)
            return [f.result() for f in futures]

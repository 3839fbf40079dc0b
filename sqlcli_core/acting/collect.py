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
import json
import os
import shutil
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.acting.actors import make_actor, replay_stream
from sqlcli_core.acting.ale_vector import choose_backend
from sqlcli_core.acting.collect_runs import (
    LOG_NAME,
    RESUME_NAME,
    PolicyLoader,
    RunConfig,
    check_memory,
    checkpoint_head,
    derive_seeds,
    finished_log,
    load_q_policy,
    normalised,
    partial_dir,
    run_dir,
    validate,
)
from sqlcli_core.acting.policies import BehaviourPolicy
from sqlcli_core.acting.policies import parse_policy as parse_policy
from sqlcli_core.atomic import atomic_output, writable_directory, write_json
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.ring_buffer import RingBuffer
from sqlcli_core.errors import DataError, from_os_error
from sqlcli_core.games.catalog import Game
from sqlcli_core.locks import writer_lock
from sqlcli_core.provenance import provenance
from sqlcli_core.synthetic.emulator import chain_experts

ProgressFn = Callable[[int], None]
Step = tuple[np.ndarray, float, bool]  # what an emulator's step gives the play loop: frame, raw reward, over


# --------------------------------------------------------------------------------------------- config


















# ------------------------------------------------------------------------------------------ collector










class _Run:
    """The state of one game/run being collected; everything `resume.json` must hold lives here."""

    def __init__(self, config: RunConfig, work: Path, backend: str = "auto", load_policy: PolicyLoader | None = None):
        self.config = config
        self.work = work
        self.logs = work / "replay_logs"
        self.game = Game(config.game)
        self.env_seed, self.policy_seed = derive_seeds(config.seed, config.game, config.run)
        self.env = make_actor(backend, self.game, config.protocol, config.mode, config.difficulty, self.env_seed)
        self.policy_info = config.policy.to_dict()
        greedy = None
        if config.policy.kind == "checkpoint":
            greedy = self._checkpoint_greedy(load_policy, config.policy.run)
        experts = chain_experts(self.game, self.env.env) if config.policy.kind == "mixture" else None
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

    def _checkpoint_greedy(self, load_policy: PolicyLoader | None, run: str) -> Callable[[np.ndarray], int]:
        q, head = load_q_policy(load_policy, run), checkpoint_head(load_policy, run, self.game)
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
            "config": normalised(self.config.to_dict()), "checkpoint": n, "state_file": state_path.name,
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
            "provenance": provenance("collect", normalised(cfg.to_dict()), cfg.seed),
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
                progress_every: int = 500, backend: str = "auto", load_policy: PolicyLoader | None = None) -> dict:
    """Collect one game/run into ROOT/{Game}/{run}/ (resuming or skipping as its files allow).

    Returns a summary: game, run, status ("collected", "resumed" or "skipped"), add_count, transitions,
    num_episodes, checkpoints, env_steps_per_s, path. `progress(env_steps)` is called every
    `progress_every` agent steps; an exception it raises (e.g. KeyboardInterrupt) leaves the run resumable.
    `backend`: the emulators ('auto', 'vector' or 'python', as in `sqlcli_core.acting.ale_vector`); the files
    do not depend on it. `load_policy`: what loads a `checkpoint:RUN` behaviour policy (see `PolicyLoader`).
    """
    report = (lambda game, run, steps: progress(steps)) if progress is not None else None
    return collect_together([config], root, width=1, backend=backend, progress=report,
                            progress_every=progress_every, load_policy=load_policy)[0]


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
                     progress_every: int = 500, load_policy: PolicyLoader | None = None) -> list[dict]:
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
                    started = _start(index, config, root, backend, progress, progress_every, load_policy)
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
           progress: Callable[[str, int, int], None] | None, progress_every: int,
           load_policy: PolicyLoader | None = None) -> _Playing | dict:
    """Lock a game/run and set it playing (resumed where its files allow), or its summary if it is finished."""
    validate(config, load_policy)
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
            state = _Run(config, work, "python" if resume and resume_kind(resume) == "state" else backend, load_policy)
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
        if r.get("config") == normalised(config.to_dict()):
            return r
    return None


# ----------------------------------------------------------------------------------- many runs at once


def _worker(config: RunConfig, root: str, queue: Any, backend: str, load_policy: PolicyLoader | None) -> dict:
    def progress(steps: int) -> None:
        queue.put((config.game, config.run, steps))

    return collect_run(config, root, progress, backend=backend, load_policy=load_policy)


def collect_all(configs: Sequence[RunConfig], root: str | os.PathLike, jobs: int = 1,
                progress: Callable[[str, int, int], None] | None = None, backend: str = "auto",
                load_policy: PolicyLoader | None = None) -> list[dict]:
    """Collect every game/run, `jobs` at a time; progress(game, run, env_steps) as they play.

    On the vector backend the `jobs` runs play together in this process (`collect_together`: one C++ thread
    per emulator); on the python backend (ALE modes or difficulties, or asked for) in `jobs` processes.
    Summaries come back in the order of `configs`.
    """
    for c in configs:
        validate(c, load_policy)
    together = all(choose_backend(backend, c.mode, c.difficulty) == "vector" for c in configs)
    if configs:
        check_memory(max(c.capacity for c in configs), min(jobs, len(configs)))
        writable_directory(root, "--out")  # a file, /proc, read-only, a too long name: one line, exit 2
    if together or jobs <= 1 or len(configs) <= 1:
        return collect_together(configs, root, width=jobs if together else 1, backend=backend, progress=progress,
                                load_policy=load_policy)
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no forked emulator or BLAS thread state
    with ctx.Manager() as manager:
        q = manager.Queue()
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, c, str(root), q, backend, load_policy) for c in configs]
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

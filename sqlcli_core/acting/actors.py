"""The emulators `sql collect` plays with, and how each lets an interrupted run continue exactly.

Both give the same frames, rewards and episode ends for the same seed and actions (tests/test_atari_env.py):

- `PythonActor`: `AtariGame`, stepped from Python. It resumes from ALE's saved state as of the current
  episode's reset plus the actions of that episode (resume kind "state"): at most one episode is played again.
- `StreamActor`: any other emulator of a game's backend (`backends.backend_for`): one in ale_py's C++ vector
  environment (frame skip, max-pool and resize in a worker thread without the GIL, so several runs step at
  once), or a synthetic game's. It logs every action since the stream's start (one byte each) and resumes by
  playing them all again from the seed (resume kind "actions"): the emulator is a function of its seed and
  its actions, and needs no saved states (the vector environment has none).

Every actor: `reset()` (start the next episode; the first call gives the stream's first episode), `send(a)`
then `recv()` -> (frame, raw reward, game over or end of a capped episode), `resume_record(in_episode)`
(the arrays a resume needs), `close()`.
"""

from __future__ import annotations

import numpy as np

from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.acting.ale_vector import ALE, choose_backend
from sqlcli_core.acting.backend import Emulator
from sqlcli_core.acting.backends import backend_for
from sqlcli_core.acting.protocol import ActingProtocol
from sqlcli_core.games.catalog import Game


class PythonActor:
    """`AtariGame`; remembers the emulator state at each episode's reset and the episode's actions since."""

    kind = "state"

    def __init__(self, game: Game, protocol: ActingProtocol, mode: int | None, difficulty: int | None, seed: int):
        self.env = AtariGame(game, protocol=protocol, mode=mode, difficulty=difficulty, seed=seed)
        self.num_actions = self.env.num_actions
        # ALE does not save the last applied action (sticky actions repeat it) but reset() sets it to NOOP,
        # so the state right after a reset plus the episode's actions reproduces the emulator exactly.
        self.episode_state = b""
        self.episode_actions: list[int] = []
        self._action = 0

    def reset(self) -> np.ndarray:
        frame = self.env.reset()
        self.episode_state, self.episode_actions = self.env.save_state(), []
        return frame

    def send(self, action: int) -> None:
        self._action = int(action)

    def recv(self) -> tuple[np.ndarray, float, bool]:
        self.episode_actions.append(self._action)
        return self.env.step(self._action)

    def resume_record(self, in_episode: bool) -> dict[str, np.ndarray]:
        if in_episode:
            emulator, actions = self.episode_state, self.episode_actions
        else:  # between episodes: the next call is reset(), which sets the last action
            emulator, actions = self.env.save_state(), []
        return {"emulator": np.frombuffer(emulator, dtype=np.uint8), "actions": np.asarray(actions, dtype=np.int32)}

    def restore(self, record: dict[str, np.ndarray], in_episode: bool) -> np.ndarray | None:
        """Continue from a "state" record; returns the frame the replayed episode reached (None if no step)."""
        emulator = record["emulator"].tobytes()
        self.env.restore_state(emulator)
        frame = None
        if in_episode:
            self.episode_state, self.episode_actions = emulator, []
            for action in record["actions"]:
                self.send(int(action))
                frame, _, _ = self.recv()
        return frame

    def close(self) -> None:
        self.env.close()


class StreamActor:
    """Any game backend's emulator (`acting.backend.Emulator`: ALE's vector engine, a synthetic game...); logs
    every action of the stream and resumes by playing them again from the seed (resume kind "actions"), which
    needs nothing of the emulator but that it is a function of its seed and its actions."""

    kind = "actions"

    def __init__(self, emulator: Emulator, seed: int):
        self.env = emulator
        self.num_actions = emulator.num_actions
        self._first: np.ndarray | None = emulator.start(seed)  # the stream's first episode, already reset
        self.stream_actions = bytearray()

    def reset(self) -> np.ndarray:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self.env.reset()

    def send(self, action: int) -> None:
        self.stream_actions.append(action)
        self.env.send(action)

    def recv(self) -> tuple[np.ndarray, float, bool]:
        return self.env.recv()

    def resume_record(self, in_episode: bool) -> dict[str, np.ndarray]:
        return {"stream_actions": np.frombuffer(bytes(self.stream_actions), dtype=np.uint8)}

    def close(self) -> None:
        self.env.close()


Actor = PythonActor | StreamActor


def make_actor(engine: str, game: Game, protocol: ActingProtocol, mode: int | None, difficulty: int | None,
               seed: int) -> Actor:
    """A fresh actor for a stream with this emulator seed, its emulator from the game's backend
    (`backends.backend_for`). engine 'auto', 'vector' or 'python' (`ale_vector.choose_backend`): ALE's python
    engine resumes from ALE's saved states (`PythonActor`), every other emulator by its action log."""
    backend = backend_for(game.name)
    engine = choose_backend(engine, mode, difficulty)
    if backend is ALE and engine == "python":
        return PythonActor(game, protocol, mode, difficulty, seed)
    return StreamActor(backend.make_emulator(game, protocol=protocol, engine=engine, mode=mode, difficulty=difficulty,
                                             seed=seed), seed)


def replay_stream(actor: Actor, actions: np.ndarray, max_steps: int, in_episode: bool) -> np.ndarray | None:
    """Play a fresh actor through the stream's logged actions (an "actions" record), resetting where episodes
    ended (game over or `max_steps`); `in_episode`: the current episode had already been reset. Returns the
    last frame reached (None if nothing was played)."""
    frame, length, ended = None, 0, True
    for action in actions:
        if ended:
            frame, length = actor.reset(), 0
        actor.send(int(action))
        frame, _, over = actor.recv()
        length += 1
        ended = over or length >= max_steps
    if in_episode and ended:
        frame = actor.reset()
    return frame

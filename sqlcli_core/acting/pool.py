"""`EmulatorPool`: emulators of any games, from each game's backend (`backends.backend_for`), re-used
across streams (evaluation plays many short streams per game)."""

from __future__ import annotations

import os

import numpy as np

from sqlcli_core.acting.ale_vector import choose_backend
from sqlcli_core.acting.backend import Emulator
from sqlcli_core.acting.backends import backend_for
from sqlcli_core.acting.protocol import ActingProtocol
from sqlcli_core.games.catalog import Game


class EmulatorPool:
    """Emulators of any games, re-used across streams: a new stream re-seeds an idle emulator of its game
    (one ROM load) instead of creating one."""

    def __init__(self, backend: str, *, protocol: ActingProtocol, mode: int | None = None,
                 difficulty: int | None = None, max_episode_steps: int | None = None):
        self.backend = choose_backend(backend, mode, difficulty)
        self.protocol = protocol
        self.mode, self.difficulty = mode, difficulty
        self.max_episode_steps = max_episode_steps
        self._idle: dict[str, list[Emulator]] = {}
        self._all: list[Emulator] = []

    def take(self, game: Game, seed: int) -> tuple[Emulator, np.ndarray]:
        """An emulator of `game` started with `seed`, and its first frame."""
        return self.take_many([(game, seed)])[0]

    def take_many(self, wanted: list[tuple[Game, int]]) -> list[tuple[Emulator, np.ndarray]]:
        """`take` for several (game, seed) at once.

        A vector emulator costs two ROM loads: its constructor's (holding the GIL; ale_py seeds it from the
        clock) and its seeded start's (in C++, without the GIL). The starts run in worker threads as soon as
        each emulator exists, so they overlap the next constructors (and each other).
        """
        if self.backend != "vector" or len(wanted) < 2:
            return [(e, e.start(seed)) for e, (_, seed) in zip(self._emulators(wanted), wanted)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(wanted), os.cpu_count() or 1)) as threads:
            starts = [(e, threads.submit(e.start, seed)) for e, (_, seed) in zip(self._emulators(wanted), wanted)]
            return [(e, start.result()) for e, start in starts]

    def _emulators(self, wanted: list[tuple[Game, int]]):
        """One emulator per (game, seed), an idle one of the game where there is one, yielded as it exists."""
        for game, seed in wanted:
            idle = self._idle.get(game.name)
            if idle:
                yield idle.pop()
            else:
                self._all.append(self._create(game, seed))
                yield self._all[-1]

    def give_back(self, emulator: Emulator) -> None:
        self._idle.setdefault(emulator.game.name, []).append(emulator)

    def _create(self, game: Game, seed: int) -> Emulator:
        return backend_for(game.name).make_emulator(
            game, protocol=self.protocol, engine=self.backend, mode=self.mode, difficulty=self.difficulty,
            max_episode_steps=self.max_episode_steps, seed=seed)

    def close(self) -> None:
        for emulator in self._all:
            emulator.close()
        self._all.clear()
        self._idle.clear()

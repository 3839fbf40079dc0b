"""The game-backend protocol: what acting needs of any game it plays (ALE's Atari games today; synthetic games
with known answers plug in the same way).

- An `Emulator` is one preprocessed game instance, stepped in two halves (`send` then `recv`) so that many
  can step at once: `start(seed)` begins a new stream (re-seeded, first episode) and returns its first 84x84
  uint8 frame; `reset()` starts the stream's next episode; `recv()` returns (frame, raw reward, episode
  over). Actions are indices into the game's minimal action set (`Game.num_actions` of them).
- A `GameBackend` makes emulators for the games it `knows` (catalog names). `backends.backend_for(name)`
  picks the backend of a game; `register_backend` adds one. Every player gets its emulators through it:
  evaluation (`pool.EmulatorPool`), collect (`actors.make_actor`) and online fine-tuning
  (`training.finetune_online.Actors`, engine "python", which also calls `save_state()` and
  `restore_state(bytes)` for its checkpoints). The ALE backend is `ale_vector.ALE`, the known-answer games'
  `synthetic.emulator.SYNTHETIC`.

A new backend implements both protocols (plain classes; nothing to inherit) and registers itself; its games
need catalog entries (`games/catalog.py`) so that names resolve and action-set sizes are known without
starting an emulator.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from sqlcli_core.acting.protocol import ActingProtocol
from sqlcli_core.games.catalog import Game


class Emulator(Protocol):
    """One preprocessed emulator, stepped in two halves so that many can run at once."""

    game: Game
    num_actions: int

    def start(self, seed: int) -> np.ndarray:
        """Re-seed (reloading the ROM) and start the first episode; returns its first 84x84 frame."""
        ...

    def reset(self) -> np.ndarray:
        """Start the next episode of the same stream; returns its first frame."""
        ...

    def send(self, action: int) -> None:
        """Start one agent step with this action (an index into the minimal action set)."""
        ...

    def recv(self) -> tuple[np.ndarray, float, bool]:
        """Finish the step: (frame, raw reward, episode over at game over or at the step cap)."""
        ...

    def close(self) -> None: ...


class GameBackend(Protocol):
    """A family of games acting can play: makes one `Emulator` per call."""

    name: str  # e.g. "ale"

    def knows(self, game: str) -> bool:
        """Whether this backend plays `game` (a catalog name such as "Breakout")."""
        ...

    def make_emulator(self, game: Game, *, protocol: ActingProtocol, engine: str = "python", mode: int | None = None,
                      difficulty: int | None = None, max_episode_steps: int | None = None, seed: int = 0) -> Emulator:
        """A new emulator of `game` driven by `protocol` (sticky actions, frame skip, episode cap), its ROM or
        equivalent loaded with `seed`. engine: the backend's own implementation choice (ALE: "vector" or
        "python"); mode/difficulty: a game variant (a backend without variants refuses them)."""
        ...

"""placeholder"""

from __future__ import annotations

from typing import Protocol

import numpy as np

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

"""The table of game backends: which `GameBackend` plays a game. ALE plays the Atari catalog; another backend
(e.g. synthetic games with known answers) is one `register_backend(...)` call."""

from __future__ import annotations

from sqlcli_core.acting.ale_vector import ALE
from sqlcli_core.acting.backend import GameBackend
from sqlcli_core.errors import UsageError
from sqlcli_core.synthetic.emulator import SYNTHETIC

_BACKENDS: list[GameBackend] = [ALE, SYNTHETIC]  # SYNTHETIC: the known-answer games (sqlcli_core.synthetic)


def register_backend(backend: GameBackend) -> GameBackend:
    """Add a backend; games it knows are played by it (ALE's names win a tie: it was first). Returns it."""
    if any(b.name == backend.name for b in _BACKENDS):
        raise ValueError(f"a game backend named {backend.name!r} is registered already")
    _BACKENDS.append(backend)
    return backend


def backend_for(game: str) -> GameBackend:
    """The backend that plays `game` (a catalog name), or a UsageError naming the backends."""
    for backend in _BACKENDS:
        if backend.knows(game):
            return backend
    raise UsageError(f"no game backend plays '{game}'",
                     hint="known backends: " + ", ".join(b.name for b in _BACKENDS))

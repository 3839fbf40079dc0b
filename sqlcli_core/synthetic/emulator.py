"""A chain game behind every emulator interface the toolkit plays through.

`ChainEmulator` is the emulator of the `synthetic` game backend (`acting.backend.Emulator`: `start(seed)`,
`reset()`, `send(a)`, `recv()`, `close()`), which eval's pool, collect's actors (`acting.actors.StreamActor`:
the game is a function of its seed and its actions, so a resume replays the logged actions) and online
fine-tuning (with `save_state()` / `restore_state(bytes)` for its checkpoints) get from `acting.backends`.

The seed drives only the distractor pixels of games that draw them; moves are deterministic.
"""

from __future__ import annotations

import json

import numpy as np

from sqlcli_core.synthetic.chain import ChainSpec, chain_spec


class ChainEmulator:
    def __init__(self, game, spec: ChainSpec, *, seed: int = 0, max_episode_steps: int | None = None):
        self.game = game
        self.spec = spec
        self.num_actions = spec.num_actions
        self.max_episode_steps = min(spec.cap, max_episode_steps or spec.cap)
        self._rng = np.random.default_rng(seed)
        self.position = 0
        self.length = 0
        self._action = 0

    # -- episodes -----------------------------------------------------------------------------------

    def start(self, seed: int) -> np.ndarray:
        self._rng = np.random.default_rng(seed)
        return self.reset()

    def reset(self) -> np.ndarray:
        self.position, self.length = 0, 0
        return self.spec.render(self.position, self._rng)

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        """One move: (frame, reward, episode over at the game's end or at its cap)."""
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"action {action} outside 0..{self.num_actions - 1} of {self.spec.name}")
        self.position, reward, over = self.spec.step(self.position, int(action))
        self.length += 1
        return self.spec.render(self.position, self._rng), reward, over or self.length >= self.max_episode_steps

    def send(self, action: int) -> None:
        self._action = int(action)

    def recv(self) -> tuple[np.ndarray, float, bool]:
        return self.step(self._action)

    # -- resuming -----------------------------------------------------------------------------------

    def save_state(self) -> bytes:
        return json.dumps({"position": self.position, "length": self.length,
                           "rng": self._rng.bit_generator.state}).encode()

    def restore_state(self, state: bytes) -> None:
        d = json.loads(state.decode())
        self.position, self.length = d["position"], d["length"]
        self._rng.bit_generator.state = d["rng"]

    def close(self) -> None:
        pass


class ChainExperts:
    """The chain's good and poor policies acting on the emulator's current position (`mixture:P`).

    A plan is the position where the episode starts going wrong (-1 for a good episode)."""

    def __init__(self, spec: ChainSpec, emulator: ChainEmulator):
        self.spec = spec
        self.emulator = emulator

    def begin(self, rng: np.random.Generator, good: bool) -> int:
        return -1 if good else self.spec.poor_turn(rng)

    def act(self, plan: int) -> int:
        good = plan < 0
        return self.spec.expert_action(self.emulator.position, good, plan)


def chain_experts(game, emulator) -> ChainExperts:
    """The experts of a synthetic game's emulator (collect's `mixture` policy)."""
    if not isinstance(emulator, ChainEmulator):
        raise TypeError(f"{game.name} has no good and poor policies")
    return ChainExperts(emulator.spec, emulator)


def synthetic_emulator(game, seed: int = 0, max_episode_steps: int | None = None) -> ChainEmulator | None:
    """The emulator of a synthetic known-answer game, or None for any other game (an Atari game)."""
    spec = chain_spec(game.name)
    return None if spec is None else ChainEmulator(game, spec, seed=seed, max_episode_steps=max_episode_steps)


class SyntheticBackend:
    """The known-answer games as a game backend (`acting.backend.GameBackend`): one `ChainEmulator` per call.

    They have no modes or difficulties and ignore the protocol's sticky actions and frame skip (their Q*
    assumes deterministic moves); the protocol's episode cap applies on top of the game's own."""

    name = "synthetic"

    def knows(self, game: str) -> bool:
        return chain_spec(game) is not None

    def make_emulator(self, game, *, protocol=None, engine: str = "python", mode: int | None = None,
                      difficulty: int | None = None, max_episode_steps: int | None = None,
                      seed: int = 0) -> ChainEmulator:
        if mode is not None or difficulty is not None:
            raise ValueError(f"{game.name} has no modes or difficulties")
        return synthetic_emulator(game, seed, max_episode_steps)


SYNTHETIC = SyntheticBackend()

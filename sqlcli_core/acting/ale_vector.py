"""Emulators that step in parallel: ale_py's C++ vector environment, and the same interface over `AtariGame`.

`ale_py.ALEVectorInterface` runs the frame skip, max-pool, grayscale and INTER_AREA resize in C++ worker
threads that do not hold the GIL. Set up as below it is Dopamine's preprocessing bit for bit, the same as
`AtariGame` (tests/test_atari_env.py replays both side by side):

- frame skip 4, max of the last two frames, 84x84 grayscale, one frame per observation (we stack);
- no noop starts (`noop_max=0`), no FIRE at reset, no life-loss terminals, raw (unclipped) rewards;
- sticky actions inside ALE with `random_seed` = the emulator seed, set before the ROM is loaded, as
  `AtariGame` does (the same RNG stream);
- the episode ends at game over or after `frame_skip * max_episode_steps` frames, i.e. on the last frame
  of step `max_episode_steps` (`PythonGame` ends it after that step: the same emulator state).

It cannot select an ALE mode or difficulty, and it does not expose ALE's saved states, so variants, and
callers that save emulator states (collect, online fine-tuning), use `AtariGame`. The observation of the
step that ENDS an episode may differ between the two paths by a stale max-pool buffer (the C++ code pools
in place), when the episode ends on the last frame of a skip; no caller stores or acts on that frame.

Every emulator here is an `Emulator`: `start(seed)` (a new stream: load the ROM with that seed, first
episode), `reset()` (next episode), `send(action)` then `recv()` (one agent step), `close()`. Sending to
all emulators before receiving from any lets the C++ ones step concurrently.
"""

from __future__ import annotations

import numpy as np

from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.acting.backend import Emulator
from sqlcli_core.acting.protocol import PROTOCOLS, ActingProtocol, check_seed
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import KNOWN_GAMES, Game

BACKENDS = ("auto", "vector", "python")




def vector_available(mode: int | None, difficulty: int | None) -> bool:
    """Whether ale_py's vector environment can play this variant (it only plays the default game)."""
    try:
        import ale_py
    except ImportError:  # pragma: no cover - ale-py is a dependency
        return False
    return mode is None and difficulty is None and hasattr(ale_py, "ALEVectorInterface")


def choose_backend(backend: str, mode: int | None, difficulty: int | None) -> str:
    """'vector' or 'python' for a requested backend ('auto' picks vector wherever it is identical)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", hint=f"choose one of {', '.join(BACKENDS)}")
    if backend == "python" or (backend == "auto" and not vector_available(mode, difficulty)):
        return "python"
    if not vector_available(mode, difficulty):
        raise UsageError("the vector backend cannot play an ALE mode or difficulty",
                         hint="use --backend auto or python for game variants")
    return "vector"


class VectorGame:
    """One emulator in ale_py's C++ vector environment (one environment, one worker thread)."""

    def __init__(self, game: Game, *, protocol: ActingProtocol = PROTOCOLS["dopamine"], max_episode_steps: int | None = None):
        import ale_py
        from ale_py import roms

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.game = game
        self.protocol = protocol
        cap = max_episode_steps or protocol.max_episode_steps
        self._vec = ale_py.ALEVectorInterface(
            rom_path=str(roms.get_rom_path(game.rom)), num_envs=1, frame_skip=protocol.frame_skip, stack_num=1,
            img_height=84, img_width=84, grayscale=True, maxpool=True, noop_max=0, use_fire_reset=False,
            episodic_life=False, life_loss_info=False, reward_clipping=False,
            max_episode_steps=protocol.frame_skip * cap,
            repeat_action_probability=protocol.sticky_action_prob, full_action_space=False, batch_size=0,
            num_threads=1, thread_affinity_offset=-1, autoreset_mode="SameStep",
        )
        self.num_actions = len(self._vec.get_action_set())
        self._next_first: np.ndarray | None = None  # the next episode's first frame (reset in C++ already)

    def start(self, seed: int) -> np.ndarray:
        obs, _ = self._vec.reset([0], [check_seed(seed)])
        self._next_first = None
        return obs[0, -1].copy()

    def reset(self) -> np.ndarray:
        if self._next_first is None:  # only before the first episode ended: reset without re-seeding
            obs, _ = self._vec.reset([0], [-1])
            return obs[0, -1].copy()
        first, self._next_first = self._next_first, None
        return first

    def send(self, action: int) -> None:
        self._vec.send([int(action)], [1.0])

    def recv(self) -> tuple[np.ndarray, float, bool]:
        obs, reward, terminated, truncated, info = self._vec.recv()
        over = bool(terminated[0] or truncated[0])
        if over:
            self._next_first = obs[0, -1].copy()
            frame = info["final_obs"][0, -1].copy()
        else:
            frame = obs[0, -1].copy()
        return frame, float(reward[0]), over

    def close(self) -> None:
        self._vec = None


class PythonGame:
    """`AtariGame` behind the `Emulator` interface (the step runs in `recv`, holding the GIL)."""

    def __init__(self, game: Game, *, protocol: ActingProtocol = PROTOCOLS["dopamine"], mode: int | None = None,
                 difficulty: int | None = None, max_episode_steps: int | None = None, seed: int = 0):
        self.game = game
        self.env = AtariGame(game, protocol=protocol, mode=mode, difficulty=difficulty, seed=seed)
        self.num_actions = self.env.num_actions
        self.max_episode_steps = max_episode_steps or protocol.max_episode_steps
        self._length = 0  # agent steps of the current episode
        self._fresh = True  # the ROM was just loaded with `seed`: start() need not reload it
        self._seed = seed
        self._action = 0

    def start(self, seed: int) -> np.ndarray:
        if not (self._fresh and seed == self._seed):
            self.env.reseed(seed)
        return self.reset()

    def reset(self) -> np.ndarray:
        self._fresh = False
        self._length = 0
        return self.env.reset()

    def send(self, action: int) -> None:
        self._action = int(action)

    def recv(self) -> tuple[np.ndarray, float, bool]:
        frame, reward, game_over = self.env.step(self._action)
        self._length += 1
        return frame, reward, game_over or self._length >= self.max_episode_steps

    def save_state(self) -> bytes:
        """ALE's state (`AtariGame.save_state`), for online fine-tuning's checkpoints."""
        return self.env.save_state()

    def restore_state(self, state: bytes) -> None:
        """Continue from `save_state`'s bytes. The episode cap counts agent steps since this emulator's last
        reset, which the bytes do not hold: online fine-tuning keeps each episode's length and caps it itself."""
        self._fresh = False
        self.env.restore_state(state)

    def close(self) -> None:
        self.env.close()




class AleBackend:
    """The Atari games of the catalog, played in ALE with Dopamine's preprocessing (the `GameBackend` of ALE).

    engine "vector": ale_py's C++ vector environment (`VectorGame`; the default game only), "python":
    `AtariGame` (`PythonGame`; any mode and difficulty); `choose_backend` resolves the CLI's --backend to one.
    """

    name = "ale"

    def knows(self, game: str) -> bool:
        return game in KNOWN_GAMES

    def make_emulator(self, game: Game, *, protocol: ActingProtocol, engine: str = "python", mode: int | None = None,
                      difficulty: int | None = None, max_episode_steps: int | None = None, seed: int = 0) -> Emulator:
        if engine == "vector":
            return VectorGame(game, protocol=protocol, max_episode_steps=max_episode_steps)
        return PythonGame(game, protocol=protocol, mode=mode, difficulty=difficulty,
                          max_episode_steps=max_episode_steps, seed=seed)


ALE = AleBackend()

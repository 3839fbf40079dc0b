"""The game-backend seam: a backend registered beside ALE plays its own games through the same pool that
evaluation uses, and ALE keeps the Atari catalog."""

from __future__ import annotations

import numpy as np
import pytest

from sqlcli_core.acting import backends
from sqlcli_core.acting.ale_vector import ALE
from sqlcli_core.acting.pool import EmulatorPool
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import Game


class CountingEmulator:
    """A two-action toy: the frame is the step count; episodes last 3 steps; reward = action."""

    num_actions = 2

    def __init__(self, game: Game, seed: int):
        self.game, self.seed, self.t, self.action = game, seed, 0, 0

    def start(self, seed: int) -> np.ndarray:
        self.seed = seed
        return self.reset()

    def reset(self) -> np.ndarray:
        self.t = 0
        return np.full((84, 84), self.seed % 256, np.uint8)

    def send(self, action: int) -> None:
        self.action = action

    def recv(self) -> tuple[np.ndarray, float, bool]:
        self.t += 1
        return np.full((84, 84), self.t, np.uint8), float(self.action), self.t >= 3

    def close(self) -> None:
        pass


class ToyBackend:
    name = "toy"

    def knows(self, game: str) -> bool:
        return game == "ToyCount"

    def make_emulator(self, game, *, protocol, engine="python", mode=None, difficulty=None, max_episode_steps=None,
                      seed=0):
        return CountingEmulator(game, seed)


@pytest.fixture
def toy_backend():
    backend = backends.register_backend(ToyBackend())
    yield backend
    backends._BACKENDS.remove(backend)


def test_a_registered_backend_plays_its_games_through_the_pool(toy_backend):
    assert backends.backend_for("ToyCount") is toy_backend and backends.backend_for("Pong") is ALE
    pool = EmulatorPool("python", protocol=PROTOCOLS["dopamine"])
    emulator, first = pool.take(Game("ToyCount"), seed=7)
    assert isinstance(emulator, CountingEmulator) and first[0, 0] == 7
    steps = []
    for action in (1, 0, 1):
        emulator.send(action)
        frame, reward, over = emulator.recv()
        steps.append((int(frame[0, 0]), reward, over))
    assert steps == [(1, 1.0, False), (2, 0.0, False), (3, 1.0, True)]
    pool.give_back(emulator)
    again, _ = pool.take(Game("ToyCount"), seed=8)
    assert again is emulator  # re-used, re-seeded
    pool.close()


def test_a_game_no_backend_knows_is_one_line(toy_backend):
    with pytest.raises(UsageError, match="no game backend plays 'Nope'"):
        backends.backend_for("Nope")
    with pytest.raises(ValueError, match="registered already"):
        backends.register_backend(ToyBackend())


def test_collect_and_online_fine_tuning_get_their_emulators_from_the_backend(toy_backend):
    """A new backend is one registry entry: collect's actors (resuming by their action log) and online
    fine-tuning's actors play its games with no other edit."""
    from types import SimpleNamespace

    from sqlcli_core.acting.actors import StreamActor, make_actor, replay_stream
    from sqlcli_core.data.online_replay import OnlineReplay, ReplayConfig
    from sqlcli_core.training.finetune_online import Actors

    protocol = PROTOCOLS["dopamine"]
    actor = make_actor("auto", Game("ToyCount"), protocol, None, None, seed=5)
    assert isinstance(actor, StreamActor) and isinstance(actor.env, CountingEmulator)
    assert actor.reset()[0, 0] == 5  # the stream's first frame, from start(seed)
    for action in (1, 0):
        actor.send(action)
        frame, reward, over = actor.recv()
    assert (int(frame[0, 0]), reward, over) == (2, 0.0, False)
    record = actor.resume_record(in_episode=True)
    assert record["stream_actions"].tolist() == [1, 0]
    fresh = make_actor("python", Game("ToyCount"), protocol, None, None, seed=5)
    assert replay_stream(fresh, record["stream_actions"], protocol.max_episode_steps, in_episode=True)[0, 0] == 2

    actors = Actors(Game("ToyCount"), SimpleNamespace(num_envs=2, seed=0, mode=None, difficulty=None), protocol)
    assert all(isinstance(env, CountingEmulator) for env in actors.envs)
    replay = OnlineReplay(ReplayConfig(capacity=100, num_envs=2, n_step=3, gamma=0.99), game_id=0, seed=0)
    actors.reset(replay)
    ended = [actors.step(np.array([1, 0]), replay) for _ in range(3)]
    assert ended[:2] == [[], []] and ended[2] == [{"return": 3.0, "length": 3}, {"return": 0.0, "length": 3}]
    # both started their next episode: the frame is the seed's byte again
    assert actors.stacks[:, -1, 0, 0].tolist() == [env.seed % 256 for env in actors.envs]

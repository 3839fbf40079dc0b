"""Dopamine-style preprocessing: resize against OpenCV's INTER_AREA, stepping against raw ALE."""

import numpy as np
import pytest

from sqlcli_core.atari.env import AtariGame, area_resize
from sqlcli_core.atari.games import Game
from sqlcli_core.errors import UsageError


def test_area_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(5):
        frame = rng.integers(0, 256, (210, 160), dtype=np.uint8)
        ours = area_resize(frame).astype(int)
        ref = cv2.resize(frame, (84, 84), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(ours - ref).max() <= 1
        assert (ours != ref).mean() < 0.02


def test_steps_are_the_max_of_the_last_two_frames_of_four():
    """Replay the same seed through raw ALE and compare the preprocessed frame."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = AtariGame(Game("Breakout"), seed=3)
    env.reset()
    raw = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.25, obs_type="grayscale")
    raw.reset(seed=3)
    ale = raw.unwrapped.ale
    actions = [1, 2, 2, 3, 0, 1, 2, 3] * 5
    for a in actions:
        obs, reward, over = env.step(a)
        screens, total = [], 0
        for _ in range(4):
            total += ale.act(ale_py.Action(raw.unwrapped._action_set[a]))
            screens.append(ale.getScreenGrayscale())
        expected = area_resize(np.maximum(screens[-2], screens[-1]))
        np.testing.assert_array_equal(obs, expected)
        assert reward == total and not over


def test_bad_mode_is_refused_with_the_valid_list():
    with pytest.raises(UsageError, match=r"Pong has no mode 9 \(ALE offers modes \[0, 1\]\)"):
        AtariGame(Game("Pong"), mode=9)


@pytest.mark.parametrize("name", ["Carnival", "Pooyan"])
def test_games_with_taller_screens(name):
    """Carnival (214 lines) and Pooyan (220) are atari40 games whose screens are not 210x160."""
    env = AtariGame(Game(name), seed=0)
    first = env.reset()
    frame, _, _ = env.step(0)
    assert first.shape == frame.shape == (84, 84)
    assert frame.any()

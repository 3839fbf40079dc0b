"""Dopamine-style preprocessing: resize against OpenCV's INTER_AREA, stepping against raw ALE, and the two
acting paths (ale_py's C++ vector environment, our AtariGame) against each other."""

import numpy as np
import pytest

from sqlcli_core.acting.ale_env import AtariGame, area_resize
from sqlcli_core.acting.ale_vector import PythonGame, VectorGame, choose_backend
from sqlcli_core.acting.pool import EmulatorPool
from sqlcli_core.acting.protocol import PROTOCOLS, check_seed
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import Game


def test_area_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for _ in range(5):
        frame = rng.integers(0, 256, (210, 160), dtype=np.uint8)
        ours = area_resize(frame).astype(int)
        ref = cv2.resize(frame, (84, 84), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(ours - ref).max() <= 1
        assert (ours != ref).mean() < 0.02


@pytest.mark.parametrize("height", [210, 214, 220, 230, 250])
def test_area_resize_is_opencv_bit_for_bit(height):
    """Every screen height of the catalog (Carnival 214, Pooyan 220, JourneyEscape 230, AirRaid 250), on
    random pixels and on frames of a few grey levels (the rounding ties of real screens)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(height)
    palette = np.array([0, 52, 87, 111, 142, 236, 255], np.uint8)
    for k in range(60):
        frame = (rng.integers(0, 256, (height, 160), dtype=np.uint8) if k % 2
                 else rng.choice(palette, (height, 160)))
        np.testing.assert_array_equal(area_resize(frame),
                                      cv2.resize(frame, (84, 84), interpolation=cv2.INTER_AREA))


def raw_ale(name, seed, sticky=0.25):
    """A bare ALE seeded as the docs say both paths seed it: random_seed = the emulator seed."""
    import ale_py
    from ale_py import roms

    ale = ale_py.ALEInterface()
    ale.setFloat("repeat_action_probability", sticky)
    ale.setInt("random_seed", seed)
    ale.loadROM(str(roms.get_rom_path(Game(name).rom)))
    ale.reset_game()
    return ale


def test_steps_are_the_max_of_the_last_two_frames_of_four():
    """Replay the same seed through raw ALE and compare the preprocessed frame."""
    import ale_py

    env = AtariGame(Game("Breakout"), seed=3)
    env.reset()
    ale = raw_ale("Breakout", 3)
    action_set = ale.getMinimalActionSet()
    actions = [1, 2, 2, 3, 0, 1, 2, 3] * 5
    for a in actions:
        obs, reward, over = env.step(a)
        screens, total = [], 0
        for _ in range(4):
            total += ale.act(ale_py.Action(action_set[a]))
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


def play_side_by_side(name, protocol, seed, cap, steps, action_seed=1):
    """Drive a VectorGame and a PythonGame with the same seed and actions; return what each saw."""
    game = Game(name)
    vector = VectorGame(game, protocol=protocol, max_episode_steps=cap)
    python = PythonGame(game, protocol=protocol, max_episode_steps=cap, seed=seed)
    seen = {"vector": [], "python": []}
    for label, env in (("vector", vector), ("python", python)):
        rng = np.random.default_rng(action_seed)
        rows = seen[label]
        rows.append(("start", env.start(seed), 0.0, False))
        for _ in range(steps):
            frame, reward, over = (env.send(int(rng.integers(env.num_actions))), env.recv())[1]
            rows.append(("step", frame, reward, over))
            if over:
                rows.append(("reset", env.reset(), 0.0, False))
        env.close()
    return seen["vector"], seen["python"]


def assert_same_play(vector, python):
    """Identical frames, raw rewards and episode ends; an episode's last frame (never stored or acted on)
    is excluded, since the C++ max-pool may leave a stale buffer there."""
    assert [(k, r, o) for k, _, r, o in vector] == [(k, r, o) for k, _, r, o in python]
    for (kind, fv, _, over), (_, fp, _, _) in zip(vector, python):
        if not over:
            np.testing.assert_array_equal(fv, fp, err_msg=kind)


@pytest.mark.slow
@pytest.mark.parametrize("name,protocol,cap,steps", [
    ("Breakout", "dopamine", 27_000, 700),  # sticky actions, several game overs
    ("Pong", "dopamine", 120, 400),  # the step cap (small here) ends episodes; sticky actions
    ("Carnival", "no-sticky", 150, 400),  # 214-line screen
    ("Pooyan", "dopamine", 150, 400),  # 220-line screen, sticky
])
def test_vector_and_python_paths_play_the_same_game(name, protocol, cap, steps):
    vector, python = play_side_by_side(name, PROTOCOLS[protocol], seed=11, cap=cap, steps=steps)
    assert_same_play(vector, python)
    ends = [i for i, row in enumerate(vector) if row[3]]
    assert ends, "the test must cross an episode end"
    if cap < 27_000:  # every episode ran into the small cap: ended exactly at `cap` steps
        lengths, length = [], 0
        for kind, _, _, over in vector:
            length = 0 if kind != "step" else length + 1
            if over:
                lengths.append(length)
        assert set(lengths) == {cap}
    starts = [row[1] for row in vector if row[0] in ("start", "reset")]
    assert all(f.any() for f in starts)  # an episode starts on the game's own first screen: no noops, no FIRE


@pytest.mark.slow
def test_sticky_actions_follow_the_seed_on_both_paths():
    """With stickiness, the seed is ALE's random_seed on both paths: same seed, same game; another seed,
    another game. Statistics: sticky 0.25 repeats the previous ALE action on a quarter of the frames."""
    import ale_py

    protocol = PROTOCOLS["dopamine"]
    a, b = play_side_by_side("Breakout", protocol, seed=5, cap=27_000, steps=300)
    c, _ = play_side_by_side("Breakout", protocol, seed=6, cap=27_000, steps=300)
    assert_same_play(a, b)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    # The sticky draw, on raw ALE seeded as both paths seed it. Breakout's paddle (RAM 72) moves one frame
    # after its input. Alternate LEFT/RIGHT every frame; with per-frame stickiness p the applied action e_i
    # is e_(i-1) with probability p, else a_i, so P(e_i = a_i) = s solves s = (1 - p) + p (1 - s):
    # s = 1 / (1 + p), 0.8 for p = 0.25 (and 1 without stickiness).
    for p in (0.0, protocol.sticky_action_prob):
        ale = raw_ale("Breakout", 5, sticky=p)
        ale.act(ale_py.Action.FIRE)
        follows, moves = 0, 0
        for i in range(6000):
            before = int(ale.getRAM()[72])
            action = ale_py.Action.RIGHT if i % 2 else ale_py.Action.LEFT
            ale.act(action)
            moved = int(ale.getRAM()[72]) - before
            if moved:  # (not at a wall) it went the way of the previous frame's input
                moves += 1
                follows += (moved > 0) == (action == ale_py.Action.LEFT)
            if ale.game_over():
                ale.reset_game()
        assert moves > 3000
        assert abs(follows / moves - 1 / (1 + p)) < 0.02, (p, follows / moves)


def test_backend_choice_and_seed_range():
    assert choose_backend("auto", None, None) == "vector"
    assert choose_backend("auto", 1, None) == "python"  # ALE's vector env plays the default game only
    with pytest.raises(UsageError, match="mode or difficulty"):
        choose_backend("vector", None, 1)
    with pytest.raises(UsageError, match="unknown backend"):
        choose_backend("gpu", None, None)
    assert check_seed(2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError):
        check_seed(2**31)


@pytest.mark.slow
def test_pool_reuses_an_emulator_for_the_next_seed():
    """A re-seeded emulator plays exactly what a fresh one with that seed plays (no state carried over)."""
    pool = EmulatorPool("vector", protocol=PROTOCOLS["dopamine"], max_episode_steps=60)
    game = Game("Pong")
    env, first = pool.take(game, 1)
    for _ in range(70):  # past one capped episode
        env.send(2)
        env.recv()
    pool.give_back(env)
    again, first_again = pool.take(game, 2)
    assert again is env
    fresh = VectorGame(game, max_episode_steps=60)
    np.testing.assert_array_equal(first_again, fresh.start(2))
    for i in range(50):
        again.send(i % 6)
        fresh.send(i % 6)
        got, want = again.recv(), fresh.recv()
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:] == want[1:]
    pool.close()

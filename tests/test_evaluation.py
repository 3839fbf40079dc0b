"""`sql eval` and sqlcli_core.evaluation.evaluate on real ALE emulators.

References: a plain one-emulator re-derivation of the batched loop (frame stack, epsilon-greedy, seeds),
the published random scores of the Atari-57 table, and hand-made policies whose actions are known.
"""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.errors import UsageError
from sqlcli_core.evaluation.evaluate import EvalConfig, RandomPolicy, evaluate, stream_seeds
from sqlcli_core.evaluation.results import protocol_block
from sqlcli_core.evaluation.sequence_acting import SequencePolicy, stream_key
from sqlcli_core.games.catalog import Game

runner = CliRunner()


class PixelPolicy:
    """A hand-made QPolicy whose greedy action depends on the newest AND the oldest frame of the stack.

    greedy = (mean of newest frame + 3 * mean of oldest frame) rounded, mod the game's action count, so a
    wrong stack order, a wrong initial stack or a wrong game id changes the actions.
    """

    def __init__(self, names, sizes=None):
        self.games = [Game(n) for n in names]
        self.sizes = list(sizes) if sizes is not None else [g.num_actions for g in self.games]
        self.run_config, self.step = {}, 7
        self.batches = []  # the first few obs batches seen

    def greedy(self, stack, head):
        return int(np.rint(stack[-1].mean() + 3 * stack[0].mean())) % self.sizes[head]

    def q_values(self, obs, game):
        assert obs.dtype == np.uint8 and obs.shape[1:] == (4, 84, 84) and game.dtype == np.int32
        if len(self.batches) < 2:
            self.batches.append(obs.copy())
        q = np.full((len(obs), max(self.sizes)), -np.inf, np.float32)
        for i, (stack, head) in enumerate(zip(obs, game)):
            q[i, :self.sizes[head]] = 0.0
            q[i, self.greedy(stack, head)] = 1.0
        return q


def reference_stream(policy, game, seed, head, episodes, epsilon, max_steps):
    """The episodes of one (game, seed) stream in a plain loop: one emulator, its own stack, the same seeds."""
    env_seed, rng = stream_seeds(game, seed)
    env = AtariGame(Game(game), seed=env_seed)
    out = []
    for _ in range(episodes):
        stack = np.concatenate([np.zeros((3, 84, 84), np.uint8), env.reset()[None]])
        score, length, over = 0.0, 0, False
        while not over and length < max_steps:
            if rng.random() < epsilon:
                action = int(rng.integers(env.num_actions))
            else:
                action = policy.greedy(stack, head)
            frame, reward, over = env.step(action)
            stack = np.concatenate([stack[1:], frame[None]])
            score += reward
            length += 1
        out.append((score, length, not over))
    env.close()
    return out


@pytest.mark.slow
def test_batched_loop_matches_a_plain_loop_and_does_not_depend_on_batching():
    policy = PixelPolicy(["Boxing", "Breakout", "Pong"])  # heads in another order than the games evaluated
    config = EvalConfig(games=("Pong", "Breakout"), seeds=(0, 1), episodes=2, epsilon=0.3, max_steps=40)
    batched, stats = evaluate(policy, config, num_envs=3)
    assert stats.env_steps == sum(r.length for r in batched) and stats.episodes == 8
    # call 0 checks the action sets; the first step's call sees [0, 0, 0, first frame] in every emulator
    first_step = policy.batches[1]
    assert first_step.shape[0] == 3 and not first_step[:, :3].any() and first_step[:, 3].all(axis=(1, 2)).any()
    heads = {"Boxing": 0, "Breakout": 1, "Pong": 2}
    by_key = {r.key: r for r in batched}
    for seed in config.seeds:
        for game in config.games:
            reference = reference_stream(policy, game, seed, heads[game], 2, 0.3, 40)
            got = [by_key[(game, seed, e)] for e in range(2)]
            assert [(r.score, r.length, r.truncated) for r in got] == reference, (game, seed)
    # resuming: with episode 1 of (Pong, 0) missing, the stream is replayed and only that episode reported
    resumed, _ = evaluate(PixelPolicy(["Boxing", "Breakout", "Pong"]), config,
                             done=set(by_key) - {("Pong", 0, 1)})
    assert resumed == [by_key[("Pong", 0, 1)]]
    # another batch width, another order of completion, emulators stepped in two threads: same episodes
    threaded, _ = evaluate(PixelPolicy(["Boxing", "Breakout", "Pong"]), config, num_envs=2, threads=2)
    assert {r.key: r for r in threaded} == by_key


# Random-policy scores under the dopamine protocol, measured once with 30 (Breakout) and 12 (Pong) episodes
# of seeds 100+: Breakout mean 1.13, std 1.11, lengths 130-292 steps; Pong mean -20.0, std 1.28, lengths
# 800-1137. The tolerance is 3 standard errors of the test's own mean around the PUBLISHED random score.
RANDOM_STD = {"Breakout": 1.11, "Pong": 1.28}


@pytest.mark.slow
def test_random_policy_reproduces_the_published_random_scores(tmp_path):
    out = tmp_path / "random.json"
    res = runner.invoke(app, ["eval", "--policy", "random", "--games", "pong,breakout", "--seeds", "0-3",
                              "--episodes", "1", "--out", str(out), "--bootstrap-reps", "2000", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["policy"]["kind"] == "random" and result["policy"]["epsilon"] == 1.0
    assert result["protocol"]["name"] == "dopamine" and result["protocol"]["sticky_action_prob"] == 0.25
    assert result["protocol"]["max_episode_steps"] == 27_000 and not result["protocol"]["deviates_from_protocol"]
    for name, std in RANDOM_STD.items():
        g = result["games"][name]
        n = len(g["scores"])
        random_ref, human_ref = Game(name).reference
        assert n == 4 and g["mean"] == pytest.approx(np.mean(g["scores"]))
        assert abs(g["mean"] - random_ref) <= 3 * std / np.sqrt(n), (name, g["scores"])
        assert abs(g["human_normalized"]) <= 3 * std / np.sqrt(n) / (human_ref - random_ref)
        assert not any(g["truncated"])
    # game over, not a lost life, ends an episode: random Breakout lasts ~180 steps (~40 per life), Pong
    # loses 21 points of ~40 steps each
    assert np.mean(result["games"]["Breakout"]["lengths"]) > 100
    assert min(result["games"]["Pong"]["lengths"]) > 700
    assert abs(result["aggregates"]["iqm"]["value"]) < 0.06
    lo, hi = result["aggregates"]["mean"]["ci95"]
    assert lo <= result["aggregates"]["mean"]["value"] <= hi
    assert result["aggregate_method"]["unit"] == "seed" and result["aggregate_method"]["runs_per_game"] == 4
    assert "provenance" in result and result["provenance"]["config"]["seeds"] == [0, 1, 2, 3]
    assert (tmp_path / "random.md").read_text().count("| Pong |") == 1
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["env_steps"] == sum(
        sum(result["games"][g]["lengths"]) for g in RANDOM_STD)


def test_a_game_without_a_head_or_with_other_actions_is_refused():
    policy = PixelPolicy(["Pong", "Breakout"])
    config = EvalConfig(games=("Pong", "Boxing"), seeds=(0,), episodes=1, max_steps=10)
    with pytest.raises(UsageError, match=r"game 'Boxing' is not among 2 games of this checkpoint"
                                         r" \(its games are Pong, Breakout\)"):
        evaluate(policy, config)
    wrong = PixelPolicy(["Pong", "Breakout"], sizes=[6, 3])
    config = EvalConfig(games=("Breakout",), seeds=(0,), episodes=1, max_steps=10)
    with pytest.raises(UsageError, match="head for Breakout has 3 actions but ALE's minimal action set has 4"):
        evaluate(wrong, config)


def test_bad_settings_are_refused_before_playing():
    policy = PixelPolicy(["Breakout"])
    for kwargs, message in [
        ({"mode": 99}, r"Breakout has no mode 99 \(ALE offers modes \["),
        ({"max_steps": 30_000}, r"--max-steps must lie in 1..27000"),
        ({"episodes": 0}, "--episodes must be >= 1"),
        ({"seeds": (1, 1)}, "repeated seeds"),
    ]:
        with pytest.raises(UsageError, match=message):
            evaluate(policy, EvalConfig(games=("Breakout",), **{"seeds": (0,), "episodes": 1, **kwargs}))


def test_cli_refuses_bad_input_with_one_line(tmp_path):
    cases = [
        (["eval", "--policy", "random"], "--policy random needs --games"),
        (["eval", "--policy", "random", "--games", "pongg"], "unknown game 'pongg' (did you mean 'Pong'?)"),
        (["eval", "--policy", "random", "--games", "pong", "--protocol", "x"], "'x' is not one of 'dopamine', 'no-sticky'"),
        (["eval", "--policy", "random", "--games", "pong", "--seeds", "a"], "bad --seeds 'a'"),
        (["eval", "--policy", "random", "--games", "pong", "--record", "breakout"],
         "--record Breakout is not among the evaluated games"),
        (["eval", str(tmp_path / "nope")], "does not exist"),
        (["eval"], "no checkpoint given"),
        (["eval", "--policy", "random", "--games", "pong", "--acting", "sample"], "--acting and --dt-* do not apply"),
        (["eval", "--policy", "random", "--games", "pong", "--dt-kappa", "1"], "--acting and --dt-* do not apply"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 or (res.exit_code == 3 and "does not exist" in message), (args, res.output)
        assert message in " ".join(res.output.split()), (args, res.output)
    assert not list(tmp_path.iterdir())


class FixedLogits:
    """A QPolicy whose values are fixed per head (a BC policy's logits), -inf beyond each game's actions."""

    games = [Game("Breakout"), Game("Pong")]
    logits = {0: [2.0, 0.0, -1.0, 1.0], 1: [0.0, 0.5, 0.0, -2.0, 1.0, 0.0]}

    def q_values(self, obs, game):
        q = np.full((len(game), 6), -np.inf, np.float32)
        for i, head in enumerate(game):
            q[i, :len(self.logits[int(head)])] = self.logits[int(head)]
        return q


def test_sampled_acting_draws_from_the_softmax_keyed_by_each_stream():
    from types import SimpleNamespace

    from sqlcli_core.evaluation.sequence_acting import SampledActing

    choose = SampledActing(FixedLogits())

    def stream(game, seed, episode, step):
        return SimpleNamespace(plan=SimpleNamespace(game=game, seed=seed), episode=episode, length=step)

    n = 20_000
    for head, game in enumerate(("Breakout", "Pong")):
        streams = [stream(game, 0, t // 1000, t % 1000) for t in range(n)]
        actions = choose(streams, np.zeros((n, 4, 84, 84), np.uint8), np.full(n, head, np.int32))
        logits = np.array(FixedLogits.logits[head])
        want = np.exp(logits) / np.exp(logits).sum()
        np.testing.assert_allclose(np.bincount(actions, minlength=len(want)) / n, want, atol=0.012)
    # a stream's draw does not depend on the other streams of the call
    streams = [stream("Breakout", s, 0, 5) for s in range(8)]
    together = choose(streams, np.zeros((8, 4, 84, 84), np.uint8), np.zeros(8, np.int32))
    alone = [int(choose([s], np.zeros((1, 4, 84, 84), np.uint8), np.zeros(1, np.int32))[0]) for s in streams]
    assert together.tolist() == alone


def test_acting_enters_the_settings_digest_only_where_it_changes_play():
    base = EvalConfig(games=("Pong",))
    greedy = dataclasses.replace(base, acting={"mode": "greedy", "method_default": False})
    assert greedy.play_settings() == base.play_settings()  # earlier logs and default names of greedy evals hold
    sampled = dataclasses.replace(base, acting={"mode": "sample", "method_default": False})
    dt = dataclasses.replace(base, acting={"mode": "sample", "method_default": True, "dt": {"return_samples": 128}})
    assert sampled.play_settings()["acting"] == {"mode": "sample"}
    assert dt.play_settings()["acting"] == {"mode": "sample", "dt": {"return_samples": 128}}


@pytest.mark.slow
def test_quick_look_is_marked_resumes_and_records(tmp_path):
    out = tmp_path / "quick.json"
    base = ["eval", "--policy", "random", "--games", "breakout,elevator_action", "--seeds", "0,1",
            "--episodes", "2", "--out", str(out), "--bootstrap-reps", "500", "--json"]
    args = base + ["--max-steps", "40"]
    first = runner.invoke(app, args + ["--record", "breakout", "--record-steps", "25"])
    assert first.exit_code == 0, first.output
    first_summary = json.loads(first.stdout.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert result["protocol"]["deviates_from_protocol"] and result["protocol"]["max_episode_steps"] == 40
    assert any("DEVIATES FROM THE PROTOCOL" in n for n in result["notes"])
    assert result["excluded_from_aggregates"] == ["ElevatorAction"]
    elevator = result["games"]["ElevatorAction"]  # no reference score (and a 210-line screen, unlike Pooyan)
    assert elevator["human_normalized"] is None and len(elevator["scores"]) == 4
    assert any("ElevatorAction" in n and "no standard random/human reference" in n for n in result["notes"])
    assert result["games"]["Breakout"]["seeds"] == [0, 0, 1, 1]
    from PIL import Image

    assert first_summary["plot"] == str(tmp_path / "quick.png")
    with Image.open(tmp_path / "quick.png") as im:  # the per-game bar chart beside the result
        assert im.format == "PNG" and im.size[0] > 600
    import imageio.v2 as imageio

    with imageio.get_reader(tmp_path / "quick.Breakout.mp4") as video:  # docs and checks: tests/test_figures.py
        assert 1 < video.count_frames() <= 25

    # lose the last two episodes, as a crash would; the re-run plays only those and gets the same file
    log = tmp_path / "quick.episodes.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-2]) + "\n" + lines[-1][:10])
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["episodes_played"] == 2 and summary["episodes_reused"] == 6
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 8 and [r["seed"] for r in records].count(1) == 4  # log is whole
    assert {frozenset(r) for r in records} == {frozenset(("game", "seed", "episode", "score", "length", "truncated",
                                                          "settings"))}  # one record shape, no header
    redone = json.loads(out.read_text())
    assert redone["games"] == result["games"] and redone["aggregates"] == result["aggregates"]

    other = runner.invoke(app, base + ["--max-steps", "41"])
    assert other.exit_code == 2 and "holds episodes played with other settings" in other.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run directory with a real Orbax checkpoint of a tiny DQN-torso network for Pong and Breakout."""
    from sqlcli_core.networks.config import NetworkConfig, num_actions_for
    from sqlcli_core.networks.network import count_parameters
    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity
    from sqlcli_core.training.configs import LearnerConfig
    from sqlcli_core.training.mesh import make_mesh
    from sqlcli_core.training.update import init_train_state

    run = tmp_path_factory.mktemp("run")
    config = NetworkConfig(arch="dqn", width=0.25, num_atoms=5, projection_dim=16,
                                    spatial_embedding_features=2)
    games = [Game("Pong"), Game("Breakout")]
    num_actions = num_actions_for(config, games)
    identity = run_identity(config.to_dict(), [g.name for g in games], num_actions)
    state = init_train_state(config, num_actions, LearnerConfig(), 0, make_mesh())
    prepare_run_dir(run, identity=identity, config={}, seed=0,
                               parameter_counts=count_parameters(state.params))
    saver = Checkpointer(run, identity)
    saver.save(5, state, None, force=True)
    saver.close()
    return run


class GreedyOf:
    """Adapter: the greedy action of a QPolicy for one stack, for `reference_episode`."""

    def __init__(self, policy):
        self.policy = policy

    def greedy(self, stack, head):
        return int(np.argmax(self.policy.q_values(stack[None], np.array([head], np.int32))[0]))


@pytest.mark.slow
def test_real_checkpoint_is_played_greedily_and_refuses_other_games(tiny_run):
    from sqlcli_core.runs.policy import load_policy

    refused = runner.invoke(app, ["eval", str(tiny_run), "--games", "pong,boxing"])
    assert refused.exit_code == 2
    assert ("game 'Boxing' is not among 2 games of this checkpoint (its games are Pong, Breakout)"
            in " ".join(refused.output.split()))
    assert not (tiny_run / "eval").exists()

    res = runner.invoke(app, ["eval", str(tiny_run), "--seeds", "3", "--episodes", "1", "--max-steps", "60",
                              "--num-envs", "2", "--bootstrap-reps", "200", "--json"])
    assert res.exit_code == 0, res.output
    (out,) = (tiny_run / "eval").glob("*.json")
    result = json.loads(out.read_text())
    assert out.name.startswith("step5_dopamine_2games_cap60_")
    assert result["policy"]["kind"] == "checkpoint" and result["policy"]["step"] == 5
    assert result["policy"]["arch"] == "dqn" and result["policy"]["num_params"] > 0
    assert result["protocol"]["epsilon"] == PROTOCOLS["dopamine"].epsilon
    assert result["aggregate_method"]["unit"] == "episode"
    assert result["policy"]["acting"] == {"mode": "greedy", "method_default": True}
    for args, message in [(["--acting", "sample"], "runs of method scaled-ql act greedy, not sample"),
                          (["--dt-kappa", "1"], "--dt-kappa applies to Decision Transformer runs")]:
        refused = runner.invoke(app, ["eval", str(tiny_run), *args])
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
    policy = GreedyOf(load_policy(tiny_run))
    for head, name in enumerate(["Pong", "Breakout"]):
        ((score, length, truncated),) = reference_stream(policy, name, 3, head, 1, 0.001, 60)
        g = result["games"][name]
        assert (g["scores"], g["lengths"], g["truncated"]) == ([score], [length], [truncated])


@pytest.mark.slow
def test_backends_give_the_same_episodes_and_variants_use_the_python_path():
    """ale_py's vector emulators and AtariGame: same episodes, sticky actions on (dopamine protocol)."""
    policy = PixelPolicy(["Pong", "Breakout"])
    config = EvalConfig(games=("Breakout", "Pong"), seeds=(3, 4), episodes=2, epsilon=0.3, max_steps=60)
    vector, _ = evaluate(policy, config, num_envs=3, backend="vector")
    python, _ = evaluate(PixelPolicy(["Pong", "Breakout"]), config, num_envs=3, backend="python")
    assert sorted(vector, key=lambda r: r.key) == sorted(python, key=lambda r: r.key)
    variant = EvalConfig(games=("Breakout",), seeds=(0,), episodes=1, epsilon=1.0, max_steps=30, mode=4)
    with pytest.raises(UsageError, match="mode or difficulty"):
        evaluate(RandomPolicy([Game("Breakout")]), variant, backend="vector")
    played, _ = evaluate(RandomPolicy([Game("Breakout")]), variant)  # auto: the python path
    assert len(played) == 1 and played[0].length <= 30


@pytest.mark.slow
def test_overlapped_halves_play_the_plain_loops_episodes():
    """overlap: two halves take turns (one's policy call while the other's emulators step); every stream still
    plays what a plain one-emulator loop plays, and each call has the larger half's rows (one compile)."""
    policy = PixelPolicy(["Boxing", "Breakout", "Pong"])
    config = EvalConfig(games=("Pong", "Breakout"), seeds=(0, 1), episodes=2, epsilon=0.3, max_steps=40)
    overlapped, stats = evaluate(policy, config, num_envs=3, overlap=True)
    assert stats.env_steps == sum(r.length for r in overlapped) and stats.episodes == 8
    assert [len(b) for b in policy.batches] == [2, 2]  # the action-set check, then the first half's first step
    heads = {"Boxing": 0, "Breakout": 1, "Pong": 2}
    by_key = {r.key: r for r in overlapped}
    for seed in config.seeds:
        for game in config.games:
            reference = reference_stream(policy, game, seed, heads[game], 2, 0.3, 40)
            assert [(by_key[(game, seed, e)].score, by_key[(game, seed, e)].length,
                     by_key[(game, seed, e)].truncated) for e in range(2)] == reference, (game, seed)
    python, _ = evaluate(PixelPolicy(["Boxing", "Breakout", "Pong"]), config, num_envs=4, overlap=True,
                            backend="python")
    assert {r.key: r for r in python} == by_key


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vector", "python"])
def test_an_episode_cut_at_the_protocols_own_cap_is_truncated(backend):
    """Issue 11: the emulator itself ends the episode at the protocol's cap (ALE reported game over there);
    the result must still say truncated. A protocol with a 50-step cap plays it in a few hundred steps."""
    import dataclasses

    protocol = dataclasses.replace(PROTOCOLS["dopamine"], max_episode_steps=50)
    config = EvalConfig(games=("Pong",), seeds=(0, 1), episodes=1, protocol=protocol, epsilon=1.0,
                           max_steps=50)
    results, _ = evaluate(RandomPolicy([Game("Pong")]), config, backend=backend)
    assert [(r.length, r.truncated) for r in results] == [(50, True), (50, True)]
    assert protocol_block(config)["deviates_from_protocol"] is False
@pytest.fixture(scope="module")
def tiny_dt_run(tmp_path_factory):
    """A real run directory with a real Orbax checkpoint of a tiny Decision Transformer for Pong and Breakout."""
    from sqlcli_core.networks import decision_transformer as dt
    from sqlcli_core.networks.config import num_actions_for
    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity
    from sqlcli_core.training.configs import LearnerConfig
    from sqlcli_core.training.mesh import make_mesh
    from sqlcli_core.training.update import init_train_state

    run = tmp_path_factory.mktemp("dt-run")
    config = dt.DecisionTransformerConfig(arch="dt-10m", width=1 / 16)
    games = ["Pong", "Breakout"]
    num_actions = num_actions_for(config, [Game(g) for g in games])
    identity = run_identity(config.to_dict(), games, num_actions, "dt")
    state = init_train_state(config, num_actions, LearnerConfig(method="dt"), 0, make_mesh(),
                                     games)
    prepare_run_dir(run, identity=identity, config={}, seed=0,
                               parameter_counts=dt.count_parameters(state.params))
    saver = Checkpointer(run, identity)
    saver.save(5, state, None, force=True)
    saver.close()
    return run


def reference_dt_stream(policy, game, seed, head, episodes, epsilon, max_steps):
    """One (game, seed) stream played by a one-slot actor of `policy` in a plain loop, the same seeds and keys."""
    actor = policy.actor(1)
    env_seed, rng = stream_seeds(game, seed)
    env = AtariGame(Game(game), seed=env_seed)
    out = []
    for episode in range(episodes):
        stack = np.concatenate([np.zeros((3, 84, 84), np.uint8), env.reset()[None]])
        actor.start_episodes([0], [head])
        score, length, over = 0.0, 0, False
        while not over and length < max_steps:
            chosen = int(actor.act([0], stack[None], stream_key(game, seed, episode, length)[None])[0])
            action = int(rng.integers(env.num_actions)) if rng.random() < epsilon else chosen
            frame, reward, over = env.step(action)
            actor.record([0], [reward], [over], [action])
            stack = np.concatenate([stack[1:], frame[None]])
            score += reward
            length += 1
        out.append((score, length, not over))
    env.close()
    return out


class RecordingPolicy:
    """A SequencePolicy whose actors log every action they choose, by the stream's key of the draw."""

    def __init__(self, policy):
        self.policy, self.games, self.run_config = policy, policy.games, policy.run_config
        self.step, self.num_actions = policy.step, policy.num_actions
        self.log: dict[tuple[int, int], tuple[int, float]] = {}

    def actor(self, num_envs, acting=None):
        inner, log = self.policy.actor(num_envs, acting), self.log

        class Actor:
            start_episodes, record = inner.start_episodes, inner.record

            def act(self, slots, frames, keys):
                actions = inner.act(slots, frames, keys)
                for key, frame, action in zip(keys, frames, actions):
                    log[tuple(int(k) for k in key)] = (int(action), float(frame.mean()))
                return actions

        return Actor()


@pytest.mark.slow
def test_decision_transformer_run_is_played_by_expert_action_inference(tiny_dt_run):
    """`sql eval` of a dt run: each stream keeps its own context whatever its slot, as a plain loop plays it."""
    from sqlcli_core.methods.decision_transformer import DecisionTransformerPolicy
    from sqlcli_core.runs.policy import SequenceRunPolicy, load_policy

    loaded = load_policy(tiny_dt_run)
    assert isinstance(loaded, SequenceRunPolicy) and isinstance(loaded, SequencePolicy)
    assert isinstance(loaded.actor(2), DecisionTransformerPolicy) and loaded.num_actions == (6, 4)
    policy = RecordingPolicy(loaded)
    config = EvalConfig(games=("Breakout", "Pong"), seeds=(0, 1), episodes=2, epsilon=0.3, max_steps=30)
    batched, stats = evaluate(policy, config, num_envs=3)  # 4 streams in 3 slots: slots are reused
    assert stats.episodes == 8
    by_key, batched_actions = {r.key: r for r in batched}, dict(policy.log)
    assert len(batched_actions) == stats.env_steps  # one draw per step, each with its own key
    assert len({a for a, _ in batched_actions.values()}) > 1  # the model's actions are not constant
    policy.log.clear()
    for seed in config.seeds:
        for game in config.games:
            reference = reference_dt_stream(policy, game, seed, ["Pong", "Breakout"].index(game), 2, 0.3, 30)
            got = [by_key[(game, seed, e)] for e in range(2)]
            assert [(r.score, r.length, r.truncated) for r in got] == reference, (game, seed)
    assert policy.log == batched_actions  # every step's action and frame, as one stream alone plays them
    policy.log.clear()
    one_at_a_time, _ = evaluate(policy, config, num_envs=1)
    assert {r.key: r for r in one_at_a_time} == by_key and policy.log == batched_actions
    # one episode per stream in one slot: each new stream's episode 0 follows another stream's episode 0
    policy.log.clear()
    firsts, _ = evaluate(policy, dataclasses.replace(config, episodes=1), num_envs=1)
    assert {r.key: r for r in firsts} == {k: r for k, r in by_key.items() if k[2] == 0}
    assert policy.log.items() <= batched_actions.items()

    res = runner.invoke(app, ["eval", str(tiny_dt_run), "--seeds", "3", "--episodes", "1", "--max-steps", "40",
                              "--bootstrap-reps", "200", "--json"])
    assert res.exit_code == 0, res.output
    (out,) = (tiny_dt_run / "eval").glob("*.json")
    result = json.loads(out.read_text())
    assert result["policy"]["arch"] == "dt-10m" and result["policy"]["step"] == 5
    acting = result["policy"]["acting"]  # the authors' notebook's acting, recorded
    assert acting["mode"] == "sample" and acting["method_default"] is True
    assert acting["dt"] == {"return_samples": 128, "return_inverse_temperature": 0.75, "kappa": 0.0,
                            "action_inverse_temperature": 1.0, "action_top_fraction": 0.5, "greedy_action": False}
    res = runner.invoke(app, ["eval", str(tiny_dt_run), "--seeds", "3", "--episodes", "1", "--max-steps", "40",
                              "--bootstrap-reps", "200", "--acting", "greedy", "--dt-return-samples", "4",
                              "--name", "greedy", "--json"])
    assert res.exit_code == 0, res.output
    acting = json.loads((tiny_dt_run / "eval" / "greedy.json").read_text())["policy"]["acting"]
    assert acting["dt"]["greedy_action"] is True and acting["dt"]["return_samples"] == 4
    assert [len(result["games"][g]["scores"]) for g in ("Pong", "Breakout")] == [1, 1]

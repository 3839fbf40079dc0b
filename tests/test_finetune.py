"""Fine-tuning: the online replay ring, the epsilon schedule, torso/head transfer, the update with frozen
parts, and the `finetune-online` / `finetune-offline` commands on real ALE, real stores and real Orbax runs.

The pre-trained run is made the way a user makes one: `sql collect` (random play on real ALE) ->
`sql shard` -> `sql pretrain` with a tiny DQN torso.
"""


import json
import shutil

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.acting.policies import EpsilonSchedule
from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.data.online_replay import OnlineReplay, ReplayConfig
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game
from sqlcli_core.runs.checkpointer import Checkpointer
from sqlcli_core.runs.policy import load_policy
from sqlcli_core.runs.run_record import read_run
from sqlcli_core.settings import compose
from sqlcli_core.training import transfer
from sqlcli_core.training.configs import LearnerConfig, OnlineConfig
from sqlcli_core.training.finetune_online import grad_steps_due, run_online
from sqlcli_core.training.mesh import batch_sharding, make_mesh, put_batch, replicated
from sqlcli_core.training.update import TrainState, make_optimizer, make_train_step

runner = CliRunner()
PRETRAIN_GAMES = "breakout,pong"


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A Zarr store of random play on real ALE: Breakout and Pong (pre-training) and Alien (held out)."""
    root = tmp_path_factory.mktemp("ft_data")
    raw, store = root / "raw", root / "store"
    r = invoke("collect", "--games", "breakout,pong,alien", "--transitions", 400, "--capacity", 250,
               "--out", raw, "--seed", 1)
    assert r.exit_code == 0, r.output
    r = invoke("shard", raw, store, "--jobs", 1, "--frame-chunk", 64)
    assert r.exit_code == 0, r.output
    return store


@pytest.fixture(scope="module")
def pretrained(data_root, tmp_path_factory):
    """A pre-trained run of `sql pretrain`: tiny DQN torso on Breakout + Pong, 4 gradient steps."""
    run = tmp_path_factory.mktemp("ft_runs") / "pre"
    r = invoke("pretrain", "--data", data_root, "--run-dir", run, "--games", PRETRAIN_GAMES, "--arch", "dqn",
               "--width", 0.25, "--batch-size", 8, "--steps", 4, "--num-atoms", 11, "--checkpoint-every", 2,
               "--log-every", 2, "--cache-bytes", 16 << 20, "--target-update-period", 2)
    assert r.exit_code == 0, r.output
    return run


# ------------------------------------------------------------------------------------------- replay ring


def _fill(replay: OnlineReplay, episode_lengths: list[list[int]], rng) -> list[list[tuple]]:
    """Write episodes into every environment in lockstep; returns each env's full stream of rows.

    A frame's pixels encode (env, stream position) so gathered frames can be traced back.
    """
    E = replay.config.num_envs
    streams = [[] for _ in range(E)]
    left = [list(lengths) for lengths in episode_lengths]
    remaining = [0] * E

    def pad(e):
        replay.start_episodes([e])
        streams[e] += [(np.zeros((84, 84), np.uint8), 0, 0.0, 0)] * 3

    for e in range(E):
        remaining[e] = left[e].pop(0)
        pad(e)
    while all(remaining[e] > 0 for e in range(E)):
        frames = np.zeros((E, 84, 84), np.uint8)
        actions = rng.integers(0, 4, E)
        rewards = rng.uniform(-2, 2, E).round(1)
        terms = np.zeros(E, bool)
        for e in range(E):
            frames[e] = 1 + (len(streams[e]) * 7 + e) % 250
            remaining[e] -= 1
            terms[e] = remaining[e] == 0
        replay.add(frames, actions, rewards, terms)
        for e in range(E):
            streams[e].append((frames[e].copy(), int(actions[e]), float(np.clip(rewards[e], -1, 1)), int(terms[e])))
            if terms[e] and left[e]:
                remaining[e] = left[e].pop(0)
                pad(e)
    return streams


def _naive_valid(stream, i, n, total, capacity):
    """The spec's rule, written out: stack inside the ring and one episode, window written."""
    oldest = max(0, total - capacity)
    if i - 3 < oldest or i + n > total - 1:
        return False
    return not any(stream[k][3] for k in range(i - 3, i))


def _naive_transition(stream, i, n, gamma):
    reward, steps, done = 0.0, n, 0.0
    for k in range(n):
        reward += gamma ** k * stream[i + k][2]
        if stream[i + k][3]:
            steps, done = k + 1, 1.0
            break
    state = np.stack([stream[j][0] for j in range(i - 3, i + 1)])
    nxt = np.stack([stream[j][0] for j in range(i + steps - 3, i + steps + 1)])
    return state, stream[i][1], reward, done, steps, nxt


def test_replay_gathers_and_samples_like_a_naive_rederivation():
    rng = np.random.default_rng(0)
    config = ReplayConfig(capacity=2 * 60, num_envs=2, n_step=3, gamma=0.9)
    replay = OnlineReplay(config, game_id=5, seed=1)
    streams = _fill(replay, [[9, 1, 30, 40, 50], [2, 25, 6, 70, 3]], rng)  # wraps the 60-row rings
    cap = config.rows_per_env
    valid = {(e, i) for e in range(2) for i in range(len(streams[e]))
             if _naive_valid(streams[e], i, 3, len(streams[e]), cap)}
    assert int(replay.add_count[0]) == len(streams[0]) and len(streams[0]) > cap  # the ring wrapped
    # Every candidate position is judged as the naive rule judges it.
    for e in range(2):
        pos = np.arange(len(streams[e]))
        got = replay.is_valid(np.full(pos.shape, e), pos)
        assert {(e, int(i)) for i in pos[got]} == {v for v in valid if v[0] == e}
    # Sampled transitions are valid, cover every valid one, and carry the naive n-step values.
    env, pos = replay.sample_indices(4000)
    drawn = set(zip(env.tolist(), pos.tolist()))
    assert drawn == valid
    counts = np.bincount([sorted(valid).index(d) for d in zip(env.tolist(), pos.tolist())])
    assert counts.min() > 0.4 * counts.mean()  # uniform: ~4000 / |valid| each
    batch = replay.gather(env[:300], pos[:300])
    for b in range(300):
        state, action, reward, done, steps, nxt = _naive_transition(streams[env[b]], pos[b], 3, 0.9)
        np.testing.assert_array_equal(batch.state[b], state)
        np.testing.assert_array_equal(batch.next_state[b], nxt)
        assert (batch.action[b], batch.done[b], batch.steps[b]) == (action, done, steps)
        assert batch.reward[b] == pytest.approx(reward, abs=1e-5)
    assert batch.game.dtype == np.int32 and (batch.game == 5).all()
    assert batch.done.any() and (batch.steps < 3).any()  # terminal windows were exercised


def test_replay_checkpoint_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    config = ReplayConfig(capacity=200, num_envs=2, n_step=3)
    a = OnlineReplay(config, seed=3)
    _fill(a, [[20, 30, 15], [50, 10, 5]], rng)
    b = OnlineReplay(config, seed=99)
    b.load(json.loads(json.dumps(a.state_dict())), a.arrays())
    for x, y in zip(a.sample(64), b.sample(64)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(UsageError, match="other settings"):
        OnlineReplay(ReplayConfig(capacity=200, num_envs=2, n_step=5)).load(a.state_dict(), a.arrays())


def test_replay_refuses_to_sample_before_a_transition_exists():
    replay = OnlineReplay(ReplayConfig(capacity=100, num_envs=1))
    replay.start_episodes([0])
    with pytest.raises(DataError, match="no complete transition"):
        replay.sample(4)


# ------------------------------------------------------------------------------------------- schedule


def test_epsilon_schedule_is_dopamines_linear_decay():
    s = EpsilonSchedule(start=1.0, end=0.01, decay_steps=100, warmup_steps=50)
    assert [s(t) for t in (0, 50, 100, 150, 10_000)] == pytest.approx([1.0, 1.0, 0.505, 0.01, 0.01])
    cfg = OnlineConfig(game="Breakout", min_replay=100, update_period=4)
    assert [grad_steps_due(t, cfg) for t in (0, 100, 103, 104, 500)] == [0, 0, 0, 1, 100]


# ------------------------------------------------------------------------------------------- transfer


@pytest.mark.slow
def test_transfer_keeps_the_torso_and_the_games_own_head(pretrained):
    source = transfer.load_pretrained(pretrained)
    assert [g.name for g in source.games] == ["Breakout", "Pong"]
    policy = load_policy(pretrained)
    obs = np.random.default_rng(0).integers(0, 255, (3, 4, 84, 84), dtype=np.uint8)
    for name, g in (("Pong", 1), ("Breakout", 0)):
        game = Game(name)
        na = transfer.finetune_num_actions(source.network_config, game)
        params, origin = transfer.initial_params(source.network_config, na, 7, init="pretrained",
                                                 pretrained=source, game=game, freeze="none")
        assert origin["head"] == "pretrained"
        from sqlcli_core.runs.policy import make_q_fn

        q = np.asarray(make_q_fn(source.network_config, tuple(na))(params, obs, np.zeros(3, np.int32)))
        np.testing.assert_allclose(q, policy.q_values(obs, np.full(3, g, np.int32))[:, :game.num_actions],
                                   rtol=1e-5, atol=1e-6)
    alien = Game("Alien")
    na = transfer.finetune_num_actions(source.network_config, alien)
    params, origin = transfer.initial_params(source.network_config, na, 7, init="pretrained", pretrained=source,
                                             game=alien, freeze="none")
    scratch, _ = transfer.initial_params(source.network_config, na, 7, init="scratch", pretrained=source,
                                         game=alien, freeze="none")
    assert origin["head"] == "fresh"
    for module in params:
        same_as_source = all(np.array_equal(params[module][k], source.params[module][k]) for k in params[module]) \
            if module in source.params and transfer.part_of(module) != "heads" else False
        assert same_as_source == (transfer.part_of(module) in transfer.SHARED_PARTS)
        if transfer.part_of(module) == "torso":
            assert not np.array_equal(scratch[module]["w"], source.params[module]["w"])


@pytest.mark.slow
def test_update_matches_the_learner_and_freezing_freezes(pretrained):
    source = transfer.load_pretrained(pretrained)
    game = Game("Breakout")
    na = transfer.finetune_num_actions(source.network_config, game)
    cfg = LearnerConfig(learning_rate=1e-3, target_update_period=2)
    mesh = make_mesh(jax.local_devices()[:1])
    rng = np.random.default_rng(0)
    batch = TransitionBatch(np.zeros(8, np.int32), rng.integers(0, 255, (8, 4, 84, 84), dtype=np.uint8),
                            rng.integers(0, 4, 8).astype(np.int32), rng.uniform(-1, 1, 8).astype(np.float32),
                            (rng.random(8) < 0.3).astype(np.float32), np.full(8, 3, np.int32),
                            rng.integers(0, 255, (8, 4, 84, 84), dtype=np.uint8))
    params, _ = transfer.initial_params(source.network_config, na, 0, init="pretrained", pretrained=source,
                                        game=game, freeze="none")

    def fresh_state(opt):
        copy = jax.tree.map(np.array, params)
        return jax.device_put(TrainState(copy, jax.tree.map(np.array, params), opt.init(copy),
                                                 np.int32(0), jax.random.PRNGKey(0)), replicated(mesh))

    dev_batch = put_batch(batch, batch_sharding(mesh))
    reference = make_train_step(source.network_config, na, cfg, mesh)
    ref_state, ref_metrics = reference(fresh_state(make_optimizer(cfg)), dev_batch)
    devices = tuple(mesh.devices.flat)
    opt, ours = transfer.cached_finetune_step(source.network_config, tuple(na), cfg, "none", devices)
    state, metrics = ours(fresh_state(opt), dev_batch)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.params, ref_state.params)

    opt, step = transfer.cached_finetune_step(source.network_config, tuple(na), cfg, "torso", devices)
    state = fresh_state(opt)
    for _ in range(2):
        state, _ = step(state, dev_batch)
    for module in params:
        moved = any(not np.array_equal(state.params[module][k], params[module][k]) for k in params[module])
        assert moved == (transfer.part_of(module) != "torso"), module


# ------------------------------------------------------------------------------------------- online


def _online(steps, **kw):
    base = dict(game="breakout", mode=12, steps=steps, num_envs=2, batch_size=8, min_replay=40,
                replay_capacity=2000, eval_every=100, eval_episodes=1, final_seeds=1, final_episodes=1,
                eval_max_steps=20, checkpoint_every=100, log_every=50, epsilon_decay_steps=100,
                target_update_period=10, update_period=4)
    base.update(kw)
    return compose(OnlineConfig, base)  # flat settings: target_update_period is the nested learner's


def _train_lines(run):
    return [{k: v for k, v in json.loads(line).items() if k != "agent_steps_per_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in line]


@pytest.mark.slow
def test_online_resume_continues_exactly(pretrained, tmp_path):
    """A run stopped at a checkpoint and continued equals one that ran straight through."""
    straight = run_online(_online(200), run_dir=tmp_path / "a", source=pretrained)
    first = run_online(_online(100), run_dir=tmp_path / "b", source=pretrained)
    resumed = run_online(_online(200), run_dir=tmp_path / "b", source=pretrained)
    assert first["agent_steps"] == 100 and resumed["resumed_from"] == 100 and straight["resumed_from"] is None
    assert straight["grad_steps"] == resumed["grad_steps"] == grad_steps_due(200, _online(200)) == 40
    pa, pb = load_policy(tmp_path / "a"), load_policy(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
    assert _train_lines(tmp_path / "a") == _train_lines(tmp_path / "b")
    # The result files: eval schema, curve CSV from the eval lines, run.json loadable by load_policy.
    result = json.loads((tmp_path / "a" / "eval" / "final.json").read_text())
    assert result["policy"]["kind"] == "checkpoint" and result["policy"]["step"] == 40
    assert result["protocol"]["mode"] == 12 and result["games"]["Breakout"]["human_normalized"] is None
    assert set(result["provenance"]) >= {"command", "config", "seed", "versions"}
    curve = (tmp_path / "a" / "learning_curve.csv").read_text().splitlines()
    evals = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert curve[0].startswith("agent_steps,") and [int(r.split(",")[0]) for r in curve[1:]] == [e["step"] for e in evals]
    assert [e["step"] for e in evals] == [100, 200] and evals[-1]["final"]
    assert pa.games == [Game("Breakout")] and pa.step == 200  # checkpoints are numbered by agent steps


@pytest.mark.slow
def test_online_cli_runs_resumes_and_refuses_changed_settings(pretrained, tmp_path):
    run = tmp_path / "cli"
    args = ["finetune-online", "--from", pretrained, "--game", "Breakout", "--run-dir", run, "--steps", 60,
            "--num-envs", 2, "--batch-size", 8, "--min-replay", 40, "--eval-every", 1000, "--final-seeds", 1,
            "--final-episodes", 1, "--eval-max-steps", 10, "--checkpoint-every", 1000, "--init", "scratch",
            "--replay-capacity", 1000, "--json"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["agent_steps"] == 60 and summary["init"] == "scratch" and summary["mode"] is None
    final = json.loads((run / "eval" / "final.json").read_text())
    assert final["games"]["Breakout"]["human_normalized"] == pytest.approx(
        (final["games"]["Breakout"]["mean"] - 1.7) / (30.5 - 1.7))
    r = invoke(*args)  # finished: nothing to redo
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["resumed_from"] == 60
    r = invoke(*[a if a != "scratch" else "pretrained" for a in args])
    assert r.exit_code == 2 and "other settings (init)" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["--game", "Breakot"], "unknown game 'Breakot' (did you mean 'Breakout'?)"),
    (["--game", "Breakout", "--mode", 7], "Breakout has no mode 7 (ALE offers modes [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44])"),
    (["--game", "Pong", "--difficulty", 5], "Pong has no difficulty 5 (ALE offers difficulties [0, 1, 2, 3])"),
    (["--game", "Breakout", "--freeze", "head"], "invalid value for '--freeze': 'head' is not one of 'none', 'torso', 'shared'"),
    (["--game", "Breakout", "--init", "scratch", "--freeze", "torso"], "--freeze torso needs pre-trained parts"),
])
def test_online_bad_input_is_one_line(pretrained, tmp_path, extra, message):
    r = invoke("finetune-online", "--from", pretrained, "--run-dir", tmp_path / "x", *extra)
    assert r.exit_code == 2
    assert f"error: {message}" in r.output.replace("\n", " ")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_checkpoints_without_torso_or_of_another_architecture_are_refused(pretrained, tmp_path):
    # A run.json that declares another architecture than its checkpoint holds.
    other = tmp_path / "other_arch"
    shutil.copytree(pretrained, other)
    record = json.loads((other / "run.json").read_text())
    record["identity"]["network"]["width"] = 0.5
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"does not match its architecture \(torso/"):
        transfer.load_pretrained(other)
    # A run trained with full_action_space by an older sql (18-wide heads on minimal-set actions, unmapped).
    record["identity"]["network"].update(width=0.25, full_action_space=True)
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match="trained with full_action_space"):
        transfer.load_pretrained(other)
    # A checkpoint whose parameters have no torso.
    headless = tmp_path / "no_torso"
    shutil.copytree(pretrained, headless)
    source = transfer.load_pretrained(pretrained)
    identity = read_run(headless)["identity"]
    ckpt = Checkpointer(headless, identity)
    params = {m: v for m, v in source.params.items() if transfer.part_of(m) != "torso"}
    ckpt.save(99, {"params": params}, None, force=True)
    ckpt.close()
    r = invoke("finetune-online", "--from", headless, "--game", "Breakout", "--run-dir", tmp_path / "y")
    assert r.exit_code == 3 and "holds no torso parameters" in r.output
    r = invoke("finetune-online", "--from", tmp_path / "nowhere", "--game", "Breakout", "--run-dir", tmp_path / "y")
    assert r.exit_code == 2 and "does not exist" in r.output  # a missing path is bad input


# ------------------------------------------------------------------------------------------- offline


def test_select_segments_takes_the_chosen_checkpoints_in_stream_order():
    from sqlcli_core.data.slices import select_segments

    meta = {"rows": 1000, "segments": [[0, 600, 0], [600, 1000, 700]],  # 100 stream rows lost before row 600
            "checkpoints": [{"checkpoint": 0, "rows_start": 0, "rows_end": 300},
                            {"checkpoint": 1, "rows_start": 300, "rows_end": 600},
                            {"checkpoint": 3, "rows_start": 600, "rows_end": 1000}]}
    assert select_segments(meta, None, 10_000) == ([[0, 600, 0], [600, 1000, 700]], 1000)
    assert select_segments(meta, {1, 3}, 10_000) == ([[300, 600, 300], [600, 1000, 700]], 700)
    assert select_segments(meta, {0, 3}, 450) == ([[0, 300, 0], [600, 750, 700]], 450)
    assert select_segments(meta, {2}, 450) == ([], 0)


def _offline(data, steps, **kw):
    from sqlcli_core.training.configs import OfflineConfig

    base = dict(game="alien", data=str(data), steps=steps, transitions=300, batch_size=8, checkpoint_every=2,
                log_every=2, final_seeds=1, final_episodes=1, eval_max_steps=20, cache_bytes=16 << 20,
                target_update_period=2)
    base.update(kw)
    return compose(OfflineConfig, base)  # flat settings: target_update_period is the nested learner's


@pytest.mark.slow
def test_offline_trains_on_the_slice_resumes_and_evaluates(pretrained, data_root, tmp_path):
    from sqlcli_core.training.finetune_offline import run_offline

    straight = run_offline(_offline(data_root, 4), run_dir=tmp_path / "a", source=pretrained)
    run_offline(_offline(data_root, 2), run_dir=tmp_path / "b", source=pretrained)
    resumed = run_offline(_offline(data_root, 4), run_dir=tmp_path / "b", source=pretrained)
    assert resumed["resumed_from"] == 2 and straight["grad_steps"] == resumed["grad_steps"] == 4
    pa, pb = load_policy(tmp_path / "a"), load_policy(tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
    run = read_run(tmp_path / "a")
    selection = run["config"]["data_selection"]
    assert selection["rows"] == 300 and sum(r["rows"] for r in selection["runs"]) == 300
    assert run["config"]["origin"]["head"] == "fresh" and pa.games == [Game("Alien")]
    # The pre-trained torso moved (it is trained) but started from the source's.
    source = transfer.load_pretrained(pretrained)
    assert not np.array_equal(pa.params["torso/conv2_d"]["w"], source.params["torso/conv2_d"]["w"])
    result = json.loads((tmp_path / "a" / "eval" / "final.json").read_text())
    alien = result["games"]["Alien"]
    assert alien["human_normalized"] == pytest.approx((alien["mean"] - 227.8) / (7127.7 - 227.8))
    assert result["policy"] == {"kind": "checkpoint", "run": str((tmp_path / "a").absolute()), "step": 4,
                                "arch": "dqn", "num_params": run["num_parameters"]}
    assert "iqm" in result["aggregates"]


@pytest.mark.slow
def test_offline_cli_bad_input(pretrained, data_root, tmp_path):
    base = ["finetune-offline", "--from", pretrained, "--data", data_root, "--run-dir", tmp_path / "x"]
    r = invoke(*base, "--game", "MsPacman")
    assert r.exit_code == 2 and "MsPacman is not in the store" in r.output
    r = invoke(*base, "--game", "Alien", "--checkpoints", "7")
    assert r.exit_code == 2 and "no rows of Alien match" in r.output
    r = invoke(*base, "--game", "Alen")
    assert r.exit_code == 2 and "unknown game 'Alen'" in r.output
    assert not (tmp_path / "x").exists()


def test_finetuning_a_bc_run_transfers_the_shared_parts_and_starts_a_fresh_head():
    """A BC run's head is a policy head (one logit per action): fine-tuning (Scaled QL) keeps only the torso,
    spatial embedding and projection, even for a game the run was trained on."""
    from sqlcli_core.methods import get_method
    from sqlcli_core.networks.config import NetworkConfig

    net = NetworkConfig(arch="dqn", width=0.25, projection_dim=16, num_atoms=11)
    bc = get_method("bc")
    games = [Game("Breakout"), Game("Pong")]
    bc_params = jax.jit(bc.network(net, (4, 6)).init)(jax.random.PRNGKey(3), *bc.init_inputs(net))
    assert bc_params["heads/linear"]["w"].shape == (16, 10)  # one column per action
    source = transfer.Pretrained(run_dir=None, step=1, network_config=net, games=games, num_actions=(4, 6),
                                 params=bc_params, method="bc")
    params, origin = transfer.initial_params(net, (4,), 0, init="pretrained", pretrained=source, game=games[0],
                                             freeze="none")
    assert origin["head"] == "fresh" and origin["from"]["method"] == "bc"
    assert params["heads/linear"]["w"].shape == (16, 4 * 11)  # a C51 head for the Scaled QL update
    for module in params:
        if transfer.part_of(module) in transfer.SHARED_PARTS:
            for k in params[module]:
                np.testing.assert_array_equal(params[module][k], bc_params[module][k])

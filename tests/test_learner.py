"""The learner: data parallelism over devices and processes, target copies, checkpoints, and learning.

Every test uses the same tiny network (DQN CNN at quarter width) and batch of 8, so the in-process tests
share one compiled train step.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.errors import UsageError
from tests import learner_worker as lw

HERE = Path(__file__).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "SQL_COORDINATOR", "JAX_COORDINATOR_ADDRESS")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(npz, prefix: str) -> dict:
    return {k[len(prefix):]: npz[k] for k in npz.files if k.startswith(prefix)}


def _train_on_four_devices(tmp_path_factory, method: str):
    """Train on 4 forced host devices and on 1 device in one subprocess (XLA_FLAGS precede jax import)."""
    out = tmp_path_factory.mktemp("devices") / "out.npz"
    proc = subprocess.run([sys.executable, str(HERE / "learner_worker.py"), "devices", str(out), str(out.parent / "run"),
                           method],
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    return _train_on_four_devices(tmp_path_factory, "scaled-ql")


@pytest.fixture(scope="module")
def four_devices_bc(tmp_path_factory):
    return _train_on_four_devices(tmp_path_factory, "bc")


@pytest.fixture(scope="module")
def four_devices_dt(tmp_path_factory):
    return _train_on_four_devices(tmp_path_factory, "dt")


@pytest.mark.slow
@pytest.mark.parametrize("result", ["four_devices", "four_devices_bc", "four_devices_dt"])
def test_four_devices_match_one_device(result, request):
    four_devices = request.getfixturevalue(result)
    facts = eval(str(four_devices["facts"]))  # written by our own worker
    assert facts["devices"] == 4
    assert facts["shard_rows"] == [2, 2, 2, 2]  # the batch really is split over the 4 devices
    p4, p1 = _params(four_devices, "p4/"), _params(four_devices, "p1/")
    assert set(p4) == set(p1) and len(p4) >= 8
    # The DT's shared position embeddings sum gradients over every token of the batch; where that sum is
    # near zero, Adam's normalisation turns float32 reduction-order differences into ~1e-6 (dropout masks
    # differ not at all: a different mask would move every parameter by ~lr = 1e-2).
    atol = 1e-5 if result == "four_devices_dt" else 1e-6
    for name in p1:
        np.testing.assert_allclose(p4[name], p1[name], rtol=1e-5, atol=atol, err_msg=name)
    np.testing.assert_allclose(four_devices["losses4"], four_devices["losses1"], rtol=1e-5)
    # training moved the parameters (a no-op step would also "match")
    assert four_devices["losses1"][0] != four_devices["losses1"][-1]


def test_checkpoint_from_four_devices_restores_on_one(four_devices, setup):
    import jax

    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.run_record import run_identity
    from sqlcli_core.training.update import abstract_train_state

    net, cfg, mesh, _ = setup
    run = Path(four_devices.fid.name).parent / "run"
    identity = run_identity(net.to_dict(), ["Breakout", "Pong"], lw.NUM_ACTIONS)
    state, meta = Checkpointer(run, identity).restore(abstract_train_state(net, lw.NUM_ACTIONS, cfg, mesh))
    assert meta["step"] == lw.STEPS and meta["sampler_states"] == [{"position": 7}]
    assert int(state.step) == lw.STEPS
    assert state.params["projection"]["w"].sharding.mesh.devices.size == 1
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}
    p4 = _params(four_devices, "p4/")
    for name in p4:
        np.testing.assert_array_equal(flat[name], p4[name], err_msg=name)


def test_batch_that_does_not_divide_over_devices_is_a_usage_error(four_devices):
    facts = eval(str(four_devices["facts"]))
    assert facts["indivisible_error"].startswith("UsageError: batch size 6 does not divide over 4 devices")


@pytest.mark.slow
def test_two_processes_train_in_lockstep(four_devices, tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(HERE / "learner_worker.py"), "distributed",
                               str(tmp_path / f"p{i}.npz"), coordinator, "2", str(i)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    r0, r1 = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert eval(str(r0["facts"])) == {"processes": 2, "devices": 2}
    a, b = _params(r0, "p/"), _params(r1, "p/")
    reference = _params(four_devices, "p1/")  # one process, one device, the whole batch
    for name in reference:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # replicas agree bit for bit
        np.testing.assert_allclose(a[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_init_distributed_needs_all_three_settings(monkeypatch):
    from sqlcli_core.training.mesh import init_distributed

    for name in ("SQL_COORDINATOR", "SQL_NUM_PROCESSES", "SQL_PROCESS_ID", "JAX_COORDINATOR_ADDRESS",
                 "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed() is False  # nothing set: a single-process run
    monkeypatch.setenv("SQL_NUM_PROCESSES", "2")
    with pytest.raises(UsageError, match="coordinator"):
        init_distributed()
    with pytest.raises(UsageError, match="outside"):
        init_distributed("127.0.0.1:1", 2, 5)


# ---------------------------------------------------------------------------------------------------------
# In-process: one device, one compiled step shared by the tests below


@pytest.fixture(scope="module")
def setup():
    import jax

    from sqlcli_core.training.mesh import make_mesh
    from sqlcli_core.training.update import make_train_step

    net, cfg = lw.tiny_network(), lw.tiny_learner()
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(net, lw.NUM_ACTIONS, cfg, mesh)
    return net, cfg, mesh, step


def _tree_equal(a, b) -> bool:
    import jax

    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))))


def test_target_network_is_a_hard_copy_every_period(setup):
    import jax

    from sqlcli_core.training.mesh import batch_sharding, put_batch
    from sqlcli_core.training.update import init_train_state

    net, cfg, mesh, step = setup
    state = init_train_state(net, lw.NUM_ACTIONS, cfg, 3, mesh)
    initial = jax.device_get(state.params)
    assert _tree_equal(state.target_params, initial)
    sharding = batch_sharding(mesh)
    for i in range(1, cfg.target_update_period + 1):
        state, _ = step(state, put_batch(lw.random_batch(i), sharding))
        assert int(state.step) == i
        if i < cfg.target_update_period:
            assert _tree_equal(state.target_params, initial), f"target moved at step {i}"
            assert not _tree_equal(state.params, initial)
    assert _tree_equal(state.target_params, state.params)


# A tiny offline problem with known values, rendered into 84x84 frames.
# Game 0: a chain of 4 states; action 0 moves right (reward 1 when leaving the last state, terminal),
# action 1 quits (reward -0.5, terminal), action 2 never appears in the data. Game 1: a chain of 2 with
# the two actions swapped. The behaviour policy moves right with probability 0.3.
CHAINS = ((4, 0, 1, 2), (2, 1, 0, None))  # (length, right, quit, unseen)
QUIT_REWARD, GOAL_REWARD, P_RIGHT = -0.5, 1.0, 0.3
MDP_STEPS = 800


def _frame(game: int, pos: int | None) -> np.ndarray:
    frame = np.zeros((4, 84, 84), np.uint8)
    if pos is not None:
        frame[:, 10 + 40 * game: 30 + 40 * game, 4 + 16 * pos: 16 + 16 * pos] = 255
    return frame


def _mdp_batch(rng: np.random.Generator, size: int) -> TransitionBatch:
    game = rng.integers(0, 2, size).astype(np.int32)
    rows = []
    for g in game:
        length, right, quit_, _ = CHAINS[g]
        pos = int(rng.integers(0, length))
        go = rng.random() < P_RIGHT
        if go:
            last = pos == length - 1
            rows.append((right, GOAL_REWARD if last else 0.0, float(last), _frame(g, pos), _frame(g, None if last else pos + 1)))
        else:
            rows.append((quit_, QUIT_REWARD, 1.0, _frame(g, pos), _frame(g, None)))
    action, reward, done, state, next_state = zip(*rows)
    return TransitionBatch(game, np.stack(state), np.array(action, np.int32), np.array(reward, np.float32),
                           np.array(done, np.float32), np.ones(size, np.int32), np.stack(next_state))


def _true_values(gamma: float):
    """Q* of right/quit, and the behaviour policy's state values, per game and position (numpy DP)."""
    q_right, v_behaviour = [], []
    for length, *_ in CHAINS:
        qr = np.array([gamma ** (length - 1 - i) * GOAL_REWARD for i in range(length)])
        vb = np.zeros(length + 1)  # vb[length] unused: leaving the end is the goal
        for i in reversed(range(length)):
            ahead = GOAL_REWARD if i == length - 1 else gamma * vb[i + 1]
            vb[i] = P_RIGHT * ahead + (1 - P_RIGHT) * QUIT_REWARD
        q_right.append(qr)
        v_behaviour.append(vb[:length])
    return q_right, v_behaviour


@pytest.mark.slow
def test_learns_known_values_and_cql_keeps_unseen_actions_low(setup, tmp_path):
    import jax

    from sqlcli_core.networks.network import build_network
    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.policy import load_policy
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity
    from sqlcli_core.training.mesh import batch_sharding, put_batch
    from sqlcli_core.training.update import init_train_state

    net, cfg, mesh, step = setup
    state = init_train_state(net, lw.NUM_ACTIONS, cfg, 0, mesh)
    sharding = batch_sharding(mesh)
    rng = np.random.default_rng(0)
    for _ in range(MDP_STEPS):
        state, metrics = step(state, put_batch(_mdp_batch(rng, lw.BATCH), sharding))
    assert np.isfinite(float(metrics["loss"]))

    # Through the run directory and load_policy, as `eval` will see it.
    identity = run_identity(net.to_dict(), ["Breakout", "Pong"], lw.NUM_ACTIONS)
    prepare_run_dir(tmp_path, identity=identity, config={"test": True}, parameter_counts={"torso": 1}, seed=0)
    ckpt = Checkpointer(tmp_path, identity, every=1)
    ckpt.save(MDP_STEPS, state, {"position": 1})
    ckpt.close()
    policy = load_policy(tmp_path)
    assert policy.step == MDP_STEPS and [g.name for g in policy.games] == ["Breakout", "Pong"]

    q_right_true, v_behaviour = _true_values(cfg.gamma)
    for g, (length, right, quit_, unseen) in enumerate(CHAINS):
        obs = np.stack([_frame(g, i) for i in range(length)])
        q = policy.q_values(obs, np.full(length, g, np.int32))
        assert q.shape == (length, 3)
        if unseen is None:
            assert np.all(q[:, 2] == -np.inf)  # game 1 has 2 actions: the padded one can never win
        greedy = np.argmax(q, axis=1)
        assert np.all(greedy == right), f"game {g}: greedy {greedy}, Q {q}"
        # The greedy policy (always right) earns the optimal return, more than the behaviour policy.
        greedy_value = q_right_true[g][0]
        assert greedy_value > v_behaviour[g][0] + 0.3
        np.testing.assert_allclose(q[:, right], q_right_true[g], atol=0.2, err_msg=f"game {g} Q(right)")
        np.testing.assert_allclose(q[:, quit_], QUIT_REWARD, atol=0.2, err_msg=f"game {g} Q(quit)")
        if unseen is not None:
            assert np.all(q[:, unseen] < np.minimum(q[:, right], q[:, quit_])), f"unseen action not held down: {q}"

    # load_policy's values are the network's expected returns (numpy re-derivation from the logits)
    network = build_network(net, lw.NUM_ACTIONS)
    obs = np.stack([_frame(0, i) for i in range(4)])
    logits = np.asarray(network.apply(jax.device_get(state.params), obs, np.zeros(4, np.int32)).logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(policy.q_values(obs, np.zeros(4, np.int32)), probs @ net.support(), rtol=1e-4, atol=1e-5)


def test_checkpoint_of_another_run_is_refused(setup, tmp_path):
    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity
    from sqlcli_core.training.update import TrainState, abstract_train_state, init_train_state

    net, cfg, mesh, _ = setup
    state = init_train_state(net, lw.NUM_ACTIONS, cfg, 0, mesh)
    identity = run_identity(net.to_dict(), ["Breakout", "Pong"], lw.NUM_ACTIONS)
    ckpt = Checkpointer(tmp_path, identity, every=5)
    assert not ckpt.save(3, state, None)  # not a multiple of 5
    assert ckpt.save(5, state, {"a": 1})
    ckpt.close()

    wider = dict(identity, network=dict(identity["network"], width=0.5))
    with pytest.raises(UsageError, match="different run.*width"):
        Checkpointer(tmp_path, wider).restore(abstract_train_state(net, lw.NUM_ACTIONS, cfg, mesh))
    other_games = dict(identity, games=["Breakout", "Qbert"])
    with pytest.raises(UsageError, match="different run.*games"):
        Checkpointer(tmp_path, other_games).restore(abstract_train_state(net, lw.NUM_ACTIONS, cfg, mesh))
    restored, meta = Checkpointer(tmp_path, identity).restore(
        abstract_train_state(net, lw.NUM_ACTIONS, cfg, mesh))
    assert meta["sampler_states"] == [{"a": 1}] and meta["step"] == 5
    assert _tree_equal(TrainState(*restored), state)

    prepare_run_dir(tmp_path, identity=identity, config={}, parameter_counts={}, seed=0)
    with pytest.raises(UsageError, match="holds a different run"):
        prepare_run_dir(tmp_path, identity=other_games, config={}, parameter_counts={}, seed=0)


def test_bf16_compute_keeps_float32_master_weights(setup):
    import dataclasses

    import jax

    from sqlcli_core.training.mesh import batch_sharding, put_batch
    from sqlcli_core.training.update import init_train_state, make_train_step

    net, cfg, mesh, step32 = setup
    net16 = dataclasses.replace(net, compute_dtype="bfloat16")
    step16 = make_train_step(net16, lw.NUM_ACTIONS, cfg, mesh)
    batch = put_batch(lw.random_batch(7), batch_sharding(mesh))
    s32, m32 = step32(init_train_state(net, lw.NUM_ACTIONS, cfg, 1, mesh), batch)
    s16, m16 = step16(init_train_state(net16, lw.NUM_ACTIONS, cfg, 1, mesh), batch)
    assert {x.dtype for x in jax.tree.leaves(s16.params)} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(s16.opt_state)} <= {np.dtype("float32"), np.dtype("int32")}
    # same initial weights, same batch: the losses agree to bfloat16 precision
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 0.02 * abs(float(m32["loss"]))


# ---------------------------------------------------------------------------------------------------------
# Behaviour cloning and run identities


def _deterministic_behaviour(g: int, pos: int) -> int:
    """The behaviour policy that wrote the BC data: a fixed action per (game, position)."""
    return (pos + 2 * g) % lw.NUM_ACTIONS[g]


@pytest.mark.slow
def test_bc_reproduces_a_deterministic_behaviour(tmp_path):
    import jax

    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.policy import load_policy
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity
    from sqlcli_core.training.mesh import batch_sharding, make_mesh, put_batch
    from sqlcli_core.training.update import init_train_state, make_train_step

    net, cfg = lw.tiny_network(), lw.tiny_learner("bc")
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(net, lw.NUM_ACTIONS, cfg, mesh)
    state = init_train_state(net, lw.NUM_ACTIONS, cfg, 0, mesh)
    assert state.target_params == {}  # no target network to copy or to checkpoint
    rng = np.random.default_rng(0)
    sharding = batch_sharding(mesh)
    lengths = (4, 2)
    for _ in range(150):
        game = rng.integers(0, 2, lw.BATCH).astype(np.int32)
        pos = np.array([rng.integers(0, lengths[g]) for g in game])
        action = np.array([_deterministic_behaviour(g, p) for g, p in zip(game, pos)], np.int32)
        frames = np.stack([_frame(g, p) for g, p in zip(game, pos)])
        noise = rng.uniform(-1, 1, lw.BATCH).astype(np.float32)  # rewards and next states are never read
        batch = TransitionBatch(game, frames, action, noise, np.zeros(lw.BATCH, np.float32),
                                np.ones(lw.BATCH, np.int32), frames[::-1].copy())
        state, metrics = step(state, put_batch(batch, sharding))
    assert float(metrics["accuracy"]) == 1.0 and float(metrics["ce_loss"]) < 0.1

    identity = run_identity(net.to_dict(), ["Breakout", "Pong"], lw.NUM_ACTIONS, "bc")
    prepare_run_dir(tmp_path, identity=identity, config={}, parameter_counts={"torso": 1}, seed=0)
    ckpt = Checkpointer(tmp_path, identity, every=1)
    ckpt.save(150, state, None)
    ckpt.close()
    policy = load_policy(tmp_path)
    assert policy.method == "bc"
    for g, length in enumerate(lengths):
        obs = np.stack([_frame(g, p) for p in range(length)])
        values = policy.q_values(obs, np.full(length, g, np.int32))
        assert np.all(np.isneginf(values[:, lw.NUM_ACTIONS[g]:]))  # only the game's own actions can be chosen
        greedy = np.argmax(values, axis=1)
        np.testing.assert_array_equal(greedy, [_deterministic_behaviour(g, p) for p in range(length)])
    # a scaled-ql run of the same network is another run
    with pytest.raises(UsageError, match="different run.*method bc vs scaled-ql"):
        prepare_run_dir(tmp_path, identity=dict(identity, method="scaled-ql"), config={},
                                   parameter_counts={}, seed=0)


def test_identity_compares_known_keys_and_new_keys_at_their_default(tmp_path):
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity

    net = lw.tiny_network()
    current = run_identity(net.to_dict(), ["Breakout", "Pong"], lw.NUM_ACTIONS)
    # A run written before `normalize_features` (say) existed, and before methods were recorded.
    older = {"network": {k: v for k, v in net.to_dict().items() if k != "normalize_features"},
             "games": ["Breakout", "Pong"], "num_actions": list(lw.NUM_ACTIONS)}
    prepare_run_dir(tmp_path, identity=older, config={}, parameter_counts={}, seed=0)
    prepare_run_dir(tmp_path, identity=current, config={}, parameter_counts={}, seed=0)  # resumes
    changed = dict(current, network=dict(current["network"], normalize_features=False))
    (tmp_path / "run.json").unlink()
    prepare_run_dir(tmp_path, identity=older, config={}, parameter_counts={}, seed=0)
    with pytest.raises(UsageError, match="network normalize_features True vs False"):
        prepare_run_dir(tmp_path, identity=changed, config={}, parameter_counts={}, seed=0)


def test_dt_step_trains_with_dropout_drawn_from_the_step_key():
    """One DT update equals Adam on the gradient of the DT loss with the key fold_in(run key, step)."""
    import jax
    import optax

    from sqlcli_core.methods import decision_transformer as mdt
    from sqlcli_core.networks import decision_transformer as dt
    from sqlcli_core.training.mesh import batch_sharding, make_mesh, put_batch
    from sqlcli_core.training.update import init_train_state, make_train_step

    net, num_actions = lw.tiny_setup("dt")
    cfg = lw.tiny_learner("dt")
    mesh = make_mesh(jax.devices()[:1])
    state = init_train_state(net, num_actions, cfg, 0, mesh, lw.GAMES)
    params, rng = jax.device_get(state.params), jax.device_get(state.rng)
    batch = lw.random_sequences(7)
    model = dt.build_decision_transformer(net, dt.action_sets_for(lw.GAMES, num_actions))
    loss_fn = mdt.make_loss_fn(model.apply, net, num_games=2)
    (want_loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.fold_in(rng, 0))
    eval_loss, _ = loss_fn(params, batch, None)
    updates, _ = optax.adam(cfg.learning_rate, eps=cfg.adam_eps).update(grads, optax.adam(
        cfg.learning_rate, eps=cfg.adam_eps).init(params), params)
    want = optax.apply_updates(params, updates)

    step = make_train_step(net, num_actions, cfg, mesh, games=lw.GAMES)
    new, metrics = step(state, put_batch(batch, batch_sharding(mesh)))
    assert float(metrics["loss"]) == pytest.approx(float(want_loss), rel=1e-6)
    assert abs(float(want_loss) - float(eval_loss)) > 1e-4  # dropout was on
    assert new.target_params == {}  # no target network
    got = jax.device_get(new.params)
    for module in want:
        for name in want[module]:
            # Adam's first step is about lr * sign(g) = 1e-2 per weight; where |g| ~ eps, jit's other float32
            # reduction order shows as ~1e-6 (another dropout key would differ by ~1e-2 almost everywhere)
            np.testing.assert_allclose(got[module][name], want[module][name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{module}/{name}")
    with pytest.raises(UsageError, match="needs the games"):
        make_train_step(net, num_actions, cfg, mesh)

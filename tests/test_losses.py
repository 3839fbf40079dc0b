"""The Scaled QL loss against a straightforward numpy derivation on hand-made cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.methods.losses import projected_target, scaled_ql_loss
from sqlcli_core.methods.scaled_ql import make_loss_fn
from sqlcli_core.networks.config import NetworkConfig
from sqlcli_core.networks.network import action_mask, build_network

SUPPORT = np.linspace(-2.0, 2.0, 5).astype(np.float32)  # 5 atoms, spacing 1: easy to reason about
NUM_ACTIONS = (2, 4, 3)  # G = 3 games, A_max = 4


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_project(probs, reward, discount, support):
    """C51 projection written as in Bellemare et al. (2017), Algorithm 1, one sample at a time."""
    v_min, v_max = support[0], support[-1]
    dz = support[1] - support[0]
    out = np.zeros_like(support, dtype=np.float64)
    for p, z in zip(probs, support):
        tz = np.clip(reward + discount * z, v_min, v_max)
        b = min(max((tz - v_min) / dz, 0.0), len(support) - 1.0)
        lo, hi = int(np.floor(b + 1e-9)), int(np.ceil(b - 1e-9))
        if lo == hi:
            out[lo] += p
        else:
            out[lo] += p * (hi - b)
            out[hi] += p * (b - lo)
    return out


def np_loss(logits, next_logits, action, reward, discount, game, mask, support, alpha):
    """Per-sample td, cql, target and Q, by loops over samples."""
    tds, cqls, targets, qs = [], [], [], []
    for b in range(len(action)):
        real = np.flatnonzero(mask[game[b]])
        next_p = np_softmax(next_logits[b, real].astype(np.float64))
        greedy = real[np.argmax(next_p @ support)]
        target = np_project(np_softmax(next_logits[b, greedy].astype(np.float64)), reward[b], discount[b], support)
        logp = np.log(np_softmax(logits[b, action[b]].astype(np.float64)))
        q = np_softmax(logits[b].astype(np.float64)) @ support
        lse = np.log(np.sum(np.exp(q[real])))
        tds.append(-(target * logp).sum())
        cqls.append(lse - q[action[b]])
        targets.append(target)
        qs.append(q)
    tds, cqls = np.array(tds), np.array(cqls)
    return np.mean(tds + alpha * cqls), tds, cqls, np.array(targets), np.array(qs)


def make_case(seed=0, batch=6):
    rng = np.random.default_rng(seed)
    game = np.array([0, 1, 2, 1, 0, 1][:batch], np.int32)
    mask = action_mask(NUM_ACTIONS)
    action = np.array([rng.integers(NUM_ACTIONS[g]) for g in game], np.int32)
    logits = rng.normal(size=(batch, 4, 5)).astype(np.float32) * 2
    next_logits = rng.normal(size=(batch, 4, 5)).astype(np.float32) * 2
    reward = np.array([0.3, -1.0, 1.7, 0.0, 2.5, -0.45][:batch], np.float32)  # 1.7, 2.5: clipped at v_max
    discount = np.array([0.99**3, 0.0, 0.5, 0.99, 0.99**2, 0.8][:batch], np.float32)  # one terminal
    return logits, next_logits, action, reward, discount, game, mask


def test_projection_matches_numpy_c51():
    logits, next_logits, action, reward, discount, game, mask = make_case()
    ours = np.asarray(projected_target(next_logits, reward, discount, mask[game], SUPPORT))
    *_, targets, _ = np_loss(logits, next_logits, action, reward, discount, game, mask, SUPPORT, 0.0)
    np.testing.assert_allclose(ours, targets, atol=1e-6)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-6)
    # terminal, reward -1.0 on a spacing-1 support: all mass on the atom -1.0 (index 1)
    np.testing.assert_allclose(ours[1], [0, 1, 0, 0, 0], atol=1e-6)


def test_loss_and_aux_match_numpy():
    case = make_case()
    logits, next_logits, action, reward, discount, game, mask = case
    alpha = 0.3
    loss, aux = scaled_ql_loss(*case, SUPPORT, alpha)
    ref, tds, cqls, _, qs = np_loss(*case, SUPPORT, alpha)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    np.testing.assert_allclose(float(aux["td_loss"]), tds.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["cql_loss"]), cqls.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["q_data"]), qs[np.arange(6), action].mean(), rtol=1e-5, atol=1e-6)
    others = [qs[b, a] for b in range(6) for a in range(NUM_ACTIONS[game[b]]) if a != action[b]]
    np.testing.assert_allclose(float(aux["q_other"]), np.mean(others), rtol=1e-5, atol=1e-6)
    per_game = [tds[game == g].mean() for g in range(3)]
    np.testing.assert_allclose(np.asarray(aux["per_game_td_loss"]), per_game, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["per_game_count"]), [2, 3, 1])


def test_per_game_td_is_zero_for_absent_games():
    logits, next_logits, action, reward, discount, game, mask = make_case()
    game = np.array([0, 0, 2, 0, 0, 2], np.int32)
    action = np.minimum(action, 1)
    _, aux = scaled_ql_loss(logits, next_logits, action, reward, discount, game, mask, SUPPORT, 0.1)
    assert float(aux["per_game_td_loss"][1]) == 0.0
    assert float(aux["per_game_count"][1]) == 0.0


def test_gradient_wrt_logits_matches_numpy_derivation():
    logits, next_logits, action, reward, discount, game, mask = make_case()
    alpha, batch = 0.7, len(action)

    def f(lg, nlg):
        return scaled_ql_loss(lg, nlg, action, reward, discount, game, mask, SUPPORT, alpha)[0]

    grad, next_grad = jax.grad(f, argnums=(0, 1))(logits, next_logits)
    _, _, _, targets, qs = np_loss(logits, next_logits, action, reward, discount, game, mask, SUPPORT, alpha)
    expected = np.zeros_like(logits, dtype=np.float64)
    for b in range(batch):
        p = np_softmax(logits[b].astype(np.float64))  # (A, K)
        # cross-entropy: d/dlogits = softmax - target, on the data action only
        expected[b, action[b]] += p[action[b]] - targets[b]
        # cql: d lse/dQ_a = softmax over the game's Q; dQ_a/dlogit_aj = p_aj (z_j - Q_a)
        real = np.flatnonzero(mask[game[b]])
        w = np.zeros(4)
        w[real] = np_softmax(qs[b, real])
        w[action[b]] -= 1.0
        expected[b] += alpha * w[:, None] * p * (SUPPORT[None, :] - qs[b][:, None])
    np.testing.assert_allclose(np.asarray(grad), expected / batch, atol=1e-6)
    assert np.all(np.asarray(next_grad) == 0.0)  # the target is a constant


def test_padded_actions_never_matter():
    case = list(make_case())
    logits, next_logits, action, reward, discount, game, mask = case
    loss, aux = scaled_ql_loss(*case, SUPPORT, 0.5)
    padded = ~mask[game]  # (B, A)
    # huge logits on padded actions: an all-mass-at-v_max distribution would win the argmax and the lse
    spike = np.zeros(5, np.float32)
    spike[-1] = 50.0
    logits2 = np.where(padded[:, :, None], spike, logits).astype(np.float32)
    next2 = np.where(padded[:, :, None], spike, next_logits).astype(np.float32)
    loss2, aux2 = scaled_ql_loss(logits2, next2, *case[2:], SUPPORT, 0.5)
    assert float(loss2) == pytest.approx(float(loss), abs=1e-6)
    for key in aux:
        np.testing.assert_allclose(np.asarray(aux2[key]), np.asarray(aux[key]), atol=1e-6)
    grad = jax.grad(lambda lg: scaled_ql_loss(lg, next2, *case[2:], SUPPORT, 0.5)[0])(logits2)
    assert np.all(np.asarray(grad)[padded] == 0.0)


def test_make_loss_fn_on_a_real_network_matches_numpy():
    na = (3, 6)
    config = NetworkConfig(arch="dqn", width=0.25, projection_dim=16, num_atoms=11, v_min=-3, v_max=3)
    net = build_network(config, na)
    rng = np.random.default_rng(1)
    b = 5
    game = np.array([0, 1, 1, 0, 1], np.int32)
    batch = TransitionBatch(
        game=game, state=rng.integers(0, 256, (b, 4, 84, 84), dtype=np.uint8),
        action=np.array([2, 5, 0, 1, 3], np.int32), reward=np.array([0, 1, -1, 0.5, 2.9], np.float32),
        done=np.array([0, 0, 1, 0, 0], np.float32), steps=np.array([3, 3, 2, 3, 1], np.int32),
        next_state=rng.integers(0, 256, (b, 4, 84, 84), dtype=np.uint8))
    init = jax.jit(net.init)
    params = init(jax.random.PRNGKey(0), batch.state, batch.game)
    target_params = init(jax.random.PRNGKey(1), batch.state, batch.game)
    loss_fn = make_loss_fn(net.apply, action_mask(na), config.support(), 0.99, 0.05)
    loss, _ = jax.jit(loss_fn)(params, target_params, jax.tree_util.tree_map(jnp.asarray, batch))
    apply = jax.jit(net.apply)
    logits = np.asarray(apply(params, batch.state, batch.game).logits)
    next_logits = np.asarray(apply(target_params, batch.next_state, batch.game).logits)
    ref, *_ = np_loss(logits, next_logits, batch.action, batch.reward, batch.discount(0.99), game,
                      action_mask(na), config.support(), 0.05)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


@pytest.mark.parametrize("support", [SUPPORT, np.array([-3.0, -1.0, 0.0, 0.5, 4.0], np.float32)])
def test_our_categorical_projection_equals_rlax(support):
    """Our ~20-line projection against rlax's (rlax is a test-only dependency): uneven supports included."""
    rlax = pytest.importorskip("rlax")
    from sqlcli_core.methods.losses import categorical_l2_project

    rng = np.random.default_rng(5)
    for _ in range(20):
        z_p = rng.uniform(-6, 6, 5).astype(np.float32)  # some atoms fall outside the support: clipped
        probs = np_softmax(rng.normal(size=5)).astype(np.float32)
        ours = np.asarray(categorical_l2_project(z_p, probs, support))
        np.testing.assert_array_equal(ours, np.asarray(rlax.categorical_l2_project(z_p, probs, support)))
        np.testing.assert_allclose(ours.sum(), 1.0, atol=1e-6)
    # and against Algorithm 1 of Bellemare et al. on the even support
    z = SUPPORT
    probs = np_softmax(rng.normal(size=5))
    ours = np.asarray(categorical_l2_project(jnp.asarray(0.9 * z + 0.3, jnp.float32), jnp.asarray(probs, jnp.float32),
                                             jnp.asarray(z)))
    np.testing.assert_allclose(ours, np_project(probs, 0.3, 0.9, z), atol=1e-6)


def test_importing_the_library_never_imports_tensorflow_probability():
    """rlax pulls in tensorflow_probability (through distrax); the library must not need either."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys\n"
        "import sqlcli_core\n"
        "for m in pkgutil.walk_packages(sqlcli_core.__path__, 'sqlcli_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow_probability', 'rlax', 'distrax'))\n"
        "print(len([k for k in sys.modules if k.startswith('sqlcli_core.')]), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, bad = out.stdout.strip().split(" ", 1)
    assert int(count) > 30 and bad == "[]", out.stdout


def np_bc(logits, action, game, mask):
    """Per-sample cross-entropy, greedy hit and entropy over each game's own actions, by loops."""
    ces, hits, ents = [], [], []
    for b in range(len(action)):
        real = np.flatnonzero(mask[game[b]])
        p = np_softmax(logits[b, real].astype(np.float64))
        ces.append(-np.log(p[list(real).index(action[b])]))
        hits.append(real[np.argmax(p)] == action[b])
        ents.append(-(p * np.log(p)).sum())
    return np.array(ces), np.array(hits, float), np.array(ents)


def test_behaviour_cloning_loss_matches_numpy_and_ignores_padded_actions():
    from sqlcli_core.methods.losses import behaviour_cloning_loss

    _, _, action, _, _, game, mask = make_case()
    logits = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32) * 2
    loss, aux = behaviour_cloning_loss(logits, action, game, mask)
    ces, hits, ents = np_bc(logits, action, game, mask)
    np.testing.assert_allclose(float(loss), ces.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["ce_loss"]), ces.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["accuracy"]), hits.mean())
    np.testing.assert_allclose(float(aux["entropy"]), ents.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["per_game_ce_loss"]), [ces[game == g].mean() for g in range(3)], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["per_game_count"]), [2, 3, 1])
    # gradient: softmax over the game's actions minus the one-hot data action, / B; zero on padded actions
    grad = np.asarray(jax.grad(lambda lg: behaviour_cloning_loss(lg, action, game, mask)[0])(logits))
    for b in range(6):
        real = np.flatnonzero(mask[game[b]])
        expected = np.zeros(4)
        expected[real] = np_softmax(logits[b, real].astype(np.float64))
        expected[action[b]] -= 1.0
        np.testing.assert_allclose(grad[b], expected / 6, atol=1e-6)
    spiked = np.where(mask[game], logits, 50.0).astype(np.float32)  # huge logits on padded actions
    loss2, _ = behaviour_cloning_loss(spiked, action, game, mask)
    assert float(loss2) == pytest.approx(float(loss), abs=1e-6)


def test_c51_method_is_scaled_ql_without_cql():
    from sqlcli_core.methods import LossSetup, get_method
    from sqlcli_core.training.configs import LearnerConfig

    na = (3, 6)
    config = NetworkConfig(arch="dqn", width=0.25, projection_dim=16, num_atoms=11, v_min=-3, v_max=3)
    rng = np.random.default_rng(4)
    batch = TransitionBatch(
        game=np.array([0, 1, 1, 0], np.int32), state=rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8),
        action=np.array([2, 5, 0, 1], np.int32), reward=np.array([0, 1, -1, 0.5], np.float32),
        done=np.array([0, 0, 1, 0], np.float32), steps=np.array([3, 3, 2, 3], np.int32),
        next_state=rng.integers(0, 256, (4, 4, 84, 84), dtype=np.uint8))
    losses_by_method = {}
    for name, alpha in (("c51", 0.7), ("scaled-ql", 0.0)):
        method = get_method(name)
        net = method.network(config, na)
        params = jax.jit(net.init)(jax.random.PRNGKey(0), batch.state, batch.game)
        loss_fn = method.make_loss(LossSetup(net, action_mask(na), config, LearnerConfig(method=name, alpha=alpha)))
        losses_by_method[name] = jax.jit(loss_fn)(params, params, batch)
    (l_c51, aux_c51), (l_sql, aux_sql) = losses_by_method["c51"], losses_by_method["scaled-ql"]
    assert float(l_c51) == float(l_sql) == pytest.approx(float(aux_sql["td_loss"]))  # alpha is not read by c51
    assert set(get_method("c51").metrics) <= set(aux_c51) and "cql_loss" not in get_method("c51").metrics

"""The network family: counts against hand arithmetic and published figures, the neck against numpy,
head isolation, action masking and bfloat16 numerics. Tiny widths; big models only through eval_shape."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.methods.losses import scaled_ql_loss
from sqlcli_core.networks.config import NetworkConfig
from sqlcli_core.networks.heads import SpatialEmbedding, head_offsets, l2_normalize
from sqlcli_core.networks.network import (
    abstract_params,
    action_mask,
    build_network,
    count_parameters,
    parameter_table,
    shared_features,
)

NUM_ACTIONS = (3, 6, 4)
TINY_DQN = NetworkConfig(arch="dqn", width=0.25, projection_dim=32, num_atoms=7, spatial_embedding_features=2)


def obs_batch(b, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (b, 4, 84, 84), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_dqn():
    net = build_network(TINY_DQN, NUM_ACTIONS)
    obs = obs_batch(6)
    game = np.array([0, 1, 2, 1, 0, 2], np.int32)
    params = jax.jit(net.init)(jax.random.PRNGKey(0), obs, game)
    return net._replace(apply=jax.jit(net.apply)), params, obs, game


def test_action_mask_by_hand():
    np.testing.assert_array_equal(action_mask((2, 4, 1)), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    with pytest.raises(UsageError):
        action_mask((3, 0))


def test_dqn_counts_by_hand_arithmetic():
    counts = count_parameters(abstract_params(NetworkConfig(arch="dqn"), (4, 18)))
    conv1 = 8 * 8 * 4 * 32 + 32
    conv2 = 4 * 4 * 32 * 64 + 64
    conv3 = 3 * 3 * 64 * 64 + 64
    assert counts["torso"] == conv1 + conv2 + conv3 == 77_984
    assert counts["spatial_embedding"] == 7 * 7 * 64 * 8  # VALID convs: 84 -> 20 -> 9 -> 7
    assert counts["projection"] == 64 * 8 * 1024 + 1024
    assert counts["heads"] == (1024 + 1) * (4 + 18) * 51


# Standard torchvision ImageNet models (3-channel input, BN) minus the 1000-way classifier:
# resnet18 11,689,512 - 513,000; resnet34 21,797,672 - 513,000; resnet50 25,557,032 - 2,049,000;
# resnet101 44,549,160 - 2,049,000; resnet152 60,192,808 - 2,049,000. Group-norm scale/offset replace
# BN gamma/beta one for one; the 4-frame input adds 7*7*1*64 = 3,136 stem weights.
STANDARD_TRUNKS = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032,
                   "resnet101": 42_500_160, "resnet152": 58_143_808}


@pytest.mark.parametrize("arch", sorted(STANDARD_TRUNKS))
def test_resnet_torso_counts_match_the_standard_trunks(arch):
    table = parameter_table(NetworkConfig(arch=arch), (18,))
    assert table["parts"]["torso"] == STANDARD_TRUNKS[arch] + 7 * 7 * 64
    channels = 2048 if arch in ("resnet50", "resnet101", "resnet152") else 512
    assert table["torso_output"] == [3, 3, channels]  # 84 -> 42 -> 21 -> 11 -> 6 -> 3
    assert table["parts"]["spatial_embedding"] == 3 * 3 * channels * 8
    assert table["parts"]["projection"] == channels * 8 * 1024 + 1024


def test_parameter_table_totals_and_full_action_space():
    table = parameter_table(NetworkConfig(arch="impala"), (4, 9))
    assert table["torso_output"] == [11, 11, 32]
    assert table["total"] == sum(table["parts"].values())
    assert table["parts"]["heads"] == 1025 * 13 * 51
    full = parameter_table(NetworkConfig(arch="impala", full_action_space=True), (4, 9))
    assert full["num_actions"] == [18, 18] and full["parts"]["heads"] == 1025 * 36 * 51
    with pytest.raises(UsageError, match="full_action_space"):
        build_network(NetworkConfig(arch="dqn", full_action_space=True), (4, 9))


def test_config_validation_and_round_trip():
    with pytest.raises(UsageError, match="unknown network arch"):
        NetworkConfig(arch="resnet99")
    with pytest.raises(UsageError, match="v_min < v_max"):
        NetworkConfig(v_min=1.0, v_max=1.0)
    config = NetworkConfig(arch="impala", width=2.0, compute_dtype="bfloat16")
    assert NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DataError):
        NetworkConfig.from_dict({**config.to_dict(), "bogus": 1})
    np.testing.assert_allclose(NetworkConfig().support()[[0, 25, 50]], [-10, 0, 10])


def test_spatial_embedding_matches_numpy_einsum():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    f = hk.without_apply_rng(hk.transform(lambda v: SpatialEmbedding(6)(v)))
    shapes = jax.eval_shape(f.init, jax.random.PRNGKey(0), x)
    assert shapes["spatial_embedding"]["kernel"].shape == (3, 4, 5, 6)
    kernel = np.random.default_rng(1).normal(size=(3, 4, 5, 6)).astype(np.float32)
    params = {"spatial_embedding": {"kernel": kernel}}
    expected = np.zeros((2, 5, 6))
    for b in range(2):
        for c in range(5):
            for k in range(6):
                expected[b, c, k] = np.sum(x[b, :, :, c] * kernel[:, :, c, k])
    np.testing.assert_allclose(np.asarray(f.apply(params, x)), expected.reshape(2, 30), rtol=1e-5, atol=1e-5)


def test_features_have_unit_norm(tiny_dqn):
    _, params, obs, _ = tiny_dqn
    f = hk.without_apply_rng(hk.transform(lambda o: shared_features(TINY_DQN, o)))
    feats = np.asarray(f.apply(params, obs))  # same module names: reads the network's own params
    assert feats.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(jnp.array([[3.0, 4.0]])), axis=-1), 1.0)


def test_heads_read_each_samples_own_game(tiny_dqn):
    net, params, obs, game = tiny_dqn
    logits = np.asarray(net.apply(params, obs, game).logits)
    assert logits.shape == (6, 6, 7) and logits.dtype == np.float32
    f = hk.without_apply_rng(hk.transform(lambda o: shared_features(TINY_DQN, o)))
    feats = np.asarray(f.apply(params, obs), np.float64)
    w = np.asarray(params["heads/linear"]["w"], np.float64)
    bias = np.asarray(params["heads/linear"]["b"], np.float64)
    offsets = head_offsets(NUM_ACTIONS, 7)
    for b, g in enumerate(game):
        cols = slice(offsets[g], offsets[g + 1])
        expected = (feats[b] @ w[:, cols] + bias[cols]).reshape(NUM_ACTIONS[g], 7)
        np.testing.assert_allclose(logits[b, : NUM_ACTIONS[g]], expected, rtol=1e-4, atol=1e-5)
        assert np.all(logits[b, NUM_ACTIONS[g]:] == 0.0)


def test_other_games_heads_get_no_gradient_and_do_not_change_outputs(tiny_dqn):
    net, params, obs, _ = tiny_dqn
    game = np.array([0, 2, 2, 0, 0, 2], np.int32)  # game 1 absent
    mask = action_mask(NUM_ACTIONS)
    support = TINY_DQN.support()
    rng = np.random.default_rng(3)
    action = np.array([rng.integers(NUM_ACTIONS[g]) for g in game], np.int32)
    reward = rng.normal(size=6).astype(np.float32)
    discount = np.full(6, 0.97, np.float32)

    def loss(p):
        logits = net.apply(p, obs, game).logits
        next_logits = net.apply(params, obs[::-1], game).logits
        return scaled_ql_loss(logits, next_logits, action, reward, discount, game, mask, support, 0.5)[0]

    grads = jax.jit(jax.grad(loss))(params)
    gw = np.asarray(grads["heads/linear"]["w"])
    gb = np.asarray(grads["heads/linear"]["b"])
    offsets = head_offsets(NUM_ACTIONS, 7)
    unused = slice(offsets[1], offsets[2])
    assert np.all(gw[:, unused] == 0.0) and np.all(gb[unused] == 0.0)
    for g in (0, 2):
        assert np.abs(gw[:, offsets[g]:offsets[g + 1]]).max() > 0
    assert np.abs(np.asarray(grads["torso/conv2_d"]["w"])).max() > 0  # the torso learns from every game

    # changing game 1's head changes nothing for samples of games 0 and 2
    changed = jax.tree_util.tree_map(lambda x: x, params)
    changed["heads/linear"] = {
        "w": params["heads/linear"]["w"].at[:, unused].add(5.0),
        "b": params["heads/linear"]["b"].at[unused].add(5.0)}
    np.testing.assert_array_equal(np.asarray(net.apply(changed, obs, game).logits),
                                  np.asarray(net.apply(params, obs, game).logits))


# resnet18 with 4 channels per group: with one channel per group on the final 3x3 map, group norm divides
# by the spread of 9 nearly equal values and amplifies bfloat16 rounding (a property of tiny test widths).
@pytest.mark.parametrize("arch,width,groups", [("dqn", 0.5, 32), ("resnet18", 0.25, 4)])
def test_bfloat16_compute_is_close_to_float32(arch, width, groups):
    base = dict(arch=arch, width=width, projection_dim=64, num_atoms=11, num_groups=groups)
    f32 = build_network(NetworkConfig(**base), NUM_ACTIONS)
    bf16 = build_network(NetworkConfig(**base, compute_dtype="bfloat16"), NUM_ACTIONS)
    obs = obs_batch(4, seed=1)
    game = np.array([0, 1, 2, 1], np.int32)
    params = jax.jit(bf16.init)(jax.random.PRNGKey(0), obs, game)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))  # master weights
    out32, out16 = jax.jit(f32.apply)(params, obs, game).logits, jax.jit(bf16.apply)(params, obs, game).logits
    assert out16.dtype == jnp.float32
    mask = action_mask(NUM_ACTIONS)[game]
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel  # bfloat16 keeps 8 significand bits: ~0.4% per rounding
    support = jnp.linspace(-10, 10, 11)
    q32 = (jax.nn.softmax(out32) * support).sum(-1)
    q16 = (jax.nn.softmax(out16) * support).sum(-1)
    np.testing.assert_allclose(np.asarray(q16)[mask], np.asarray(q32)[mask], atol=0.02)


def test_bad_observation_shape_is_a_clear_error(tiny_dqn):
    net, params, _, _ = tiny_dqn
    with pytest.raises(DataError, match=r"\(B, 4, 84, 84\)"):
        net.apply(params, np.zeros((2, 84, 84, 4), np.uint8), np.zeros(2, np.int32))


def test_parameter_table_for_real_games():
    from sqlcli_core.games.catalog import resolve_games

    table = parameter_table(NetworkConfig(arch="dqn"), resolve_games("pong,breakout"))
    assert table["num_actions"] == [6, 4]  # ALE minimal action sets
    # resnet101 on atari40: the spec's arithmetic, with biases and the 4-frame stem (501 minimal actions)
    table = parameter_table(NetworkConfig(arch="resnet101"), resolve_games("atari40"))
    assert sum(table["num_actions"]) == 501
    assert table["total"] == (42_500_160 + 7 * 7 * 64) + 3 * 3 * 2048 * 8 + (16384 + 1) * 1024 + (1024 + 1) * 501 * 51

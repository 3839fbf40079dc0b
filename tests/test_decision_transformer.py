"""The multi-game Decision Transformer: presets, causality, the loss, discretisation, expert action inference."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sqlcli_core.data.sequence_sampler import SequenceBatch
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import minimal_action_set, resolve_games
from sqlcli_core.methods import decision_transformer as mdt
from sqlcli_core.networks import decision_transformer as dt
from sqlcli_core.networks.network import parameter_table

ACTION_SETS = [minimal_action_set("Breakout"), minimal_action_set("Pong")]  # 4 and 6 actions
TINY = dt.DecisionTransformerConfig(arch="dt-10m", width=1 / 16)  # 4 layers, width 32, one head


def make_inputs(seed: int, batch: int = 3, config: dt.DecisionTransformerConfig = TINY):
    rng = np.random.default_rng(seed)
    t = config.context_steps
    game = np.arange(batch, dtype=np.int32) % 2
    sizes = np.array([len(s) for s in ACTION_SETS])[game]
    return {
        "frames": jnp.asarray(rng.integers(0, 256, (batch, t, 84, 84), dtype=np.uint8)),
        "action": jnp.asarray(rng.integers(0, sizes[:, None], (batch, t)), jnp.int32),
        "return_bin": jnp.asarray(rng.integers(0, config.num_return_bins, (batch, t)), jnp.int32),
        "reward_class": jnp.asarray(rng.integers(0, 4, (batch, t)), jnp.int32),
        "game": jnp.asarray(game),
    }


@pytest.fixture(scope="module")
def tiny():
    net = dt.build_decision_transformer(TINY, ACTION_SETS)
    x = make_inputs(0)
    params = jax.jit(net.init)(jax.random.PRNGKey(1), *x.values())
    abstract = dt.abstract_params(TINY, ACTION_SETS)
    assert jax.tree_util.tree_map(lambda a: a.shape, abstract) == jax.tree_util.tree_map(lambda a: a.shape, params)
    apply = jax.jit(lambda p, f, a, r, c, g: net.apply(p, None, f, a, r, c, g))
    return net, params, apply


def hidden_and_heads(config):
    """The network split at the transformer's output, with the same module names (so the same params)."""
    table, _ = dt.action_tables(ACTION_SETS)

    def hidden(frames, action, return_bin, reward_class, game):
        full = jnp.take_along_axis(jnp.asarray(table)[game], action, axis=1)
        tokens = dt.TokenEmbeddings(config)(dt.PatchEmbedding(config)(frames), return_bin, full, reward_class)
        return dt.CausalTransformer(config)(tokens, False)

    heads = hk.without_apply_rng(hk.transform(lambda h, g: dt.DTHeads(config, ACTION_SETS)(h, g)))
    return hk.without_apply_rng(hk.transform(hidden)), heads


# ------------------------------------------------------------------------------------------------ presets


def hand_count(layers: int, d: int, heads: int, steps: int = 4) -> int:
    """Parameters of the layers as the paper describes them, counted by hand."""
    patches, patch_pixels, returns, actions, rewards = 36, 14 * 14, 120, 18, 4
    tokens = steps * (patches + 3)
    key = d // heads
    attention = 3 * (d * heads * key + heads * key) + (heads * key * d + d)  # q, k, v and output, with biases
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    norms = 2 * 2 * d
    return ((patch_pixels * d + d) + patches * d  # patch projection + patch positions
            + (returns + actions + rewards) * d + tokens * d  # token embeddings + token positions
            + layers * (attention + mlp + norms) + 2 * d  # blocks + final norm
            + (d + 1) * (returns + actions + rewards))  # heads


@pytest.mark.parametrize("arch,width,layers,d,heads,low,high", [
    ("dt-40m", 1.0, 6, 768, 12, 40e6, 45e6),
    ("dt-80m", 1.0, 12, 768, 12, 78e6, 88e6),
    ("dt-10m", 1.0, 4, 512, 8, 10e6, 14e6),
    ("dt-200m", 1.0, 10, 1280, 20, 190e6, 205e6),
    ("dt-80m", 0.25, 12, 192, 3, 0, 1e12),
    ("dt-40m", 1 / 16, 6, 48, 1, 0, 1e12),
])
def test_preset_parameter_counts(arch, width, layers, d, heads, low, high):
    games = resolve_games("atari40")
    table = parameter_table(dt.DecisionTransformerConfig(arch=arch, width=width), games)
    assert (table["layers"], table["model_dim"], table["heads"]) == (layers, d, heads)
    assert table["total"] == hand_count(layers, d, heads) == sum(table["parts"].values())
    assert set(table["parts"]) == set(dt.PARTS) and table["num_games"] == 40
    assert low <= table["total"] <= high
    assert table["parts"]["transformer"] == layers * (12 * d * d + 13 * d) + 2 * d


def test_counts_do_not_depend_on_the_games():
    config = dt.DecisionTransformerConfig(arch="dt-40m", width=0.25)
    assert parameter_table(config, ["Pong"])["total"] == parameter_table(config, resolve_games("atari40"))["total"]


def test_bad_configs():
    with pytest.raises(UsageError, match="dt-40m"):
        dt.DecisionTransformerConfig(arch="gpt")
    with pytest.raises(UsageError, match="divide 84"):
        dt.DecisionTransformerConfig(patch_size=10)
    with pytest.raises(UsageError, match="ALE ids"):
        dt.action_tables([[0, 1, 18]])
    config = dt.DecisionTransformerConfig(arch="dt-80m", width=0.5)
    assert dt.DecisionTransformerConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------------------ causality


def test_attention_mask_by_hand():
    config = dt.DecisionTransformerConfig(patch_size=42, context_steps=2, single_return_token=False)  # 4 patches
    m = dt.attention_mask(config)
    assert m.shape == (14, 14)
    want = np.tril(np.ones((14, 14), bool))
    want[0:4, 0:4] = True  # the patches of frame 0 see each other
    want[7:11, 7:11] = True
    np.testing.assert_array_equal(m, want)
    single = dt.attention_mask(dt.DecisionTransformerConfig(patch_size=42, context_steps=2))
    want[:, 11] = False  # the return token of step 1 is hidden
    np.testing.assert_array_equal(single, want)
    layout = dt.token_layout(config)
    assert layout.last_patch.tolist() == [3, 10] and layout.return_token.tolist() == [4, 11]


@pytest.mark.parametrize("single", [True, False])
def test_later_tokens_never_change_earlier_outputs(single):
    config = dt.DecisionTransformerConfig(arch="dt-10m", width=1 / 16, single_return_token=single)
    hidden_net, _ = hidden_and_heads(config)
    net = dt.build_decision_transformer(config, ACTION_SETS)
    x = make_inputs(2, config=config)
    params = jax.jit(net.init)(jax.random.PRNGKey(3), *x.values())
    hidden = jax.jit(hidden_net.apply)
    apply = jax.jit(lambda p, *a: net.apply(p, None, *a))
    base_h, base = hidden(params, *x.values()), apply(params, *x.values())
    n = config.tokens_per_step

    def run(**change):
        y = dict(x, **change)
        return hidden(params, *y.values()), apply(params, *y.values())

    # A later frame: every earlier token and every earlier step's logits are unchanged.
    h, out = run(frames=x["frames"].at[:, 2].set(255 - x["frames"][:, 2]))
    np.testing.assert_allclose(h[:, :2 * n], base_h[:, :2 * n], atol=1e-5)
    assert np.abs(h[:, 2 * n:] - base_h[:, 2 * n:]).max() > 1e-2
    for field in ("action_logits", "return_logits", "reward_logits"):
        np.testing.assert_allclose(getattr(out, field)[:, :2], getattr(base, field)[:, :2], atol=1e-5)
        assert np.abs(getattr(out, field)[:, 2:] - getattr(base, field)[:, 2:]).max() > 1e-3
    # The action of step 1 never informs its own prediction, only what follows it.
    _, out = run(action=x["action"].at[:, 1].set((x["action"][:, 1] + 1) % 4))
    np.testing.assert_allclose(out.action_logits[:, :2], base.action_logits[:, :2], atol=1e-5)
    np.testing.assert_allclose(out.return_logits[:, :2], base.return_logits[:, :2], atol=1e-5)
    assert np.abs(out.reward_logits[:, 1] - base.reward_logits[:, 1]).max() > 1e-3
    # The patches of one frame see each other: the last patch changes the first one's output.
    h, _ = run(frames=x["frames"].at[:, 0, 70:, 70:].set(0))
    assert np.abs(h[:, 0] - base_h[:, 0]).max() > 1e-3
    # The return token of step 1 conditions its action only when it is visible.
    _, out = run(return_bin=x["return_bin"].at[:, 1].set((x["return_bin"][:, 1] + 50) % 120))
    np.testing.assert_allclose(out.return_logits[:, :2], base.return_logits[:, :2], atol=1e-5)
    later = np.abs(out.return_logits[:, 2:] - base.return_logits[:, 2:]).max()
    assert (later < 1e-5) if single else (later > 1e-3)
    changed = np.abs(out.action_logits[:, 1] - base.action_logits[:, 1]).max()
    assert (changed < 1e-5) if single else (changed > 1e-3)


def test_split_network_equals_the_whole(tiny):
    net, params, apply = tiny
    hidden_net, heads_net = hidden_and_heads(TINY)
    x = make_inputs(4)
    whole = apply(params, *x.values())
    split = heads_net.apply(params, hidden_net.apply(params, *x.values()), x["game"])
    for a, b in zip(whole, split):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------ loss


def numpy_ce(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, target[..., None], -1)[..., 0]


@pytest.mark.parametrize("single", [True, False])
def test_loss_against_numpy(single):
    rng = np.random.default_rng(5)
    B, T, A = 4, 4, 6
    action_logits = rng.normal(size=(B, T, A)).astype(np.float32)
    action_logits[0, :, 4:] = dt.MASKED_LOGIT  # game 0 has 4 actions
    outputs = dt.DTOutputs(jnp.asarray(action_logits), jnp.asarray(rng.normal(size=(B, T, 120)), jnp.float32),
                           jnp.asarray(rng.normal(size=(B, T, 4)), jnp.float32))
    action = rng.integers(0, 4, (B, T)).astype(np.int32)
    return_bin = rng.integers(0, 120, (B, T)).astype(np.int32)
    reward_class = rng.integers(0, 4, (B, T)).astype(np.int32)
    step_mask = np.ones((B, T), np.float32)
    step_mask[1, :2] = 0  # a window opening on two padding rows
    game = np.array([0, 1, 1, 0], np.int32)
    loss, aux = mdt.decision_transformer_loss(outputs, jnp.asarray(action), jnp.asarray(return_bin),
                                              jnp.asarray(reward_class), jnp.asarray(step_mask), jnp.asarray(game),
                                              2, single)
    a = numpy_ce(action_logits, action)
    r = numpy_ce(np.asarray(outputs.return_logits), return_bin)
    w = numpy_ce(np.asarray(outputs.reward_logits), reward_class)
    want_a = (a * step_mask).sum() / step_mask.sum()
    want_r = r[:, 0].mean() if single else r.mean()
    want_w = (w * step_mask).sum() / step_mask.sum()
    np.testing.assert_allclose([aux["action_loss"], aux["return_loss"], aux["reward_loss"]], [want_a, want_r, want_w],
                               rtol=1e-5)
    np.testing.assert_allclose(loss, want_a + want_r + want_w, rtol=1e-5)
    np.testing.assert_allclose(aux["per_game_count"], [8, 6])
    np.testing.assert_allclose(aux["per_game_action_loss"][1], (a[1:3] * step_mask[1:3]).sum() / 6, rtol=1e-5)


@pytest.mark.parametrize("weights,target", [((1, 0, 0), "return_token"), ((0, 1, 0), "last_patch"),
                                            ((0, 0, 1), "action_token")])
def test_each_loss_term_reads_only_its_prediction_tokens(tiny, weights, target):
    """The gradient of the loss wrt the transformer's outputs is zero everywhere but the predicting tokens.

    With the action term alone, only the return tokens of real steps (the action tokens' predictors)
    receive gradient: observation (patch) tokens are never a target.
    """
    _, params, _ = tiny
    hidden_net, heads_net = hidden_and_heads(TINY)
    x = make_inputs(6, batch=2)
    step_mask = jnp.ones((2, 4)).at[0, 0].set(0.0)
    h = hidden_net.apply(params, *x.values())

    def loss_of_hidden(h):
        out = heads_net.apply(params, h, x["game"])
        return mdt.decision_transformer_loss(out, x["action"], x["return_bin"], x["reward_class"], step_mask,
                                             x["game"], 2, TINY.single_return_token, weights)[0]

    grad_norm = np.abs(np.asarray(jax.grad(loss_of_hidden)(h))).sum(-1)  # (B, L)
    layout = dt.token_layout(TINY)
    want = np.zeros_like(grad_norm, bool)
    positions = getattr(layout, target)
    if target == "last_patch":
        want[:, positions[0]] = True  # single_return_token: step 0's return only (padding step included)
    else:
        want[:, positions] = True
        want[0, positions[0]] = False  # the padding step of window 0 counts for no action or reward
    assert (grad_norm[want] > 0).all()
    assert (grad_norm[~want] == 0).all()


def test_discretisation_round_trip():
    returns = jnp.arange(-20, 100, dtype=jnp.float32)
    bins = mdt.return_to_bin(returns, -20, 120)
    np.testing.assert_array_equal(bins, np.arange(120))
    np.testing.assert_array_equal(mdt.bin_to_return(bins, -20), returns)
    np.testing.assert_array_equal(mdt.return_to_bin(jnp.array([-50.0, 99.0, 100.0, 400.0, 2.4, 2.6, -3.4]), -20, 120),
                                  [0, 119, 119, 119, 22, 23, 17])
    classes = mdt.reward_to_class(jnp.array([0.0, 1.0, -1.0, 0.5, -1.0, 0.0]), jnp.array([0, 0, 0, 0, 1, 1]))
    np.testing.assert_array_equal(classes, [0, 1, 3, 1, 2, 2])


# ------------------------------------------------------------------------------------------------ acting


def test_expert_return_distribution_against_numpy():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 120)).astype(np.float32) * 2
    for kappa, beta in [(0.0, 1.0), (10.0, 1.0), (10.0, 0.5), (3.0, 2.0)]:
        got = np.asarray(jax.nn.softmax(mdt.expert_return_logits(jnp.asarray(logits), kappa, beta), axis=-1))
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        u = (np.arange(120) - 0) / 119.0  # (R - R_low) / (R_high - R_low) over the bins
        q = (p * np.exp(kappa * u)) ** beta  # Bayes: P(R | expert) ∝ P(R) P(expert | R), then tempered
        q /= q.sum(-1, keepdims=True)
        np.testing.assert_allclose(got, q, rtol=1e-4, atol=1e-7)
    # Sampling follows it: frequencies of 40k draws against the derived probabilities.
    q_logits = mdt.expert_return_logits(jnp.asarray(logits[:1, :8]), 10.0)
    draws = jax.random.categorical(jax.random.PRNGKey(0), q_logits[0], shape=(40_000,))
    freq = np.bincount(np.asarray(draws), minlength=8) / 40_000
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(q_logits[0])), atol=0.01)


def test_best_of_returns_follows_the_distribution_of_a_maximum():
    """The largest of S draws at inverse temperature beta: P(max <= k) = F(k)^S, F the tempered CDF (numpy)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8,)).astype(np.float32) * 1.5
    n = 40_000
    for samples, beta, kappa in [(1, 1.0, 0.0), (4, 0.75, 0.0), (128, 0.75, 0.0), (3, 1.0, 2.0)]:
        acting = mdt.DTActing(return_samples=samples, return_inverse_temperature=beta, kappa=kappa)
        keys = jax.random.split(jax.random.PRNGKey(samples), n)
        got = np.asarray(jax.jit(lambda k, lg, a=acting: mdt.best_of_returns(k, lg, a))(keys, jnp.tile(logits, (n, 1))))
        tempered = beta * (logits - np.log(np.exp(logits).sum()) + kappa * np.linspace(0, 1, 8))
        p = np.exp(tempered - tempered.max())
        cdf = np.cumsum(p / p.sum())
        want = np.diff(np.concatenate([[0.0], cdf ** samples]))
        np.testing.assert_allclose(np.bincount(got, minlength=8) / n, want, atol=0.01)
    assert mdt.DTActing() == mdt.DTActing(return_samples=128, return_inverse_temperature=0.75, kappa=0.0,
                                          action_inverse_temperature=1.0, action_top_fraction=0.5,
                                          greedy_action=False)  # the authors' notebook
    for bad in ({"return_samples": 0}, {"action_top_fraction": 0.0}, {"action_top_fraction": 1.5}, {"kappa": -1.0}):
        with pytest.raises(UsageError):
            mdt.DTActing(**bad)


def test_top_fraction_keeps_the_logits_above_numpys_percentile():
    rng = np.random.default_rng(5)
    for fraction in (0.5, 0.25, 0.8, 1.0):
        logits = rng.normal(size=(64, 9)).astype(np.float32)
        sizes = rng.integers(1, 10, 64)
        logits[np.arange(9)[None, :] >= sizes[:, None]] = dt.MASKED_LOGIT
        logits[0, :3] = [1.0, 1.0, 1.0]  # ties: the maximum stays
        sizes[0] = 3
        logits[0, 3:] = dt.MASKED_LOGIT
        got = np.asarray(mdt.top_fraction_logits(jnp.asarray(logits), fraction))
        for row, n, out in zip(logits, sizes, got):
            real = row[:n]
            keep = (real > np.percentile(real, 100 * (1 - fraction))) | (real == real.max())
            if fraction == 1.0:
                keep = np.ones(n, bool)
            np.testing.assert_array_equal(np.isfinite(out[:n]), keep)
            np.testing.assert_array_equal(out[:n][keep], real[keep])
            assert not np.isfinite(out[n:]).any() or fraction == 1.0


def test_act_on_context_conditions_on_the_expert_return(tiny):
    net, params, apply = tiny
    x = make_inputs(8)
    acting = mdt.ActingConfig(kappa=1e4, greedy_action=True)  # the top bin always, then the argmax action
    action, return_bin = jax.jit(lambda p, k, f, a, r, g: mdt.act_on_context(net.apply, p, k, f, a, r, g, TINY, acting))(
        params, jax.random.PRNGKey(0), x["frames"], x["action"], x["reward_class"], x["game"])
    np.testing.assert_array_equal(return_bin, np.tile([119, 0, 0, 0], (3, 1)))
    out = apply(params, x["frames"], x["action"], return_bin, x["reward_class"], x["game"])
    np.testing.assert_array_equal(action, np.argmax(out.action_logits[:, -1], axis=-1))
    assert (np.asarray(action) < np.array([4, 6, 4])).all()  # within each game's own actions


def test_policy_keeps_each_emulators_window(tiny):
    net, params, _ = tiny
    acting = mdt.ActingConfig(kappa=1e4, greedy_action=True)
    policy = mdt.DecisionTransformerPolicy(net.apply, params, TINY, num_envs=3, acting=acting)
    policy.start_episodes([0, 1, 2], [0, 1, 0])
    rng = np.random.default_rng(9)
    history = {slot: [] for slot in range(3)}
    for step in range(6):
        slots = [0, 1, 2] if step != 3 else [1]  # slot 0 and 2 idle for a step
        frames = rng.integers(0, 256, (len(slots), 4, 84, 84), dtype=np.uint8)
        actions = policy.act(slots, frames)
        if step == 2:  # an epsilon-random action replaces the policy's: the window keeps the one taken
            actions = (actions + 1) % 4
        for slot, frame, a in zip(slots, frames, actions):
            history[slot].append((frame[-1], int(a)))
        policy.record(slots, rng.choice([-1.0, 0.0, 1.0], len(slots)), [False] * len(slots),
                      actions if step == 2 else None)
        if step == 4:
            policy.start_episodes([2], [1])
            history[2] = []
    for slot in range(3):
        steps = history[slot][-4:]
        pad = 4 - len(steps)
        want = np.zeros((4, 84, 84), np.uint8)
        for k, (frame, _) in enumerate(steps):
            want[pad + k] = frame
        np.testing.assert_array_equal(policy.frames[slot], want)
        assert policy.actions[slot, pad:].tolist() == [a for _, a in steps]
    # Acting for all slots at once gives each slot what acting on its own window alone gives.
    single = jax.jit(lambda f, a, r, g: mdt.act_on_context(net.apply, params, jax.random.PRNGKey(0), f, a, r, g,
                                                           TINY, acting)[0])
    for slot in range(3):
        frames = policy.frames[slot:slot + 1].copy()
        actions, rewards = policy.actions[slot:slot + 1].copy(), policy.rewards[slot:slot + 1].copy()
        alone = single(frames, actions, rewards, policy.games[slot:slot + 1])
        together = single(policy.frames, policy.actions, policy.rewards, policy.games)[slot]
        assert int(alone[0]) == int(together)


# ------------------------------------------------------------------------------------------------ training


def fixed_batch(seed: int = 10, batch: int = 8) -> SequenceBatch:
    rng = np.random.default_rng(seed)
    game = (np.arange(batch) % 2).astype(np.int32)
    sizes = np.array([4, 6])[game]
    frames = rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8)
    step_mask = np.ones((batch, 4), np.float32)
    step_mask[0, :2] = 0
    frames[0, :2] = 0
    return SequenceBatch(game=game, frames=frames, action=rng.integers(0, sizes[:, None], (batch, 4)).astype(np.int32),
                         reward=rng.choice([-1.0, 0.0, 1.0], (batch, 4)).astype(np.float32),
                         return_to_go=rng.integers(-5, 30, (batch, 4)).astype(np.float32),
                         terminal=np.zeros((batch, 4), np.float32), step_mask=step_mask)


def test_jit_matches_eager(tiny):
    net, params, apply = tiny
    x = make_inputs(11)
    eager = net.apply(params, None, *x.values())
    for a, b in zip(eager, apply(params, *x.values())):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    loss_fn = mdt.make_loss_fn(net.apply, TINY, num_games=2)
    batch, key = fixed_batch(), jax.random.PRNGKey(2)
    (l1, aux1), (l2, aux2) = loss_fn(params, batch, key), jax.jit(loss_fn)(params, batch, key)
    np.testing.assert_allclose(l1, l2, rtol=1e-4)
    np.testing.assert_allclose(aux1["action_loss"], aux2["action_loss"], rtol=1e-4)
    no_dropout = jax.jit(loss_fn)(params, batch)[0]  # rng None: evaluation mode, no dropout
    np.testing.assert_allclose(no_dropout, loss_fn(params, batch)[0], rtol=1e-4)
    assert abs(float(no_dropout) - float(l2)) > 1e-4


def test_tiny_model_overfits_a_fixed_batch(tiny):
    net, params, _ = tiny
    loss_fn = mdt.make_loss_fn(net.apply, TINY, num_games=2)
    optimizer = optax.adam(1e-3)
    batch = fixed_batch()

    @jax.jit
    def update(params, opt_state, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    opt_state = optimizer.init(params)
    losses = []
    for step in range(150):
        params, opt_state, loss, aux = update(params, opt_state, jax.random.PRNGKey(step))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.25 * losses[0], (losses[0], losses[-10:])
    assert float(aux["action_accuracy"]) > 0.9


def test_the_dt_method_reads_its_loss_weights_from_its_method_config(tiny):
    """`DTConfig` (the dt's own settings, `--return-loss-weight` ...) reaches the loss the train step uses."""
    from sqlcli_core.methods.configs import DTConfig
    from sqlcli_core.methods.registry import LossSetup, get_method
    from sqlcli_core.training.configs import LearnerConfig

    net, params, _ = tiny
    batch = fixed_batch()
    mask = np.ones((2, 18), bool)
    losses = {}
    for weights in ((1.0, 1.0, 1.0), (1.0, 0.0, 2.0)):
        learner = LearnerConfig(method="dt", method_config=DTConfig(*weights))
        loss_fn = get_method("dt").make_loss(LossSetup(net, mask, TINY, learner))
        loss, aux = loss_fn(params, None, batch, None)  # rng None: no dropout
        losses[weights] = float(loss)
        expected = weights[0] * aux["action_loss"] + weights[1] * aux["return_loss"] + weights[2] * aux["reward_loss"]
        np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert losses[(1.0, 1.0, 1.0)] != losses[(1.0, 0.0, 2.0)]
    with pytest.raises(UsageError, match="dt loss weights"):
        DTConfig(0.0, 0.0, 0.0)

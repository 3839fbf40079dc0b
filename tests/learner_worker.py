"""Shared pieces of the learner tests, also run as a script in subprocesses.

    python tests/learner_worker.py devices OUT.npz CHECKPOINT_RUN_DIR [METHOD]
        (under XLA_FLAGS=--xla_force_host_platform_device_count=4) trains STEPS steps on a 4-device mesh and
        on a 1-device mesh from the same state and batches; writes both parameter sets and facts, and
        checkpoints the 4-device state. METHOD: a registered method name (default scaled-ql); dt trains the
        tiny Decision Transformer on random windows, with dropout.
    python tests/learner_worker.py distributed OUT.npz COORDINATOR NUM_PROCESSES PROCESS_ID
        joins a jax.distributed job; each process feeds its own rows of the global batches; writes params.
"""

from __future__ import annotations

import sys

import numpy as np

from sqlcli_core.data.batch import TransitionBatch
from sqlcli_core.data.sequence_sampler import SequenceBatch

STEPS = 3
BATCH = 8
NUM_ACTIONS = (3, 2)
GAMES = ("Breakout", "Pong")
DT_NUM_ACTIONS = (4, 6)  # the Decision Transformer maps actions to ALE ids: the games' real minimal sets


def tiny_network():
    """A DQN CNN at a quarter width, small neck and support: the shape every learner test uses."""
    from sqlcli_core.networks.config import NetworkConfig

    return NetworkConfig(arch="dqn", width=0.25, projection_dim=32, num_atoms=11, v_min=-2.0, v_max=2.0)


def tiny_dt():
    """A Decision Transformer of 4 layers, 32 wide (one head), context 4: the DT learner tests' shape."""
    from sqlcli_core.networks import decision_transformer as dt

    return dt.DecisionTransformerConfig(arch="dt-10m", width=1 / 16)


def tiny_setup(method: str):
    """(network config, action-set sizes) of a learner test of `method`."""
    return (tiny_dt(), DT_NUM_ACTIONS) if method == "dt" else (tiny_network(), NUM_ACTIONS)


def random_sequences(seed: int, batch: int = BATCH, num_actions=DT_NUM_ACTIONS, window: int = 4) -> SequenceBatch:
    """A batch of random windows (some opening on padding rows, some ending on a terminal)."""
    rng = np.random.default_rng(seed)
    game = rng.integers(0, len(num_actions), batch).astype(np.int32)
    sizes = np.asarray(num_actions)[game]
    step_mask = np.ones((batch, window), np.float32)
    step_mask[: batch // 4, :2] = 0
    terminal = np.zeros((batch, window), np.float32)
    terminal[-2:, -1] = 1
    frames = rng.integers(0, 256, (batch, window, 84, 84), dtype=np.uint8)
    frames[step_mask == 0] = 0
    return SequenceBatch(game=game, frames=frames, action=rng.integers(0, sizes[:, None], (batch, window)).astype(np.int32),
                         reward=rng.choice([-1.0, 0.0, 1.0], (batch, window)).astype(np.float32),
                         return_to_go=rng.integers(-5, 30, (batch, window)).astype(np.float32),
                         terminal=terminal, step_mask=step_mask)


def make_batches(method: str) -> list:
    return [random_sequences(100 + i) if method == "dt" else random_batch(100 + i) for i in range(STEPS)]


def tiny_learner(method: str = "scaled-ql"):
    from sqlcli_core.training.configs import LearnerConfig

    return LearnerConfig(method=method, learning_rate=1e-2, alpha=0.1, gamma=0.9, target_update_period=10)


def random_batch(seed: int, batch: int = BATCH, num_actions=NUM_ACTIONS) -> TransitionBatch:
    """A batch of random frames and transitions (valid actions for each sample's game)."""
    rng = np.random.default_rng(seed)
    game = rng.integers(0, len(num_actions), batch).astype(np.int32)
    action = np.array([rng.integers(0, num_actions[g]) for g in game], np.int32)
    return TransitionBatch(
        game=game,
        state=rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8),
        action=action,
        reward=rng.uniform(-1, 1, batch).astype(np.float32),
        done=(rng.random(batch) < 0.3).astype(np.float32),
        steps=rng.integers(1, 4, batch).astype(np.int32),
        next_state=rng.integers(0, 256, (batch, 4, 84, 84), dtype=np.uint8),
    )


def train(mesh, batches, rows=slice(None), method: str = "scaled-ql"):
    """STEPS updates from seed 0 on `mesh`, feeding `rows` of each batch from this process; host params."""
    import jax

    from sqlcli_core.training.mesh import batch_sharding, put_batch
    from sqlcli_core.training.update import init_train_state, make_train_step

    (net, num_actions), cfg = tiny_setup(method), tiny_learner(method)
    state = init_train_state(net, num_actions, cfg, 0, mesh, GAMES)
    step = make_train_step(net, num_actions, cfg, mesh, games=GAMES)
    sharding = batch_sharding(mesh)
    losses = []
    for b in batches:
        local = type(b)(*(x[rows] for x in b))
        state, metrics = step(state, put_batch(local, sharding))
        losses.append(float(metrics["loss"]))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(jax.device_get(v))
            for path, v in jax.tree_util.tree_leaves_with_path(state.params)}
    return flat, losses, state


def _main(argv: list[str]) -> None:
    mode, out = argv[0], argv[1]
    method = argv[3] if mode == "devices" and len(argv) > 3 else "scaled-ql"
    batches = make_batches(method)
    if mode == "distributed":
        from sqlcli_core.training.mesh import batch_sharding, check_batch_size, init_distributed, make_mesh, put_batch

        coordinator, n, pid = argv[2], int(argv[3]), int(argv[4])
        assert init_distributed(coordinator, n, pid)
    import jax

    from sqlcli_core.training.mesh import batch_sharding, check_batch_size, init_distributed, make_mesh, put_batch

    if mode == "devices":
        mesh4 = make_mesh()
        params4, losses4, state4 = train(mesh4, batches, method=method)
        from sqlcli_core.runs.checkpointer import Checkpointer
        from sqlcli_core.runs.run_record import run_identity

        net, num_actions = tiny_setup(method)
        identity = run_identity(net.to_dict(), list(GAMES), num_actions, method)
        ckpt = Checkpointer(argv[2], identity, every=1)
        ckpt.save(STEPS, state4, {"position": 7})
        ckpt.close()
        facts = {"devices": len(jax.devices()),
                 "shard_rows": [s.data.shape[0] for s in put_batch(batches[0], batch_sharding(mesh4))
                                .game.addressable_shards]}
        try:
            check_batch_size(6, mesh4)
            facts["indivisible_error"] = None
        except Exception as exc:  # the test checks the type and message
            facts["indivisible_error"] = f"{type(exc).__name__}: {exc}"
        params1, losses1, _ = train(make_mesh(jax.devices()[:1]), batches, method=method)
        np.savez(out, **{f"p4/{k}": v for k, v in params4.items()}, **{f"p1/{k}": v for k, v in params1.items()},
                 losses4=losses4, losses1=losses1, facts=np.array(repr(facts)))
    elif mode == "distributed":
        per = BATCH // jax.process_count()
        rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
        params, losses, _ = train(make_mesh(), batches, rows)
        np.savez(out, **{f"p/{k}": v for k, v in params.items()}, losses=losses,
                 facts=np.array(repr({"processes": jax.process_count(), "devices": len(jax.devices())})))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    _main(sys.argv[1:])

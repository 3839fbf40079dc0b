"""`sql collect`: real ALE episodes written as DQN-Replay ring-buffer checkpoints.

The references here are independent of the collector: the stream is reassembled from the files by
rolling each full checkpoint (not with replay_format.new_rows), frames are re-derived by replaying the
logged actions through a fresh AtariGame, and every file is read the way Dopamine reads it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.acting.ale_env import AtariGame
from sqlcli_core.acting.collect import _run_lock, collect_run, single_threaded_blas
from sqlcli_core.acting.collect_runs import RESUME_NAME, RunConfig, partial_dir, run_dir
from sqlcli_core.acting.policies import PolicySpec
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import UsageError
from sqlcli_core.games.catalog import Game

pytestmark = pytest.mark.slow

CAPACITY = 500
TRANSITIONS = 1500
SHORT_CAP = dataclasses.replace(PROTOCOLS["dopamine"], max_episode_steps=90)  # tiny config: capped episodes
SPEC_TABLE = {  # the spec's file table: name stem -> (dtype, shape for capacity C)
    "$store$_observation": ("uint8", lambda c: (c, 84, 84)),
    "$store$_action": ("int32", lambda c: (c,)),
    "$store$_reward": ("float32", lambda c: (c,)),
    "$store$_terminal": ("uint8", lambda c: (c,)),
    "add_count": ("int64", lambda c: ()),
    "invalid_range": ("int64", lambda c: (5,)),
}


def dopamine_load(path):
    """What Dopamine's buffer `load` does, with a local file in place of tf.io.gfile.GFile."""
    with open(path, "rb") as f:
        return np.load(gzip.GzipFile(fileobj=f), allow_pickle=False)


def reassemble(logs, capacity):
    """The run's stream from the ring-buffer files: checkpoint 0's written rows, then each later checkpoint
    rolled by -cursor (oldest row first) with only the rows not seen yet. The last checkpoint is a final
    buffer (log_final_buffer): its file holds the ring position, so its true count is the next lap's.
    Returns (stream, true add_counts)."""
    ckpts = sorted(int(m[1]) for p in logs.iterdir() if (m := re.fullmatch(r"add_count_ckpt\.(\d+)\.gz", p.name)))
    assert ckpts == list(range(len(ckpts)))
    parts = {k: [] for k in ("observation", "action", "reward", "terminal")}
    have, add_counts = 0, []
    for n in ckpts:
        add_count = int(dopamine_load(logs / f"add_count_ckpt.{n}.gz"))
        if add_count <= have:  # the final buffer: the ring position after `have` rows
            assert n == ckpts[-1] and have % capacity == capacity - 1 and add_count < capacity
            add_count = (have // capacity + 1) * capacity + add_count
        cursor = add_count % capacity
        for kind in parts:
            arr = dopamine_load(logs / f"$store$_{kind}_ckpt.{n}.gz")
            if add_count <= capacity:  # never wrapped: rows [0, add_count) in order
                ordered = arr[:add_count]
            else:  # full ring: oldest row at the cursor
                ordered = np.roll(arr, -cursor, axis=0)
            new = add_count - have
            parts[kind].append(ordered[len(ordered) - new:])
        have = add_count
        add_counts.append(add_count)
    return {k: np.concatenate(v) for k, v in parts.items()}, add_counts


def check_stream_against_log(stream, add_counts, log, capacity):
    episodes = log["episodes"]
    total = len(stream["action"])
    assert total == log["add_count"] == add_counts[-1]
    assert total == log["transitions"] + 3 * len(episodes)
    # checkpoint N saved when add_count mod capacity reached capacity - 1; then one final partial one
    assert add_counts[:-1] == [(n + 1) * capacity - 1 for n in range(len(add_counts) - 1)]
    assert [c["add_count"] for c in log["checkpoints"]] == add_counts
    position = 0
    for ep in episodes:
        pad = slice(position, position + 3)
        assert ep["start"] == position + 3
        assert not stream["observation"][pad].any() and not stream["action"][pad].any()
        assert not stream["reward"][pad].any() and not stream["terminal"][pad].any()
        rows = slice(ep["start"], ep["start"] + ep["length"])
        term = stream["terminal"][rows]
        assert term[:-1].sum() == 0 and term[-1] == int(ep["terminal"])
        assert float(stream["reward"][rows].sum()) == ep["clipped_return"]
        assert np.all(np.abs(stream["reward"][rows]) <= 1)
        assert stream["observation"][rows].reshape(ep["length"], -1).any(axis=1).all()  # real frames
        position = ep["start"] + ep["length"]
    assert position == total
    assert int(stream["terminal"].sum()) == sum(ep["terminal"] for ep in episodes)


def replay_through_atari_game(stream, log, protocol):
    """Re-play the logged actions in a fresh emulator with the logged seed; compare every frame and reward."""
    env = AtariGame(Game(log["game"]), protocol=protocol, seed=log["env_seed"])
    with single_threaded_blas():  # the resize is BLAS-bound; threads only slow it down
        for ep in log["episodes"]:
            replay_episode(env, stream, ep)
    env.close()


def replay_episode(env, stream, ep):
    """One logged episode against the emulator: frames equal, rewards clip, terminals at game over or the cap."""
    frame, raw = env.reset(), 0.0
    for i in range(ep["start"], ep["start"] + ep["length"]):
        np.testing.assert_array_equal(stream["observation"][i], frame)
        frame, reward, over = env.step(int(stream["action"][i]))
        raw += reward
        assert stream["reward"][i] == np.float32(np.sign(reward) * min(abs(reward), 1.0))
        assert over == (bool(stream["terminal"][i]) and not ep["capped"])
    assert raw == ep["return"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Breakout (short random episodes), collected through the CLI, with several checkpoints."""
    out = tmp_path_factory.mktemp("collect")
    args = ["collect", "--games", "breakout", "--transitions", str(TRANSITIONS), "--capacity", str(CAPACITY),
            "--seed", "3", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return out, args, summary


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory):
    """sticky-random with a 90-step episode cap (same code path, tiny config) and capacity 128."""
    out = tmp_path_factory.mktemp("capped")
    config = RunConfig("Breakout", 1, transitions=400, capacity=128, protocol=SHORT_CAP, seed=1,
                            policy=PolicySpec("sticky-random", 0.2))
    summary = collect_run(config, out)
    return out, config, summary


def test_cli_stream_round_trips_against_the_collect_log(cli_run):
    out, _, summary = cli_run
    run = summary["runs"][0]
    assert run["status"] == "collected" and summary["env_steps"] == TRANSITIONS
    assert summary["env_steps_per_s"] > 0 and run["env_steps_per_s"] > 0
    log = json.loads((out / "Breakout" / "1" / "collect_log.json").read_text())
    assert log["provenance"]["config"]["capacity"] == CAPACITY and log["provenance"]["seed"] == 3
    assert log["protocol"] == PROTOCOLS["dopamine"].to_dict() and log["policy"] == {"kind": "random"}
    assert log["env_steps_per_s"] > 0
    stream, add_counts = reassemble(out / "Breakout" / "1" / "replay_logs", CAPACITY)
    assert len(add_counts) >= 3 and len(log["episodes"]) >= 4
    check_stream_against_log(stream, add_counts, log, CAPACITY)
    # random policy: uniform draws from the logged policy seed, one per agent step
    real = np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in log["episodes"]])
    expected = np.random.default_rng(log["policy_seed"]).integers(4, size=len(real))
    np.testing.assert_array_equal(stream["action"][real], expected)


def test_cli_frames_equal_atari_game_frames(cli_run):
    out, _, _ = cli_run
    log = json.loads((out / "Breakout" / "1" / "collect_log.json").read_text())
    stream, _ = reassemble(out / "Breakout" / "1" / "replay_logs", CAPACITY)
    replay_through_atari_game(stream, log, PROTOCOLS["dopamine"])


def test_files_read_like_dopamine_reads_them(cli_run):
    out, _, _ = cli_run
    logs = out / "Breakout" / "1" / "replay_logs"
    names = sorted(p.name for p in logs.iterdir())
    n_ckpt = len(names) // 6
    assert names == sorted(f"{stem}_ckpt.{n}.gz" for stem in SPEC_TABLE for n in range(n_ckpt))
    for name in names:
        stem, n = re.fullmatch(r"(.+)_ckpt\.(\d+)\.gz", name).groups()
        raw = gzip.decompress((logs / name).read_bytes())
        assert raw[:6] == b"\x93NUMPY"  # exactly one .npy payload
        arr = dopamine_load(logs / name)
        dtype, shape = SPEC_TABLE[stem]
        assert arr.dtype == np.dtype(dtype) and arr.dtype.byteorder in "<|=" and arr.shape == shape(CAPACITY)
        kind, _ = rf.parse_file_name(name)
        np.testing.assert_array_equal(rf.load_npy_gz(logs / name, kind, capacity=CAPACITY), arr)  # shard's reader
        if stem == "invalid_range":
            cursor = int(dopamine_load(logs / f"add_count_ckpt.{n}.gz")) % CAPACITY
            assert arr.tolist() == [(cursor - 1 + i) % CAPACITY for i in range(5)]
    # checkpoint 0's rows past its add_count were never written: zeros
    first = int(dopamine_load(logs / "add_count_ckpt.0.gz"))
    assert first == CAPACITY - 1
    assert not dopamine_load(logs / "$store$_observation_ckpt.0.gz")[first:].any()


def test_capped_episodes_end_with_a_terminal_row(capped_run):
    out, config, summary = capped_run
    log = json.loads((out / "Breakout" / "1" / "collect_log.json").read_text())
    assert log["protocol"]["max_episode_steps"] == 90 and log["policy"] == {"kind": "sticky-random", "epsilon": 0.2}
    capped = [e for e in log["episodes"] if e["capped"]]
    assert capped and all(e["length"] == 90 and e["terminal"] for e in capped)
    assert not log["episodes"][-1]["terminal"]  # 400 steps end mid-episode: no terminal row
    stream, add_counts = reassemble(out / "Breakout" / "1" / "replay_logs", 128)
    assert len(add_counts) == summary["checkpoints"] >= 3
    check_stream_against_log(stream, add_counts, log, 128)
    replay_through_atari_game(stream, log, SHORT_CAP)
    acts = stream["action"][np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in log["episodes"]])]
    assert (acts[1:] == acts[:-1]).mean() > 0.6  # sticky: mostly repeats (random would repeat 1/4 of the time)


def test_interrupted_run_resumes_to_identical_files(tmp_path):
    """Interrupt after checkpoints taken mid-episode, inside the padding rows and between episodes; resume
    each time; the files must equal an uninterrupted run's (sticky actions included)."""
    protocol = dataclasses.replace(PROTOCOLS["dopamine"], max_episode_steps=23)
    config = RunConfig("Breakout", 1, transitions=120, capacity=7, protocol=protocol,
                            policy=PolicySpec("sticky-random", 0.3))
    collect_run(config, tmp_path / "ref")
    partial = partial_dir(tmp_path / "int", "Breakout", 1)
    kinds = set()
    for stop in (25, 60, 95):
        def interrupt(steps, stop=stop):
            if steps >= stop:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            collect_run(config, tmp_path / "int", interrupt, progress_every=5)
        resume = json.loads((partial / RESUME_NAME).read_text())
        kinds.add("between" if resume["episode"] is None else "padding" if resume["padding_left"] else "mid")
        assert not run_dir(tmp_path / "int", "Breakout", 1).exists()
    assert kinds == {"between", "padding", "mid"}, f"resumed only from {kinds}: pick other stop points"
    assert collect_run(config, tmp_path / "int")["status"] == "resumed" and not partial.exists()
    ref_logs, logs = (tmp_path / d / "Breakout" / "1" / "replay_logs" for d in ("ref", "int"))
    assert sorted(p.name for p in logs.iterdir()) == sorted(p.name for p in ref_logs.iterdir())
    for p in ref_logs.iterdir():
        np.testing.assert_array_equal(dopamine_load(logs / p.name), dopamine_load(p), err_msg=p.name)
    log, ref_log = (json.loads((tmp_path / d / "Breakout" / "1" / "collect_log.json").read_text()) for d in ("int", "ref"))
    assert log["episodes"] == ref_log["episodes"] and log["checkpoints"] == ref_log["checkpoints"]


def test_rerun_is_skipped_and_a_different_config_is_refused(cli_run):
    out, args, _ = cli_run
    logs = out / "Breakout" / "1" / "replay_logs"
    before = {p.name: p.stat().st_mtime_ns for p in logs.iterdir()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.strip().splitlines()[-1])["runs"][0]["status"] == "skipped"
    assert {p.name: p.stat().st_mtime_ns for p in logs.iterdir()} == before
    other = CliRunner().invoke(app, [a if a != "3" else "4" for a in args])
    assert other.exit_code == 2
    text = " ".join(other.output.split())
    assert "was collected with other settings (seed) (use another --out" in text


@pytest.mark.parametrize("extra, message", [
    (["--games", "pongg"], "unknown game 'pongg' (did you mean 'Pong'?)"),
    (["--games", "pong", "--mode", "9"], "Pong has no mode 9 (ALE offers modes [0, 1])"),
    (["--games", "pong", "--difficulty", "7"], "Pong has no difficulty 7 (ALE offers difficulties [0, 1, 2, 3])"),
    (["--games", "pong", "--capacity", "4"], "--capacity 4 is below 5 rows"),
    (["--games", "pong", "--transitions", "0"], "--transitions 0 must be at least 1"),
    (["--games", "pong", "--policy", "greedy"], "unknown policy 'greedy'"),
    (["--games", "pong", "--policy", "pattern:0,9"], "policy pattern uses action 9 but Pong has 6 actions"),
    (["--games", "pong", "--epsilon", "1.5"], "--epsilon 1.5 is outside [0, 1]"),
    (["--games", "pong", "--protocol", "nope"], "invalid value for '--protocol': 'nope' is not one of 'dopamine', 'no-sticky'"),
    (["--games", "pong", "--capacity", "10000000000000"], "ring buffer(s) of 10000000000000 rows need"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    result = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code in (2, 5), result.output
    assert message in " ".join(result.output.split()), result.output
    assert result.output.strip().startswith("error:") and not (tmp_path / "out").exists()


def test_foreign_data_is_never_overwritten_and_stale_scratch_is_cleared(tmp_path):
    (tmp_path / "Pong" / "1" / "replay_logs").mkdir(parents=True)
    result = CliRunner().invoke(app, ["collect", "--games", "pong", "--transitions", "10", "--capacity", "64",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "has no collect_log.json" in result.output
    scratch = partial_dir(tmp_path, "Breakout", 1)
    scratch.mkdir(parents=True)
    (scratch / "leftover.gz").write_bytes(b"from an older interrupted run")
    config = RunConfig("Breakout", 1, transitions=10, capacity=64)
    assert collect_run(config, tmp_path)["status"] == "collected"
    final = run_dir(tmp_path, "Breakout", 1)
    assert not scratch.exists() and not (final / "leftover.gz").exists()
    assert sorted(p.name for p in final.iterdir()) == ["collect_log.json", "replay_logs"]
    # no scratch left behind; the lock file stays (sqlcli_core.locks: deleting it would race) and is free
    assert sorted(p.name for p in (tmp_path / "Breakout").iterdir()) == [".1.lock", "1"]
    with _run_lock(tmp_path, "Breakout", 1):
        pass


def make_tiny_run(run_dir, games):
    """A real run directory (run.json + Orbax checkpoint) of a narrow, randomly initialised network."""
    import jax

    from sqlcli_core.networks.config import NetworkConfig, num_actions_for
    from sqlcli_core.networks.network import abstract_params, count_parameters
    from sqlcli_core.runs.checkpointer import Checkpointer
    from sqlcli_core.runs.run_record import prepare_run_dir, run_identity

    config = NetworkConfig(arch="dqn", width=0.25, num_atoms=5, projection_dim=16,
                                    spatial_embedding_features=2, num_groups=1)
    num_actions = num_actions_for(config, [Game(g) for g in games])
    # Random weights of the right shapes (compiling network.init costs tens of seconds on a busy CPU).
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jax.numpy.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                          abstract_params(config, num_actions))
    identity = run_identity(config.to_dict(), games, num_actions)
    prepare_run_dir(run_dir, identity=identity, config={"network": config.to_dict()},
                               parameter_counts=count_parameters(params), seed=0)
    ckpt = Checkpointer(run_dir, identity)
    ckpt.save(7, {"params": params}, None, force=True)
    ckpt.close()


def test_checkpoint_policy_acts_greedily_on_the_stacked_frames(tmp_path):
    from sqlcli_core.runs.policy import load_policy

    run = tmp_path / "run"
    make_tiny_run(run, ["Pong", "Breakout"])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["collect", "--games", "breakout", "--transitions", "60", "--capacity", "40",
                                      "--policy", f"checkpoint:{run}", "--epsilon", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = json.loads((out / "Breakout" / "1" / "collect_log.json").read_text())
    assert log["policy"]["kind"] == "checkpoint" and log["policy"]["step"] == 7
    stream, _ = reassemble(out / "Breakout" / "1" / "replay_logs", 40)
    policy = load_policy(run)
    real = np.concatenate([np.arange(e["start"], e["start"] + e["length"]) for e in log["episodes"]])
    assert len(np.unique(stream["action"][real])) > 1  # the Q-values depend on the frames
    for ep in log["episodes"]:
        for i in range(ep["start"], ep["start"] + ep["length"]):
            state = stream["observation"][i - 3:i + 1]
            if i - ep["start"] < 3:  # frames before the episode's first are the zero padding rows
                assert not state[: 3 - (i - ep["start"])].any()
            q = policy.q_values(state[None], np.array([1], np.int32))[0, :4]
            assert stream["action"][i] == int(np.argmax(q))
    bad = CliRunner().invoke(app, ["collect", "--games", "boxing", "--policy", f"checkpoint:{run}", "--out", str(out)])
    assert bad.exit_code == 2 and "game 'Boxing' is not among 2 games of this checkpoint" in bad.output


def test_parallel_jobs_write_what_a_sequential_run_writes(tmp_path):
    args = ["collect", "--games", "breakout", "--runs", "2", "--transitions", "60", "--capacity", "32",
            "--policy", "sticky-random", "--out", str(tmp_path / "par"), "--jobs", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in json.loads(result.stdout.strip().splitlines()[-1])["runs"]] == ["collected"] * 2
    config = RunConfig("Breakout", 2, transitions=60, capacity=32, policy=PolicySpec("sticky-random", 0.1))
    collect_run(config, tmp_path / "seq")
    par, seq = (tmp_path / d / "Breakout" / "2" / "replay_logs" for d in ("par", "seq"))
    assert sorted(p.name for p in par.iterdir()) == sorted(p.name for p in seq.iterdir())
    for p in seq.iterdir():
        np.testing.assert_array_equal(dopamine_load(par / p.name), dopamine_load(p), err_msg=p.name)
    run1 = dopamine_load(tmp_path / "par" / "Breakout" / "1" / "replay_logs" / "$store$_action_ckpt.0.gz")
    assert not np.array_equal(run1, dopamine_load(seq / "$store$_action_ckpt.0.gz"))  # runs get their own seeds


def test_a_run_being_collected_elsewhere_is_refused(tmp_path):
    import fcntl

    (tmp_path / "Breakout").mkdir()
    with open(tmp_path / "Breakout" / ".1.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UsageError, match="Breakout/1 under .* is being written by another process"):
            collect_run(RunConfig("Breakout", 1, transitions=10, capacity=64), tmp_path)


def test_a_run_interrupted_after_its_final_buffer_resumes_from_it(tmp_path):
    """Killed after the final buffer (add_count file = cursor) was saved but before the run was published:
    the resume reads that checkpoint back with its true count and publishes the same files."""
    config = RunConfig("Breakout", 1, transitions=120, capacity=50, policy=PolicySpec("sticky-random", 0.3))
    collect_run(config, tmp_path / "ref")

    def interrupt(steps):
        if steps >= config.transitions:  # only the report after the final checkpoint (120 % 7 != 0)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_run(config, tmp_path / "int", interrupt, progress_every=7)
    resume = json.loads((partial_dir(tmp_path / "int", "Breakout", 1) / RESUME_NAME).read_text())
    logs = partial_dir(tmp_path / "int", "Breakout", 1) / "replay_logs"
    saved = int(dopamine_load(logs / f"add_count_ckpt.{resume['checkpoint']}.gz"))
    assert resume["add_count"] > 50 and saved == resume["add_count"] % 50  # the final buffer was saved
    assert collect_run(config, tmp_path / "int")["status"] == "resumed"
    ref_logs, logs = (tmp_path / d / "Breakout" / "1" / "replay_logs" for d in ("ref", "int"))
    assert sorted(p.name for p in logs.iterdir()) == sorted(p.name for p in ref_logs.iterdir())
    for p in ref_logs.iterdir():
        np.testing.assert_array_equal(dopamine_load(logs / p.name), dopamine_load(p), err_msg=p.name)

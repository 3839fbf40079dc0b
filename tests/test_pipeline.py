"""The data path end to end: `sql collect` -> `sql shard` -> ReplaySampler, against what was played.

The reference here is independent of store.py and sampler.py: the stream is rebuilt straight from the
collected ring-buffer files with np.roll, and transitions are computed from it with the spec's rules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sqlcli.main import app
from sqlcli_core.data import replay_format as rf
from sqlcli_core.data.sampler import ReplaySampler

GAMES = ("Pong", "Breakout")
CAPACITY = 400
GAMMA = 0.99


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    runner = CliRunner()
    res = runner.invoke(app, ["collect", "--games", ",".join(GAMES), "--transitions", "1000", "--capacity",
                              str(CAPACITY), "--seed", "5", "--out", str(root / "raw")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["shard", str(root / "raw"), str(root / "store"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    return root, summary


def _stream_from_files(run_dir):
    """Reassemble the temporal stream: checkpoint 0's written rows, then each later file rolled by -cursor.

    The last file is a final buffer (the DQN-Replay logger's log_final_buffer, which `collect` follows): it
    stores the ring position, so its true count is `(have // capacity + 1) * capacity + saved`.
    """
    logs = run_dir / "replay_logs"
    ckpts = sorted(int(p.name.split(".")[-2]) for p in logs.glob("add_count_ckpt.*.gz"))
    parts = {k: [] for k in rf.ROW_KINDS}
    have = 0
    for n in ckpts:
        add_count = int(rf.load_npy_gz(logs / rf.file_name("add_count", n)))
        if have and add_count <= have:
            add_count = (have // CAPACITY + 1) * CAPACITY + add_count
        cursor = add_count % CAPACITY
        new = add_count - have
        for kind in rf.ROW_KINDS:
            data = rf.load_npy_gz(logs / rf.file_name(kind, n))
            ordered = data[:add_count] if add_count < CAPACITY else np.roll(data, -cursor, axis=0)
            parts[kind].append(ordered[len(ordered) - new:])
        have = add_count
    return {k: np.concatenate(v) for k, v in parts.items()}


def _transition(stream, i, n):
    """The spec's rule, written as plainly as possible."""
    frames, terminals = stream["observation"], stream["terminal"]
    reward, done, length = 0.0, 0.0, n
    for k in range(n):
        reward += GAMMA**k * float(stream["reward"][i + k])
        if terminals[i + k]:
            done, length = 1.0, k + 1
            break
    return frames[i - 3:i + 1], int(stream["action"][i]), reward, done, length, frames[i + length - 3:i + length + 1]


def test_shard_summary_matches_what_collect_played(pipeline):
    root, summary = pipeline
    by_game = {r["game"]: r for r in summary["runs"]}
    for game in GAMES:
        log = json.loads((root / "raw" / game / "1" / "collect_log.json").read_text())
        complete = [e for e in log["episodes"] if e["terminal"]]
        got = by_game[game]
        # collect ends with a final buffer, as the DQN-Replay logger does: its file stores the ring position
        last = log["checkpoints"][-1]
        saved = int(rf.load_npy_gz(root / "raw" / game / "1" / "replay_logs" / rf.file_name("add_count", last["checkpoint"])))
        assert log["add_count"] > CAPACITY and log["add_count"] % CAPACITY != CAPACITY - 1
        assert last["add_count"] == log["add_count"] and saved == log["add_count"] % CAPACITY
        assert got["rows"] == log["add_count"]
        assert got["episodes"] == len(complete)
        if complete:
            returns = [e["clipped_return"] for e in complete]
            assert got["return_mean"] == pytest.approx(np.mean(returns))
            assert (got["return_min"], got["return_max"]) == (min(returns), max(returns))


def test_sampler_batches_equal_the_independent_reference(pipeline):
    root, _ = pipeline
    streams = {g: _stream_from_files(root / "raw" / g / "1") for g in GAMES}
    sampler = ReplaySampler(root / "store", games=list(GAMES), batch_size=64, n_step=3, gamma=GAMMA, seed=3)
    try:
        assert [g.name for g in sampler.games] == list(GAMES)
        seen_games, in_final_buffer = set(), 0
        for _ in range(3):
            batch, keys = sampler.next_batch_with_keys()
            for b, (g, run, i) in enumerate(keys):
                stream = streams[GAMES[g]]
                assert run == 1 and i >= 3
                # A valid index: no terminal among the 3 rows before it, window inside the stream.
                assert not stream["terminal"][i - 3:i].any()
                state, action, reward, done, steps, next_state = _transition(stream, int(i), 3)
                np.testing.assert_array_equal(batch.state[b], state)
                np.testing.assert_array_equal(batch.next_state[b], next_state)
                assert (batch.game[b], batch.action[b], batch.steps[b], batch.done[b]) == (g, action, steps, done)
                assert batch.reward[b] == pytest.approx(reward, abs=1e-6)
                seen_games.add(int(g))
                in_final_buffer += int(i) >= (len(stream["terminal"]) // CAPACITY) * CAPACITY - 1
        assert seen_games == {0, 1}
        assert in_final_buffer > 0  # transitions placed from the final buffer were drawn and checked
    finally:
        sampler.close()

"""DQN-Replay file handling and ring-buffer arithmetic, against hand-worked cases from the spec."""

import gzip

import numpy as np
import pytest

from sqlcli_core.data import replay_format as rf
from sqlcli_core.errors import DataError


def test_file_names_round_trip():
    assert rf.file_name("observation", 7) == "$store$_observation_ckpt.7.gz"
    assert rf.file_name("add_count", 0) == "add_count_ckpt.0.gz"
    for kind in rf.FILE_KINDS:
        assert rf.parse_file_name(rf.file_name(kind, 42)) == (kind, 42)
    assert rf.parse_file_name("episode_end_indices_ckpt.3.gz") is None


def test_save_and_load(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (10, 84, 84), dtype=np.uint8)
    path = rf.save_npy_gz(tmp_path / rf.file_name("observation", 0), frames)
    np.testing.assert_array_equal(rf.load_npy_gz(path, "observation", capacity=10), frames)
    with pytest.raises(DataError, match="10 rows, expected capacity 11"):
        rf.load_npy_gz(path, "observation", capacity=11)
    with pytest.raises(DataError, match="dtype uint8, expected int32"):
        rf.load_npy_gz(path, "action")


def test_truncated_and_pickled_files_are_refused(tmp_path):
    path = rf.save_npy_gz(tmp_path / "a.gz", np.arange(1000, dtype=np.int32))
    data = path.read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.gz: corrupt or truncated"):
        rf.load_npy_gz(tmp_path / "cut.gz", "action")
    import io
    import pickle

    buf = io.BytesIO()
    np.save(buf, np.array([{1, 2}], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.gz").write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(DataError, match="not a plain .npy"):
        rf.load_npy_gz(tmp_path / "pickle.gz")
    assert pickle  # the payload above needed pickle to be written, never to be read


def test_invalid_range_matches_dopamine():
    # Dopamine: [(cursor - update_horizon + i) % capacity for i in range(stack_size + update_horizon)]
    assert rf.invalid_range(999_999, 1_000_000).tolist() == [999_998, 999_999, 0, 1, 2]
    assert rf.invalid_range(0, 10).tolist() == [9, 0, 1, 2, 3]


def test_new_rows_follow_the_ring():
    cap = 10
    # checkpoint 0: add_count = cap - 1, rows [0, 9) written
    first, gap, rows = rf.new_rows(9, cap, 0)
    assert (first, gap, rows.tolist()) == (0, 0, list(range(9)))
    # checkpoint 1: add_count = 19, cursor 9: oldest row is 9, then 0..8 -> positions 9..18
    first, gap, rows = rf.new_rows(19, cap, 9)
    assert (first, gap, rows.tolist()) == (9, 0, [9, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    # a missing checkpoint 2: checkpoint 3 (add_count 39) after positions [0, 19) leaves a gap of 10
    first, gap, rows = rf.new_rows(39, cap, 19)
    assert (first, gap) == (29, 10) and rows.tolist() == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    # a partial last checkpoint: add_count 43 after 39 -> positions 39..42 in rows 9, 0, 1, 2
    assert rf.new_rows(43, cap, 39)[2].tolist() == [9, 0, 1, 2]


def test_ring_reassembly_reproduces_the_stream():
    """Write a stream into a ring buffer, checkpointing like Dopamine; rolling each file restores it."""
    cap, total = 7, 40
    stream = np.arange(total)
    ring = np.full(cap, -1)
    files = []
    for add_count, value in enumerate(stream, start=1):
        ring[(add_count - 1) % cap] = value
        if add_count % cap == cap - 1 or add_count == total:
            files.append((add_count, ring.copy()))
    rebuilt: list[int] = []
    for add_count, data in files:
        _, gap, rows = rf.new_rows(add_count, cap, len(rebuilt))
        assert gap == 0
        rebuilt.extend(data[rows].tolist())
    assert rebuilt == stream.tolist()


def test_scalar_files_keep_their_shape(tmp_path):
    path = rf.save_npy_gz(tmp_path / rf.file_name("add_count", 3), np.array(3_999_999, dtype=np.int64))
    assert rf.load_npy_gz(path, "add_count").shape == ()


def test_saved_bytes_depend_on_the_array_only(tmp_path):
    arr = np.arange(100, dtype=np.int32)
    a = rf.save_npy_gz(tmp_path / "one.gz", arr).read_bytes()
    b = rf.save_npy_gz(tmp_path / "other_name.gz", arr).read_bytes()
    assert a == b


def test_final_buffer_true_counts_by_hand():
    cap = 10
    # checkpoints 0, 1 on the schedule (9, 19), then log_final_buffer at 23 rows: it stores 23 % 10 = 3
    assert rf.true_add_counts([(0, 9), (1, 19), (2, 3)], cap) == [(9, False), (19, False), (23, True)]
    # a full final buffer (cursor = capacity - 1): one lap after its predecessor
    assert rf.true_add_counts([(0, 9), (1, 19), (2, 9)], cap) == [(9, False), (19, False), (29, True)]
    # saved 0: the one new row is ring row capacity - 1
    assert rf.true_add_counts([(0, 9), (1, 0)], cap) == [(9, False), (10, True)]
    first, gap, rows = rf.new_rows(23, cap, 19)
    assert (first, gap, rows.tolist()) == (19, 0, [9, 0, 1, 2])  # row capacity-1, then rows 0 .. saved-1
    # true counts from a missing checkpoint are gaps, not final buffers
    assert rf.true_add_counts([(0, 9), (3, 39), (4, 5)], cap) == [(9, False), (39, False), (45, True)]
    bad = [([(0, 9), (1, 3), (2, 29)], 1, "only a run's last checkpoint"),  # goes down before the end
           ([(0, 9), (2, 3)], 2, "checkpoint 1 before it is missing"),  # its predecessor is absent
           ([(0, 9), (1, 19), (2, 19)], 2, "same add_count as checkpoint 1"),
           ([(0, 9), (1, 15), (2, 3)], 2, "not a final buffer after a full ring"),
           ([(0, 0)], 0, "must be positive")]
    for stored, blamed, message in bad:
        with pytest.raises(rf.PlacementError, match=message) as info:
            rf.true_add_counts(stored, cap)
        assert info.value.checkpoint == blamed

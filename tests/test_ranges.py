"""The one range grammar (`0-9,20`, `all`) that fetch-data, shard, eval and finetune-offline share."""

import pytest

from sqlcli.commands.eval import parse_seeds
from sqlcli_core.data import fetch as F
from sqlcli_core.errors import UsageError
from sqlcli_core.ranges import format_ranges, parse_range_set, parse_ranges


def test_grammar_by_hand():
    assert parse_ranges("0-9,20", "x") == (*range(10), 20)
    assert parse_ranges(" 3 , 1-2,,2 ", "x") == (1, 2, 3)  # spaces, empty items and repeats
    assert parse_ranges("5 - 7", "x") == (5, 6, 7)
    assert parse_ranges("all", "x") is None and parse_ranges("ALL", "x") is None and parse_ranges(None, "x") is None
    assert parse_range_set("1,3", "x") == {1, 3} and parse_range_set("all", "x") is None
    assert format_ranges([20, *range(10), 4]) == "0-9,20" and format_ranges([7]) == "7"
    for text in ("0-9,20", "1", "3-4,6,8-9"):
        assert format_ranges(parse_ranges(text, "x")) == text


@pytest.mark.parametrize("text,message", [
    ("x", "bad --runs 'x'"), ("1,x", "bad --runs 'x' in '1,x'"), ("-1", "bad --runs '-1'"),
    ("9-3", "start after end"), ("0", "'0' is outside 1-5"), ("2-6", "'2-6' is outside 1-5"), (",", "no --runs"),
])
def test_bad_ranges_are_one_line(text, message):
    with pytest.raises(UsageError, match=message):
        parse_ranges(text, "--runs", lo=1, hi=5)


def test_every_command_uses_it():
    assert F.parse_runs("all") == (1, 2, 3, 4, 5) and F.parse_checkpoints("all") == tuple(range(51))
    assert parse_seeds("0-2,7") == (0, 1, 2, 7)
    with pytest.raises(UsageError, match="bad --seeds 'all'"):
        parse_seeds("all")
    with pytest.raises(UsageError, match="bad --seeds 'a'"):
        parse_seeds("a")

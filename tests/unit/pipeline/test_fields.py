"""Derived fields computed once per distinct input give exactly the row-by-row rule's answers."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from include.pipeline.fields import tags, tidy_tags

LIST_TYPE = pa.list_(pa.string())
# Spellings that matter to the tag rules: case, surrounding whitespace, blanks, IDN, the mapping's own tag, nulls.
SPELLINGS = ["APT28", "apt28", " APT28 ", "Botnet", "botnet\t", "", "  ", "ThreatConnect", "threatconnect"]
TAG = st.sampled_from([*SPELLINGS, "Émotet", "émotet", "bücher", "BÜCHER", "例え", "x" * 300, None])
ROW = st.none() | st.lists(TAG, max_size=6)
EXTRA = st.sampled_from([(), ("ThreatConnect",), ("b", "A")])


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, max_size=60), EXTRA)
def test_tags_of_distinct_lists_match_the_row_by_row_rule(rows, extra) -> None:
    column = pa.array(rows, LIST_TYPE)
    assert tags(column, extra).to_pylist() == tidy_tags(column, extra).to_pylist()


@settings(max_examples=100, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=40), st.integers(0, 20), EXTRA)
def test_a_sliced_or_chunked_column_gives_the_same_tags(rows, start, extra) -> None:
    column = pa.array(rows, LIST_TYPE).slice(min(start, len(rows) - 1))
    expected = tidy_tags(column, extra).to_pylist()
    assert tags(column, extra).to_pylist() == expected
    half = len(column) // 2
    assert tags(pa.chunked_array([column[:half], column[half:]], LIST_TYPE), extra).to_pylist() == expected


def test_lists_too_long_for_an_integer_key_fall_back_to_the_row_by_row_rule() -> None:
    many = [f"tag-{i}" for i in range(400)]
    rows = [many, list(reversed(many)), [], None, many[:3], [" Tag-1 ", "TAG-1"]]
    column = pa.array(rows, LIST_TYPE)
    result = tags(column, ("ThreatConnect",)).to_pylist()
    assert result == tidy_tags(column, ("ThreatConnect",)).to_pylist()
    assert result[0] == result[1] == sorted([*many, "ThreatConnect"], key=lambda t: (t.lower(), t))
    assert result[2] == result[3] == ["ThreatConnect"]


def test_the_same_tags_in_another_order_or_repeated_give_the_same_sorted_list() -> None:
    rows = [["b", "A"], ["A", "b"], ["a", "B", "a"], ["A", "b"]]
    column = pa.array(rows, LIST_TYPE)
    assert tags(column, ()).to_pylist() == [["A", "b"], ["A", "b"], ["a", "B"], ["A", "b"]]

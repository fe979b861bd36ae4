"""``settled``: a listing read again until one pass held still, yielding every indicator once (no network)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest

from include.threatconnect.settle import MAX_PASSES, IdSet, ListingUnsettled, settled


def _passes(*passes: tuple[list[list[Any]], bool]) -> Any:
    """A ``read_pass`` that plays the given passes in turn: (pages of ids, whether the count moved)."""
    played = iter(passes)

    def read_pass() -> Generator[list[Any], None, bool]:
        pages, moved = next(played)
        for page in pages:
            yield [{"id": i} if i is not None else {"summary": "no id"} for i in page]
        return moved

    return read_pass


def _ids(pages: list[tuple[list[Any], int]]) -> list[Any]:
    return [item.get("id") for items, _ in pages for item in items]


def _ids_as_they_come(pages: Any) -> Any:
    for items, _ in pages:
        yield from (item["id"] for item in items)


def test_a_pass_whose_count_held_and_that_repeated_nothing_is_read_once() -> None:
    pages = list(settled(_passes(([[1, 2], [3, 4], [5]], False)), "Host listing"))
    assert pages == [([{"id": 1}, {"id": 2}], 0), ([{"id": 3}, {"id": 4}], 1), ([{"id": 5}], 2)]


def test_a_moved_count_reads_the_listing_again_and_yields_only_what_the_first_pass_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 3 was edited out after page one: 4 slid onto page one's place and was skipped
    read = _passes(([[1, 2], [5, 6]], True), ([[1, 2], [4, 5], [6]], False))
    with caplog.at_level(logging.WARNING):
        pages = list(settled(read, "Host listing"))
    assert pages == [([{"id": 1}, {"id": 2}], 0), ([{"id": 5}, {"id": 6}], 1), ([{"id": 4}], 2)]
    assert "Host listing changed while it was read (pass 1 of 3: the count changed" in caplog.text


def test_an_indicator_that_comes_twice_in_one_pass_is_yielded_once_and_the_listing_read_again() -> None:
    # one added at the front pushed 2 onto the second page, and pushed 5 out of the pages read
    read = _passes(([[1, 2], [2, 3], [4]], False), ([[0, 1], [2, 3], [4, 5]], False))
    assert _ids(list(settled(read, "v2 Host listing"))) == [1, 2, 3, 4, 0, 5]


def test_a_listing_that_never_holds_still_raises_after_the_last_pass_without_repeating_itself() -> None:
    read = _passes(*[([[1, 2], [3 + n]], True) for n in range(MAX_PASSES)])
    yielded: list[Any] = []
    with pytest.raises(ListingUnsettled, match=f"kept changing while it was read \\({MAX_PASSES} passes\\)"):
        yielded.extend(_ids_as_they_come(settled(read, "Host listing")))
    assert yielded == [1, 2, 3, 4, 5]


def test_items_without_an_id_come_from_the_first_pass_only() -> None:
    read = _passes(([[1, None], [2]], True), ([[1, None], [2]], False))
    assert _ids(list(settled(read, "Host listing"))) == [1, None, 2]


def test_pages_that_bring_nothing_new_are_not_yielded() -> None:
    read = _passes(([[1, 2], [], [3]], True), ([[1, 2], [3]], False))
    assert [page for _, page in settled(read, "Host listing")] == [0, 1]


def test_only_integer_ids_are_known_text_or_boolean_ids_come_from_the_first_pass_only() -> None:
    read = _passes(([[1, "1", True], [2]], True), ([[1, "1", True], [2, 3]], False))
    assert _ids(list(settled(read, "Host listing"))) == [1, "1", True, 2, 3]


def test_an_indicator_twice_on_one_page_is_yielded_once() -> None:
    read = _passes(([[1, 2, 1]], False), ([[1, 2]], False))
    assert _ids(list(settled(read, "Host listing"))) == [1, 2]


def test_the_id_set_answers_as_a_python_set_does() -> None:
    rng = np.random.default_rng(7)
    ids, judge = IdSet(), set()
    for size in [0, 1, 3, 1000, 7, 2500, 64, 10_000, 5]:
        chunk = rng.integers(-(2**62), 2**62, size) if size % 2 else rng.integers(0, 30_000, size)
        probe = np.concatenate([chunk[: size // 2], rng.integers(0, 30_000, 500), rng.integers(-(2**62), 2**62, 50)])
        assert ids.contains(probe).tolist() == [int(value) in judge for value in probe]
        ids.add(chunk)
        judge.update(int(value) for value in chunk)
    assert ids.contains(np.array(sorted(judge), dtype=np.int64)).all()
    assert len(ids._runs) <= 2 * len(judge).bit_length()
    other = IdSet()
    other.update(ids)
    assert other.contains(np.array(sorted(judge), dtype=np.int64)).all()

"""``settled``: a listing read again until one pass held still, yielding every indicator once (no network)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import pytest

from include.threatconnect.settle import MAX_PASSES, ListingUnsettled, settled


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


def test_ids_of_text_and_numbers_are_kept_apart_and_booleans_are_not_ids() -> None:
    read = _passes(([[1, "1", True]], False))
    assert _ids(list(settled(read, "Host listing"))) == [1, "1", True]

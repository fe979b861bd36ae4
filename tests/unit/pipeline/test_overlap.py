"""read_ahead: the next page is fetched while this one is handled, in order, bounded, errors where they belong."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from include.pipeline.overlap import read_ahead


def test_every_item_comes_through_in_order() -> None:
    assert list(read_ahead(iter(range(100)))) == list(range(100))
    assert list(read_ahead([])) == []


def test_the_next_item_is_fetched_while_the_caller_still_holds_this_one() -> None:
    second_fetched = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        second_fetched.set()
        yield 2

    items = read_ahead(source())
    assert next(items) == 1
    # Without reading ahead, nothing asks for the second item until the caller asks: this would time out.
    assert second_fetched.wait(timeout=30)
    assert list(items) == [2]


def test_it_never_holds_more_than_depth_items_beyond_the_one_in_hand() -> None:
    lock = threading.Lock()
    handed = 0
    worst = 0

    def source() -> Iterator[int]:
        nonlocal worst
        for n in range(1, 201):
            with lock:
                worst = max(worst, n - handed)
            yield n

    for item in read_ahead(source(), depth=2):
        with lock:
            handed = item
    # The item being fetched, at most ``depth`` waiting, and the one in the caller's hand.
    assert worst <= 2 + 2


def test_an_error_of_the_source_is_raised_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("ThreatConnect went away")

    seen: list[int] = []

    def consume() -> None:
        seen.extend(read_ahead(source()))

    with pytest.raises(ConnectionError, match="went away"):
        consume()
    assert seen == [1, 2]


def test_leaving_early_stops_the_reader_and_closes_the_source() -> None:
    closed = threading.Event()
    fetched = []

    def source() -> Iterator[int]:
        try:
            for n in range(1_000_000):
                fetched.append(n)
                yield n
        finally:
            closed.set()

    items = read_ahead(source(), name="test-reader")
    assert next(items) == 0
    items.close()
    assert closed.is_set()
    assert len(fetched) <= 3
    assert not any(t.name == "test-reader" for t in threading.enumerate())


def test_depth_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(read_ahead([1], depth=0))

"""The normalize stage's batch map: answers in input order, a bounded number of calls at once, errors raised."""

from __future__ import annotations

import threading
import time

import pytest

from include.pipeline.stages import _map_ahead


def test_answers_come_in_input_order_even_when_a_later_call_finishes_first() -> None:
    def slow_first(n: int) -> int:
        time.sleep(0.05 if n % 2 == 0 else 0.0)
        return n * 10

    assert list(_map_ahead(slow_first, iter(range(7)))) == [n * 10 for n in range(7)]


@pytest.mark.parametrize("ahead", [1, 2, 3])
def test_at_most_ahead_calls_run_at_once(ahead) -> None:
    lock = threading.Lock()
    running, most = 0, 0

    def counted(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return n

    assert list(_map_ahead(counted, iter(range(12)), ahead=ahead)) == list(range(12))
    assert 1 <= most <= ahead


def test_batches_are_pulled_only_a_few_ahead_of_the_answers() -> None:
    pulled: list[int] = []

    def source():
        for n in range(20):
            pulled.append(n)
            yield n

    answers = _map_ahead(lambda n: n, source(), ahead=2)
    assert next(answers) == 0
    assert len(pulled) <= 3


def test_an_error_of_a_call_reaches_the_caller_after_the_answers_before_it() -> None:
    def fails_on_three(n: int) -> int:
        if n == 3:
            raise ValueError("bad batch 3")
        return n

    answers = _map_ahead(fails_on_three, iter(range(6)))
    assert [next(answers) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad batch 3"):
        next(answers)

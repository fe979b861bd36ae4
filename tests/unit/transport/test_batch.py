"""The batch helper shared by Graph, Sentinel and Defender: per-item retry, rejection, and halving a refused batch."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from include.transport.batch import (
    FAILED,
    OK,
    REJECTED,
    BatchRefused,
    ItemAnswer,
    configured_in_flight,
    send_in_batches,
)


def test_items_are_sent_in_batches_of_the_given_size_and_each_gets_its_target_id() -> None:
    sent: list[list[int]] = []

    def send(batch: list[int]) -> list[ItemAnswer]:
        sent.append(batch)
        return [ItemAnswer(f"id-{k}") for k in batch]

    outcomes = send_in_batches(list(range(7)), send, batch_size=3, max_item_attempts=2)
    assert sent == [[0, 1, 2], [3, 4, 5], [6]]
    assert {k: (o.status, o.target_id, o.attempts) for k, o in outcomes.items()} == {
        k: (OK, f"id-{k}", 1) for k in range(7)
    }


def test_a_transient_failure_is_resent_alone_until_the_attempts_run_out() -> None:
    sent: list[list[str]] = []

    def send(batch: list[str]) -> list[ItemAnswer]:
        sent.append(batch)
        return [ItemAnswer(error="busy") if k == "b" else ItemAnswer(k) for k in batch]

    outcomes = send_in_batches(["a", "b", "c"], send, batch_size=10, max_item_attempts=3)
    assert sent == [["a", "b", "c"], ["b"], ["b"]]
    assert (outcomes["b"].status, outcomes["b"].attempts, outcomes["b"].error) == (FAILED, 3, "busy")
    assert outcomes["a"].status == outcomes["c"].status == OK


def test_a_content_refusal_is_rejected_at_once() -> None:
    def send(batch: list[str]) -> list[ItemAnswer]:
        return [ItemAnswer(error="invalid value", transient=False) if k == "bad" else ItemAnswer(k) for k in batch]

    outcomes = send_in_batches(["ok", "bad"], send, batch_size=10, max_item_attempts=3)
    assert (outcomes["bad"].status, outcomes["bad"].attempts) == (REJECTED, 1)


def test_an_item_still_failing_can_end_rejected_where_repeats_mean_content() -> None:
    outcomes = send_in_batches(
        ["x"], lambda b: [ItemAnswer(error="record error")], batch_size=1, max_item_attempts=2, exhausted=REJECTED
    )
    assert (outcomes["x"].status, outcomes["x"].attempts) == (REJECTED, 2)


def test_a_batch_refused_whole_is_halved_until_the_bad_item_stands_alone() -> None:
    requests_made = 0

    def send(batch: list[int]) -> list[ItemAnswer]:
        nonlocal requests_made
        requests_made += 1
        if 37 in batch:
            raise BatchRefused("HTTP 400: item 37 is malformed")
        return [ItemAnswer(str(k)) for k in batch]

    outcomes = send_in_batches(list(range(64)), send, batch_size=64, max_item_attempts=3)
    assert requests_made == 1 + 2 * 6  # the whole batch, then two halves at each of log2(64) levels
    assert outcomes[37].status == REJECTED
    assert outcomes[37].error == "HTTP 400: item 37 is malformed"
    assert outcomes[37].attempts == 1  # splitting is not a retry
    assert all(outcomes[k].status == OK for k in range(64) if k != 37)


def test_errors_other_than_a_refused_batch_propagate() -> None:
    def send(batch: list[int]) -> list[ItemAnswer]:
        raise RuntimeError("service down")

    with pytest.raises(RuntimeError, match="service down"):
        send_in_batches([1], send, batch_size=1, max_item_attempts=1)


def test_a_service_answering_the_wrong_number_of_items_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="2 answers for a batch of 1"):
        send_in_batches([1], lambda b: [ItemAnswer("a"), ItemAnswer("b")], batch_size=1, max_item_attempts=1)


# ----------------------------------------------------------------- several requests in flight


def test_with_two_in_flight_the_next_batch_is_sent_while_the_first_waits_for_its_answer() -> None:
    # The first two batches are answered only once both were sent: one at a time, the barrier would break.
    both_sent = threading.Barrier(2, timeout=30)

    def send(batch: list[int]) -> list[ItemAnswer]:
        if batch[0] in (0, 3):
            both_sent.wait()
        return [ItemAnswer(f"id-{k}") for k in batch]

    outcomes = send_in_batches(list(range(7)), send, batch_size=3, max_item_attempts=1, in_flight=2)
    assert {k: (o.status, o.target_id) for k, o in outcomes.items()} == {k: (OK, f"id-{k}") for k in range(7)}


def test_never_more_requests_wait_for_their_answers_than_in_flight_allows() -> None:
    lock = threading.Lock()
    waiting, peak = 0, 0
    first_three = threading.Barrier(3, timeout=30)

    def send(batch: list[int]) -> list[ItemAnswer]:
        nonlocal waiting, peak
        with lock:
            waiting += 1
            peak = max(peak, waiting)
        try:
            if batch[0] < 6:
                first_three.wait()
            return [ItemAnswer(str(k)) for k in batch]
        finally:
            with lock:
                waiting -= 1

    outcomes = send_in_batches(list(range(40)), send, batch_size=2, max_item_attempts=1, in_flight=3)
    assert peak == 3
    assert len(outcomes) == 40


def _content_judged_send(seen: dict[int, int], lock: threading.Lock) -> Callable[[list[int]], list[ItemAnswer]]:
    """A service that judges by content, never by arrival order: 13 gets a whole batch refused, multiples of 11
    are refused for their content, multiples of 5 fail transiently on their first try."""

    def send(batch: list[int]) -> list[ItemAnswer]:
        with lock:
            for key in batch:
                seen[key] = seen.get(key, 0) + 1
            tries = {key: seen[key] for key in batch}
        if 13 in batch:
            raise BatchRefused("HTTP 400: one item is malformed")
        return [
            ItemAnswer(error="bad", transient=False)
            if k % 11 == 0
            else ItemAnswer(error="busy")
            if k % 5 == 0 and tries[k] == 1
            else ItemAnswer(f"id-{k}")
            for k in batch
        ]

    return send


def test_what_ends_each_item_does_not_depend_on_how_many_requests_are_in_flight() -> None:
    ends = {}
    for in_flight in (1, 4):
        send = _content_judged_send({}, threading.Lock())
        outcomes = send_in_batches(list(range(1, 61)), send, batch_size=8, max_item_attempts=3, in_flight=in_flight)
        ends[in_flight] = {k: (o.status, o.attempts, o.target_id) for k, o in outcomes.items()}
    assert ends[4] == ends[1]
    assert ends[4][13][0] == REJECTED
    assert {ends[4][k][0] for k in (11, 22, 33, 44, 55)} == {REJECTED}
    assert {ends[4][k][:2] for k in (5, 20, 25, 30)} == {(OK, 2)}
    assert ends[4][1] == (OK, 1, "id-1")


def test_an_error_is_raised_only_once_every_request_in_flight_has_ended() -> None:
    lock = threading.Lock()
    started: set[int] = set()
    ended: set[int] = set()
    all_sent = threading.Barrier(3, timeout=30)

    def send(batch: list[int]) -> list[ItemAnswer]:
        with lock:
            started.add(batch[0])
        try:
            if batch[0] < 6:
                all_sent.wait()
            if batch[0] == 0:
                raise RuntimeError("outage")
            return [ItemAnswer(str(k)) for k in batch]
        finally:
            with lock:
                ended.add(batch[0])

    with pytest.raises(RuntimeError, match="outage"):
        send_in_batches(list(range(20)), send, batch_size=2, max_item_attempts=1, in_flight=3)
    assert {0, 2, 4} <= started
    assert ended == started


def test_in_flight_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        send_in_batches([1], lambda batch: [ItemAnswer("x")], batch_size=1, max_item_attempts=1, in_flight=0)


@pytest.mark.parametrize(("extra", "expected"), [({}, 4), ({"max_in_flight": ""}, 4), ({"max_in_flight": "12"}, 12)])
def test_a_connection_may_set_how_many_requests_wait_at_once(extra: dict[str, str], expected: int) -> None:
    assert configured_in_flight(extra, 4) == expected


@pytest.mark.parametrize("value", ["0", "17", "many", -1])
def test_a_window_outside_one_to_sixteen_is_a_configuration_error_naming_the_setting(value: object) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        configured_in_flight({"max_in_flight": value}, 4)

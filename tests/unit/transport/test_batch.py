"""The batch helper shared by Graph, Sentinel and Defender: per-item retry, rejection, and halving a refused batch."""

from __future__ import annotations

import pytest

from include.transport.batch import FAILED, OK, REJECTED, BatchRefused, ItemAnswer, send_in_batches


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

"""Batch endpoints with per-item results: batching, per-item retry, and splitting a batch refused as a whole.

Graph's ``submitTiIndicators``/``updateTiIndicators``/``deleteTiIndicatorsByExternalId``, Sentinel's upload and
Defender's import all take up to N items and answer per item. What they share is written here once:

- an item that failed for a transient reason is resent (with the other failures) up to ``max_item_attempts``
  times, then reported ``failed`` (or ``exhausted``: Sentinel's record errors are about content once they repeat);
- an item refused for its content is reported ``rejected`` at once;
- a request refused whole for its content (``send`` raises :class:`BatchRefused`) is split in halves until the
  refused items stand alone, so one bad item never takes 99 good ones down with it. Splitting is not a retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

OK = "ok"
REJECTED = "rejected"
FAILED = "failed"


class BatchRefused(Exception):
    """The whole request was refused for its content (a 4xx about the body): split it to find the bad items."""


@dataclass(frozen=True)
class ItemAnswer:
    """What the service said about one item of a batch.

    Attributes:
        target_id: the service's id for the item when it succeeded.
        error: why it failed, None on success.
        transient: whether another try may succeed (False: the content was refused).
    """

    target_id: str | None = None
    error: str | None = None
    transient: bool = True


@dataclass(frozen=True)
class ItemOutcome(Generic[K]):
    """The end of one item: ``status`` is ``ok``, ``rejected`` or ``failed``."""

    key: K
    status: str
    target_id: str | None
    attempts: int
    error: str | None = None


def send_in_batches(
    keys: Sequence[K],
    send: Callable[[list[K]], Sequence[ItemAnswer]],
    batch_size: int,
    max_item_attempts: int,
    exhausted: str = FAILED,
    action: str = "send",
) -> dict[K, ItemOutcome[K]]:
    """Send ``keys`` in batches of ``batch_size``; one outcome per key.

    Args:
        keys: the items (unique, hashable), in order.
        send: sends one batch and answers one :class:`ItemAnswer` per key, in order; raises :class:`BatchRefused`
            when the request was refused whole for its content; anything else it raises propagates (throttling,
            outages, credentials: the task retry is the next layer).
        batch_size: items per request.
        max_item_attempts: how many requests may carry one item that keeps failing transiently.
        exhausted: the status of an item still failing after ``max_item_attempts``.
        action: names the operation in log lines.
    """
    if batch_size < 1 or max_item_attempts < 1:
        raise ValueError("batch_size and max_item_attempts must be >= 1")
    done: dict[K, ItemOutcome[K]] = {}
    attempts = dict.fromkeys(keys, 0)
    pending = list(keys)
    while pending:
        retry: list[K] = []
        batches = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
        while batches:
            batch = batches.pop(0)
            for key in batch:
                attempts[key] += 1
            try:
                answers = list(send(batch))
            except BatchRefused as refused:
                if len(batch) > 1:
                    middle = len(batch) // 2
                    batches[:0] = [batch[:middle], batch[middle:]]
                    for key in batch:
                        attempts[key] -= 1
                    continue
                answers = [ItemAnswer(error=str(refused) or "refused", transient=False)]
            if len(answers) != len(batch):
                raise RuntimeError(f"{action}: {len(answers)} answers for a batch of {len(batch)}")
            for key, answer in zip(batch, answers, strict=True):
                if answer.error is None:
                    done[key] = ItemOutcome(key, OK, answer.target_id, attempts[key])
                elif not answer.transient:
                    done[key] = ItemOutcome(key, REJECTED, answer.target_id, attempts[key], answer.error)
                elif attempts[key] < max_item_attempts:
                    retry.append(key)
                else:
                    done[key] = ItemOutcome(key, exhausted, answer.target_id, attempts[key], answer.error)
        pending = retry
        if pending:
            log.info("%s: resending %s items that failed", action, len(pending))
    return done

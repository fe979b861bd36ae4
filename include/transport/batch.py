"""Batch endpoints with per-item results: batching, per-item retry, and splitting a batch refused as a whole.

Graph's ``submitTiIndicators``/``updateTiIndicators``/``deleteTiIndicatorsByExternalId``, Sentinel's upload and
Defender's import all take up to N items and answer per item. What they share is written here once:

- an item that failed for a transient reason is resent (with the other failures) up to ``max_item_attempts``
  times, then reported ``failed`` (or ``exhausted``: Sentinel's record errors are about content once they repeat);
- an item refused for its content is reported ``rejected`` at once;
- a request refused whole for its content (``send`` raises :class:`BatchRefused`) is split in halves until the
  refused items stand alone, so one bad item never takes 99 good ones down with it. Splitting is not a retry;
- up to ``in_flight`` requests wait for their answers at once (the shared budget still paces them).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

OK = "ok"
REJECTED = "rejected"
FAILED = "failed"


#: The most requests one batch helper keeps waiting at once, whatever a Connection asks (the HTTP pool's size).
MAX_IN_FLIGHT = 16


def configured_in_flight(extra: Mapping[str, Any], default: int) -> int:
    """A Connection's ``max_in_flight`` extra (1 to :data:`MAX_IN_FLIGHT`), or the target's default when absent."""
    raw = extra.get("max_in_flight")
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise ValueError(f"max_in_flight must be a whole number from 1 to {MAX_IN_FLIGHT}, not {raw!r}")
    return value


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
    in_flight: int = 1,
) -> dict[K, ItemOutcome[K]]:
    """Send ``keys`` in batches of ``batch_size``, up to ``in_flight`` requests at once; one outcome per key.

    With ``in_flight`` above 1 the batches are sent from a small thread pool, so a batch waiting for its answer (or
    for the shared request budget) never holds back the next one: against a service that takes a second to answer,
    one request at a time would use a fraction of the budget. The budget itself is enforced below, in the
    transport, so more in flight never means more requests than allowed. What ends each key is the same as sending
    one batch at a time: only the order in which batches finish may differ.

    Args:
        keys: the items (unique, hashable), in order.
        send: sends one batch and answers one :class:`ItemAnswer` per key, in order; raises :class:`BatchRefused`
            when the request was refused whole for its content; anything else it raises propagates (throttling,
            outages, credentials: the task retry is the next layer), once the requests already in flight have
            ended (none is started after it).
        batch_size: items per request.
        max_item_attempts: how many requests may carry one item that keeps failing transiently.
        exhausted: the status of an item still failing after ``max_item_attempts``.
        action: names the operation in log lines.
        in_flight: how many requests may be waiting for their answers at once (1: one after another, inline).
    """
    if batch_size < 1 or max_item_attempts < 1 or in_flight < 1:
        raise ValueError("batch_size, max_item_attempts and in_flight must be >= 1")
    done: dict[K, ItemOutcome[K]] = {}
    attempts = dict.fromkeys(keys, 0)
    pending = list(keys)
    with _pool(in_flight) as pool:
        while pending:
            retry: list[K] = []
            queue = deque(pending[start : start + batch_size] for start in range(0, len(pending), batch_size))
            running: dict[Future[list[ItemAnswer]], list[K]] = {}
            failure: BaseException | None = None
            try:
                while queue or running:
                    while queue and len(running) < in_flight and failure is None:
                        batch = queue.popleft()
                        for key in batch:
                            attempts[key] += 1
                        running[pool.submit(lambda b=batch: list(send(b)))] = batch
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    # In the order they were sent, so that with one in flight nothing changes.
                    for future in [f for f in running if f in finished]:
                        batch = running.pop(future)
                        try:
                            answers = future.result()
                        except BatchRefused as refused:
                            if len(batch) > 1:
                                middle = len(batch) // 2
                                queue.extendleft([batch[middle:], batch[:middle]])
                                for key in batch:
                                    attempts[key] -= 1
                                continue
                            answers = [ItemAnswer(error=str(refused) or "refused", transient=False)]
                        except BaseException as exc:
                            failure = failure or exc
                            continue
                        if len(answers) != len(batch):
                            failure = failure or RuntimeError(
                                f"{action}: {len(answers)} answers for a batch of {len(batch)}"
                            )
                            continue
                        _settle(batch, answers, attempts, max_item_attempts, exhausted, done, retry)
            finally:
                if running:  # an interrupt: let what was sent end before leaving
                    wait(running)
            if failure is not None:
                raise failure
            pending = retry
            if pending:
                log.info("%s: resending %s items that failed", action, len(pending))
    return done


def _settle(
    batch: list[K],
    answers: list[ItemAnswer],
    attempts: dict[K, int],
    max_item_attempts: int,
    exhausted: str,
    done: dict[K, ItemOutcome[K]],
    retry: list[K],
) -> None:
    """Record what one answered batch says of each key: done, or to be sent again."""
    for key, answer in zip(batch, answers, strict=True):
        if answer.error is None:
            done[key] = ItemOutcome(key, OK, answer.target_id, attempts[key])
        elif not answer.transient:
            done[key] = ItemOutcome(key, REJECTED, answer.target_id, attempts[key], answer.error)
        elif attempts[key] < max_item_attempts:
            retry.append(key)
        else:
            done[key] = ItemOutcome(key, exhausted, answer.target_id, attempts[key], answer.error)


class _Inline(Executor):
    """An executor that runs each call at once, in the caller's thread: one request in flight, no thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@contextlib.contextmanager
def _pool(in_flight: int) -> Iterator[Executor]:
    if in_flight == 1:
        yield _Inline()
        return
    with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch-send") as pool:
        yield pool

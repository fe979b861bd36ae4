"""Overlap waiting with working: read the next page from a service while this one is parsed and written.

A page of 10,000 indicators keeps ThreatConnect busy for a second or more; parsing and writing it keeps us busy for
a fraction of that. Done one after the other, each waits for the other. :func:`read_ahead` fetches the next item of
an iterator in a background thread while the caller works on the current one, holding at most ``depth`` items
beyond the one in hand, so memory stays bounded (one or two pages).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterable[T], depth: int = 1, name: str = "read-ahead") -> Iterator[T]:
    """Yield what ``items`` yields, in order, fetching up to ``depth`` items ahead in a background thread.

    What ``items`` raises is raised here, at the point where the item would have come, after the items before it.
    Leaving the loop early (an error in the caller, ``break``) stops the thread before it fetches more than the
    ``depth`` items already in hand; the source is closed in its own thread.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Hand one item over, unless the consumer has gone; True when handed over."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:
            offer(_Failed(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()

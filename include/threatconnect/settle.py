"""Offset paging over a listing that can change while it is read: read it again until one pass saw it hold still.

ThreatConnect pages by ``resultStart`` offsets, and its docs warn that the offsets are not stable while indicators
change. An indicator edited, deleted or added while a listing of several pages is read shifts every later one by a
place: the one at the next page boundary is then skipped (or read twice). The skipped one lies inside the window,
below the watermark the run then commits, so no later live run would read it again: it would be lost for good.

``settled`` reads a listing in passes. A pass is trusted when it was one page (one answer is one snapshot), or when
the server's count of the listing was the same before and after it and no indicator came twice. Otherwise the
listing is read again, and only the indicators no earlier pass yielded are yielded, so nothing is yielded twice.
Only the ids are remembered, not the pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Passes over one listing before giving up on it for this try (the task then fails and Airflow retries it).
MAX_PASSES = 3

#: A pass: a generator of pages (lists of items) that returns whether the server's count changed while it ran,
#: asking for the count again only when it read more than one page.
Pass = Callable[[], Generator[list[Any], None, bool]]


class ListingUnsettled(RuntimeError):
    """The listing kept changing while it was read, in every pass."""


def settled(read_pass: Pass, what: str, max_passes: int = MAX_PASSES) -> Iterator[tuple[list[Any], int]]:
    """Yield ``(items, page)`` of a listing read until a pass is trusted; ``page`` numbers every page yielded.

    An item is known by its integer ``id``; an item without one is taken from the first pass only. The ids are
    kept in sorted int64 runs, 8 bytes an indicator, so a listing of millions stays small beside its pages.

    Raises:
        ListingUnsettled: no pass out of ``max_passes`` held still.
    """
    earlier = IdSet()  # ids an earlier pass read (and yielded)
    page = 0
    for attempt in range(1, max_passes + 1):
        pages = read_pass()
        current = IdSet()
        repeated = 0
        while True:
            try:
                items = next(pages)
            except StopIteration as stop:
                count_moved = bool(stop.value)
                break
            keys, keyed, ids = _ids(items)
            again = current.contains(ids)
            order = np.argsort(ids, kind="stable")
            twice = np.zeros(len(ids), dtype=bool)
            twice[order[1:]] = ids[order[1:]] == ids[order[:-1]]  # on this page already
            again |= twice
            repeated += int(again.sum())
            current.add(ids)
            if attempt == 1 and not again.any():
                fresh = items  # the usual page: nothing read before
            else:
                take = ~again & ~earlier.contains(ids)
                wanted = set(np.asarray(keyed, dtype=np.int64)[take].tolist())
                fresh = [
                    item
                    for index, (item, key) in enumerate(zip(items, keys, strict=True))
                    if (index in wanted) or (key is None and attempt == 1)
                ]
            if fresh:
                yield fresh, page
                page += 1
        if not count_moved and not repeated:
            return
        log.warning(
            "ThreatConnect %s changed while it was read (pass %s of %s: %s; %s indicators came twice); "
            "reading it again for the indicators the shifted pages skipped",
            what,
            attempt,
            max_passes,
            "the count changed" if count_moved else "the count held",
            repeated,
        )
        earlier.update(current)
    raise ListingUnsettled(
        f"ThreatConnect {what} kept changing while it was read ({max_passes} passes): offsets shift while "
        "indicators change, so a page may have skipped some; the task fails rather than lose them, and its retry "
        "reads the listing again"
    )


class IdSet:
    """A growing set of int64 ids as sorted runs merged like a binary counter (O(log n) runs, 8 bytes an id)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []  # sorted, unique, longest first

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the set holds (a new boolean array)."""
        found = np.zeros(len(ids), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, ids), len(run) - 1)
            found |= run[at] == ids
        return found

    def add(self, ids: np.ndarray) -> None:
        run = _sorted_unique(ids)
        while self._runs and len(self._runs[-1]) <= len(run):
            run = _sorted_unique(np.concatenate([self._runs.pop(), run]))
        if len(run):
            self._runs.append(run)

    def update(self, other: IdSet) -> None:
        for run in other._runs:
            self.add(run)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # np.unique hashes (numpy 2): a sort and a neighbour compare is several times faster on ids
    ordered = np.sort(values, kind="stable")  # timsort: two sorted runs merge in linear time
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _ids(items: list[Any]) -> tuple[list[int | None], list[int], np.ndarray]:
    """Each item's id (None when it has no integer id), the positions that have one, and those ids as int64."""
    try:
        raw = [item.get("id") for item in items]
        if all(type(key) is int for key in raw):  # the usual page (bool is not int here)
            return raw, list(range(len(raw))), np.fromiter(raw, np.int64, len(raw))
    except (AttributeError, OverflowError):  # an item that is not an object, an id beyond int64
        pass
    keys = [_key(item) for item in items]
    keyed = [index for index, key in enumerate(keys) if key is not None]
    return keys, keyed, np.fromiter((keys[index] for index in keyed), np.int64, len(keyed))


def _key(item: Any) -> int | None:
    key = item.get("id") if isinstance(item, dict) else None
    return key if isinstance(key, int) and not isinstance(key, bool) and -(2**63) <= key < 2**63 else None

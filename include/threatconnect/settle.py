"""Offset paging over a listing that can change while it is read: read it again until one pass saw it hold still.

ThreatConnect pages by ``resultStart`` offsets, and its docs warn that the offsets are not stable while indicators
change. An indicator edited, deleted or added while a listing of several pages is read shifts every later one by a
place: the one at the next page boundary is then skipped (or read twice). The skipped one lies inside the window,
below the watermark the run then commits, so no later live run would read it again: it would be lost for good.

``settled`` reads a listing in passes. A pass is trusted when it was one page (one answer is one snapshot), or when
the server's count of the listing was the same before and after it and no indicator came twice. Otherwise the
listing is read again, and only the indicators no earlier pass yielded are yielded, so nothing is yielded twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

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

    An item is known by its ``id``; an item without a usable id is taken from the first pass only.

    Raises:
        ListingUnsettled: no pass out of ``max_passes`` held still.
    """
    seen: dict[Any, int] = {}  # id -> the last pass that read it
    page = 0
    for attempt in range(1, max_passes + 1):
        pages = read_pass()
        repeated = 0
        while True:
            try:
                items = next(pages)
            except StopIteration as stop:
                count_moved = bool(stop.value)
                break
            fresh = []
            for item in items:
                key = _key(item)
                if key is None:
                    if attempt == 1:
                        fresh.append(item)
                    continue
                last = seen.get(key)
                if last == attempt:
                    repeated += 1
                    continue
                seen[key] = attempt
                if last is None:
                    fresh.append(item)
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
    raise ListingUnsettled(
        f"ThreatConnect {what} kept changing while it was read ({max_passes} passes): offsets shift while "
        "indicators change, so a page may have skipped some; the task fails rather than lose them, and its retry "
        "reads the listing again"
    )


def _key(item: Any) -> Any:
    key = item.get("id") if isinstance(item, dict) else None
    return key if isinstance(key, int | str) and not isinstance(key, bool) else None

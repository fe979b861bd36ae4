"""Per-type high watermarks: where a run starts reading and how far a run may move the mark."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from include.pipeline import times


@dataclass(frozen=True)
class Window:
    """The half-open ``[start, end)`` range of ThreatConnect ``lastModified`` a run reads for one type."""

    start: dt.datetime
    end: dt.datetime
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> Window:
        """The inverse of :meth:`as_dict`."""
        return cls(parse_iso(data["start"]), parse_iso(data["end"]), data["reason"])


def iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, second precision when possible (what XCom and ThreatConnect get)."""
    return times.iso(value)


def parse_iso(value: str) -> dt.datetime:
    """The inverse of :func:`iso` (any ISO 8601 zone or fraction; no zone is UTC)."""
    parsed = times.parse(value)
    if parsed is None:
        raise ValueError("an empty watermark")
    return parsed


def extraction_window(
    indicator_type: str,
    interval_start: dt.datetime,
    interval_end: dt.datetime,
    previous: Mapping[str, str] | None,
    live: bool,
) -> Window:
    """Decide what one run reads for one type.

    A live (scheduled or manual) run reads from the earlier of its data interval's start and the type's last
    committed watermark, so a failed or skipped run leaves no gap, and up to its interval's end. A backfill run
    reads exactly its data interval and ignores the live watermark, so replaying a past range is reproducible.

    Args:
        indicator_type: the ThreatConnect type.
        interval_start: the run's data interval start.
        interval_end: the run's data interval end.
        previous: the last committed watermarks, ``{type: iso timestamp}``, or None when there are none.
        live: False for backfill runs.
    """
    if interval_end <= interval_start:
        raise ValueError(
            f"empty data interval [{iso(interval_start)}, {iso(interval_end)}): the DAG needs a timetable with real "
            "intervals (CronDataIntervalTimetable), not Airflow 3's zero-width @daily"
        )
    if not live:
        return Window(interval_start, interval_end, "backfill: exactly the data interval")
    mark = (previous or {}).get(indicator_type)
    if mark is None:
        return Window(interval_start, interval_end, "first run for this type: the data interval")
    mark_time = parse_iso(mark)
    if mark_time < interval_start:
        return Window(mark_time, interval_end, f"resuming from the watermark {mark}")
    return Window(interval_start, interval_end, "the data interval (watermark is inside it)")


def advance(previous: str | None, loaded: pd.DataFrame) -> str | None:
    """The new watermark for one type after load and verify.

    ``loaded`` holds the run's loaded rows with ``last_modified`` and ``status`` (``ok``/``failed``). The mark is the
    latest ``lastModified`` delivered, but never past an indicator that was not delivered: with failures it stops at
    the earliest failed one, which the next run (reading ``lastModified >= mark``) picks up again.
    """
    if loaded.empty:
        return previous
    failed = loaded.loc[loaded["status"] == "failed", "last_modified"]
    if not failed.empty:
        return iso(failed.min().to_pydatetime())
    delivered = loaded.loc[loaded["status"] == "ok", "last_modified"]
    if delivered.empty:
        return previous
    latest = delivered.max().to_pydatetime()
    if previous is not None and parse_iso(previous) > latest:
        return previous
    return iso(latest)


def hold(previous: Mapping[str, str], window_starts: Mapping[str, str]) -> dict[str, str]:
    """The marks of a run before any type's verify counts: unverified types stay where this run began reading.

    A type with a mark keeps it. A type without one (its first run failed) gets the start of the window this run
    read, so the next run reads that window again instead of only its own interval: a failed first run must
    not leave a gap either.
    """
    marks = dict(previous)
    for indicator_type, start in window_starts.items():
        marks.setdefault(indicator_type, start)
    return marks


def key(indicator_type: str, target: str, targets: tuple[str, ...] | list[str]) -> str:
    """The watermark's name for one (type, target): the type alone while a run has one target (as before
    several targets existed), ``"<type> → <target>"`` once it has several."""
    return indicator_type if len(targets) == 1 else f"{indicator_type} → {target}"


def target_marks(
    previous: Mapping[str, str],
    indicator_type: str,
    targets: tuple[str, ...] | list[str],
) -> dict[str, str | None]:
    """Each target's last committed mark for one type. The first target of a list inherits the type's mark from
    the time the run had only that one (adding a target never resets the others)."""
    marks: dict[str, str | None] = {}
    for position, target in enumerate(targets):
        mark = previous.get(key(indicator_type, target, targets))
        if mark is None and position == 0:
            mark = previous.get(indicator_type)
        marks[target] = mark
    return marks


#: Where a target that joins later starts reading: everything ThreatConnect holds, so it is back-filled.
BEGINNING = "1970-01-01T00:00:00Z"


def joint_mark(marks: Mapping[str, str | None]) -> str | None:
    """The mark one extraction for several targets starts from: the earliest of theirs. A target without a mark
    beside targets with one is new: it needs everything (``BEGINNING``), the others re-plan what they hold."""
    known = [m for m in marks.values() if m is not None]
    if not known:
        return None
    if len(known) < len(marks):
        return BEGINNING
    return min(known, key=parse_iso)

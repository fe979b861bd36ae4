"""The one place that reads and writes timestamps: ISO 8601 text <-> aware UTC datetimes, one value or a column."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from include.pipeline.schema import TS

_TIMESPECS = ("seconds", "milliseconds", "microseconds", "auto")


_ZONE_UTC = zoneinfo.ZoneInfo("UTC")  # what Arrow's UTC timestamps carry in pandas; dt.UTC is the other spelling


def as_utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC datetime; a naive one is taken as UTC (every source and snapshot of this project is UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    if value.tzinfo is dt.UTC:
        return value  # already there (astimezone would copy it, at a cost every row of a load pays)
    return value.astimezone(dt.UTC)


def parse(value: Any) -> dt.datetime | None:
    """Parse one timestamp leniently into an aware UTC datetime.

    Takes what ThreatConnect, Graph, Sentinel (STIX) and Defender send: ``Z`` (either case) or an offset
    (``+01:00`` or ``+0100``), no zone at all (taken as UTC), a space instead of the ``T``, and a fraction of
    any length (``datetime.fromisoformat`` keeps microseconds and drops the rest since Python 3.11). A
    ``datetime`` (or ``pandas.Timestamp``) passes through, converted to UTC.

    Args:
        value: ISO 8601 text, a datetime, or None / ``""``.

    Returns:
        An aware UTC datetime, or None for None and ``""``.

    Raises:
        ValueError: the text is not an ISO 8601 timestamp.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return as_utc(value)
    text = str(value).strip().replace(" ", "T", 1)
    if text.endswith("z"):
        text = text[:-1] + "Z"
    return as_utc(dt.datetime.fromisoformat(text))


def parse_or_none(value: Any) -> dt.datetime | None:
    """:func:`parse`, but None for anything unreadable (for values that are informational or compared only)."""
    try:
        return parse(value)
    except (TypeError, ValueError):
        return None


def iso(value: dt.datetime, timespec: str = "auto") -> str:
    """ISO 8601 in UTC with a ``Z`` suffix.

    Args:
        value: the moment (a naive one is taken as UTC).
        timespec: ``seconds``, ``milliseconds`` (truncated, STIX's precision), ``microseconds``, or ``auto``
            (seconds when the value has no fraction, else microseconds).
    """
    if timespec not in _TIMESPECS:
        raise ValueError(f"timespec must be one of {_TIMESPECS}, got {timespec!r}")
    # Written field by field: the same text as ``isoformat`` (fractions truncated, never rounded), without the
    # copies ``astimezone``/``replace`` make of a pandas Timestamp; plan, write and verify call this for every row.
    utc = value if value.tzinfo is _ZONE_UTC else as_utc(value)
    micro = utc.microsecond
    if timespec == "auto":
        timespec = "microseconds" if micro else "seconds"
    head = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    if timespec == "seconds":
        return head + "Z"
    if timespec == "milliseconds":
        return f"{head}.{micro // 1000:03d}Z"
    return f"{head}.{micro:06d}Z"


def column(values: Sequence[Any]) -> pa.Array:
    """A ``TS`` column from ISO texts (or datetimes, None): one page of ThreatConnect dates.

    Arrow's C++ ISO parser takes ``Z`` and ``+hh:mm`` at full speed; only a column with zone-less or otherwise
    unusual dates pays for :func:`parse` per value.
    """
    try:
        return pa.array(values, type=pa.string()).cast(TS)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([parse(value) for value in values], type=TS)

"""The one reader of ``Retry-After``: delta-seconds or an HTTP date in any zone; unreadable means "no hint"."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from typing import Any


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value; None when absent or unreadable.

    HTTP dates may carry ``GMT``, ``+0000`` or ``-0000`` (RFC 2822's "unknown zone", which ``email.utils`` turns
    into a naive datetime): every zone-less date is taken as UTC, so a naive date never meets an aware clock.
    A date in the past means "now" (0 seconds). An unreadable value returns None and the caller backs off.

    Args:
        value: the header value.
        now: the current time for HTTP dates (defaults to the clock; injectable for tests).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        reference = now or dt.datetime.now(dt.UTC)
        if reference.tzinfo is None:
            reference = reference.replace(tzinfo=dt.UTC)
        seconds = (when - reference).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def retry_after(response: Any) -> float | None:
    """Seconds a response's ``Retry-After`` header asks to wait (see :func:`parse_retry_after`), or None."""
    headers = getattr(response, "headers", None)
    return parse_retry_after(headers.get("Retry-After") if headers is not None else None)

"""The one reader of a server's "wait this long": ``Retry-After`` (seconds or an HTTP date) and the body's hint."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
from typing import Any

# Sentinel documents its throttle in the body only ("Rate limit is exceeded. Try again in 45 seconds.").
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?) second", re.IGNORECASE)


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


def retry_after(response: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds a response asks to wait, or None when it gives no readable hint.

    The larger of the ``Retry-After`` header (see :func:`parse_retry_after`) and a "Try again in N seconds" hint in
    the body (Sentinel documents only the body text; both count when both are there).
    """
    headers = getattr(response, "headers", None)
    candidates: list[float] = []
    header = parse_retry_after(headers.get("Retry-After") if headers is not None else None, now)
    if header is not None:
        candidates.append(header)
    try:
        text = response.text or ""
    except (AttributeError, UnicodeDecodeError, TypeError):
        text = ""
    match = _TRY_AGAIN.search(text[:2000]) if isinstance(text, str) else None
    if match:
        candidates.append(float(match.group(1)))
    return max(candidates) if candidates else None

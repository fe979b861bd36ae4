"""The one reader of a server's "wait this long": ``Retry-After`` (seconds or an HTTP date) and the body's hint."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
from typing import Any

# Sentinel documents its throttle in the body only ("Rate limit is exceeded. Try again in 45 seconds.").
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?) second", re.IGNORECASE)


def retry_after(response: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds a response asks to wait, or None when it gives no readable hint.

    The larger of the ``Retry-After`` header and a "Try again in N seconds" hint in the body (Sentinel documents
    only the body text; both count when both are there). The header is delta-seconds or an HTTP date; dates may
    carry ``GMT``, ``+0000`` or ``-0000`` (RFC 2822's "unknown zone", which ``email.utils`` turns into a naive
    datetime): every zone-less date is taken as UTC, so a naive date never meets an aware clock. A date in the past
    means "now" (0 seconds). An unreadable header gives no hint, and the caller backs off.

    Args:
        response: the answer (anything with ``headers`` and ``text``).
        now: the current time for HTTP dates (defaults to the clock; injectable for tests).
    """
    headers = getattr(response, "headers", None)
    candidates: list[float] = []
    value = (headers.get("Retry-After") if headers is not None else None) or ""
    text = value.strip()
    seconds: float | None = None
    if text:
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError, OverflowError):
                when = None
            if when is not None:
                when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
                reference = now or dt.datetime.now(dt.UTC)
                reference = reference if reference.tzinfo else reference.replace(tzinfo=dt.UTC)
                seconds = (when - reference).total_seconds()
    if seconds is not None and math.isfinite(seconds):
        candidates.append(max(0.0, seconds))
    try:
        body = response.text or ""
    except (AttributeError, UnicodeDecodeError, TypeError):
        body = ""
    match = _TRY_AGAIN.search(body[:2000]) if isinstance(body, str) else None
    if match:
        candidates.append(float(match.group(1)))
    return max(candidates) if candidates else None

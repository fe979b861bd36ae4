"""The one ``Retry-After`` reader (RFC 9110 §10.2.3: delta-seconds or an HTTP-date)."""

from __future__ import annotations

import datetime as dt

import pytest
import requests

from include.transport.retry_after import retry_after

NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=dt.UTC)


def with_header(value: str | None) -> requests.Response:
    """A response with no body whose ``Retry-After`` header is ``value`` (absent for None)."""
    response = requests.Response()
    response.status_code = 429
    response._content = b""
    if value is not None:
        response.headers["Retry-After"] = value
    return response


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 1.5 ", 1.5),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("Sun, 06 Dec 2026 12:00:30 GMT", 30.0),
        ("Sun, 06 Dec 2026 12:00:30 +0000", 30.0),
        # RFC 2822's "-0000" (zone unknown): email.utils returns a naive datetime, which must not crash.
        ("Sun, 06 Dec 2026 12:00:45 -0000", 45.0),
        ("Sun, 06 Dec 2026 13:00:30 +0100", 30.0),
        ("Sun, 06 Dec 2026 11:00:00 GMT", 0.0),  # in the past: go now
    ],
)
def test_a_readable_retry_after_becomes_seconds_to_wait(value: str, expected: float) -> None:
    assert retry_after(with_header(value), now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Sun, 99 Foo 2026", "nan", "inf", "1e999"])
def test_an_absent_or_unreadable_retry_after_gives_no_hint(value: str | None) -> None:
    assert retry_after(with_header(value), now=NOW) is None


def test_a_naive_reference_clock_is_taken_as_utc() -> None:
    assert retry_after(with_header("Sun, 06 Dec 2026 12:00:10 GMT"), now=NOW.replace(tzinfo=None)) == pytest.approx(
        10.0
    )


@pytest.mark.parametrize("value", ["Sun, 06 Dec 2099 12:00:45 -0000", "later, please"])
def test_a_responses_retry_after_header_is_read_in_any_zone_and_survives_garbage(value: str) -> None:
    response = requests.Response()
    response.status_code = 503
    response.headers["Retry-After"] = value
    waited = retry_after(response)
    assert waited is None or waited > 0

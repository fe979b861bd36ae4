"""The one timestamp reader and writer: every shape the sources send, one UTC answer."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.pipeline import times

UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-03-28T10:32:05Z", dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)),
        ("2019-03-28T10:32:05z", dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)),
        ("2019-03-28T10:32:05-04:00", dt.datetime(2019, 3, 28, 14, 32, 5, tzinfo=UTC)),
        ("2019-03-28T10:32:05+0100", dt.datetime(2019, 3, 28, 9, 32, 5, tzinfo=UTC)),
        ("2019-03-28T10:32:05", dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)),  # no zone: UTC
        ("2019-03-28 10:32:05Z", dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)),
        ("2019-03-28T10:32:05.5Z", dt.datetime(2019, 3, 28, 10, 32, 5, 500000, tzinfo=UTC)),
        # Graph and Defender send 7 fraction digits, STIX allows any number: microseconds are kept
        ("2026-01-10T09:30:00.1234567Z", dt.datetime(2026, 1, 10, 9, 30, 0, 123456, tzinfo=UTC)),
        ("2026-01-10T09:30:00.123456789+01:00", dt.datetime(2026, 1, 10, 8, 30, 0, 123456, tzinfo=UTC)),
        (" 2026-01-10T09:30:00Z ", dt.datetime(2026, 1, 10, 9, 30, tzinfo=UTC)),
    ],
)
def test_parse_reads_every_shape_as_aware_utc(text, expected) -> None:
    parsed = times.parse(text)
    assert parsed == expected
    assert parsed.utcoffset() == dt.timedelta(0)


def test_parse_passes_datetimes_through_in_utc_and_empty_values_as_none() -> None:
    naive = dt.datetime(2026, 1, 1, 12)
    assert times.parse(naive) == naive.replace(tzinfo=UTC)
    assert times.parse(pd.Timestamp("2026-01-01T13:00:00+01:00")) == dt.datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert times.parse(None) is None
    assert times.parse("") is None


def test_parse_refuses_what_is_not_a_timestamp_and_parse_or_none_says_none() -> None:
    with pytest.raises(ValueError, match="isoformat"):
        times.parse("yesterday")
    assert times.parse_or_none("yesterday") is None


def test_iso_writes_utc_with_a_z_at_the_asked_precision() -> None:
    moment = dt.datetime(2026, 1, 10, 9, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert times.iso(moment) == "2026-01-10T08:30:00.123456Z"
    assert times.iso(moment, "milliseconds") == "2026-01-10T08:30:00.123Z"
    assert times.iso(moment, "seconds") == "2026-01-10T08:30:00Z"
    assert times.iso(moment.replace(microsecond=0)) == "2026-01-10T08:30:00Z"
    with pytest.raises(ValueError, match="timespec"):
        times.iso(moment, "hours")


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    zone=st.sampled_from(
        [None, UTC, zoneinfo.ZoneInfo("UTC"), zoneinfo.ZoneInfo("America/St_Johns"), dt.timezone(dt.timedelta(hours=9))]
    ),
    timespec=st.sampled_from(["seconds", "milliseconds", "microseconds", "auto"]),
    boxed=st.booleans(),
)
def test_iso_writes_what_the_standard_library_writes_for_the_same_instant_in_utc(
    moment: dt.datetime, zone: dt.tzinfo | None, timespec: str, boxed: bool
) -> None:
    """The judge is ``datetime.isoformat`` of the instant in UTC (a naive moment is UTC), for a datetime in any
    zone or a pandas Timestamp."""
    local = moment.replace(tzinfo=zone)
    instant = local.replace(tzinfo=UTC) if zone is None else local.astimezone(UTC)
    stdlib_spec = ("microseconds" if instant.microsecond else "seconds") if timespec == "auto" else timespec
    expected = instant.replace(tzinfo=None).isoformat(timespec=stdlib_spec) + "Z"
    assert times.iso(pd.Timestamp(local) if boxed else local, timespec) == expected


def test_column_parses_a_page_of_dates_with_or_without_zones() -> None:
    fast = times.column(["2024-01-01T00:00:00Z", None, "2024-01-01T01:00:00+01:00"])
    slow = times.column(["2024-01-01T00:00:00", None, "2024-01-01 00:00:00Z"])
    expected = pa.array([dt.datetime(2024, 1, 1, tzinfo=UTC), None, dt.datetime(2024, 1, 1, tzinfo=UTC)], times.TS)
    assert fast.equals(expected)
    assert slow.equals(expected)

"""Watermarks: where a run starts, and how far a run may move the mark."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from include.pipeline.watermarks import advance, extraction_window, iso, parse_iso

D1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
D2 = D1 + dt.timedelta(days=1)


def loaded(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"last_modified": pd.to_datetime([r[0] for r in rows], utc=True), "status": [r[1] for r in rows]}
    )


def test_a_first_run_reads_exactly_its_data_interval() -> None:
    window = extraction_window("Host", D1, D2, None, live=True)
    assert (window.start, window.end) == (D1, D2)


def test_a_live_run_resumes_from_an_older_watermark_so_a_failed_run_leaves_no_gap() -> None:
    window = extraction_window("Host", D1, D2, {"Host": "2026-02-27T13:00:00Z"}, live=True)
    assert window.start == dt.datetime(2026, 2, 27, 13, tzinfo=dt.UTC)
    assert window.end == D2


def test_a_watermark_inside_the_interval_never_shrinks_the_window() -> None:
    window = extraction_window("Host", D1, D2, {"Host": "2026-03-01T18:00:00Z"}, live=True)
    assert window.start == D1


def test_a_backfill_reads_exactly_its_interval_whatever_the_live_watermark() -> None:
    window = extraction_window("Host", D1, D2, {"Host": "2025-01-01T00:00:00Z"}, live=False)
    assert (window.start, window.end) == (D1, D2)


def test_a_zero_width_interval_is_refused_with_an_explanation() -> None:
    with pytest.raises(ValueError, match="zero-width"):
        extraction_window("Host", D1, D1, None, live=True)


def test_the_watermark_moves_to_the_latest_delivered_change() -> None:
    rows = loaded(("2026-03-01T05:00:00Z", "ok"), ("2026-03-01T09:30:00Z", "ok"))
    assert advance("2026-02-28T00:00:00Z", rows) == "2026-03-01T09:30:00Z"


def test_the_watermark_never_moves_past_an_indicator_that_failed_to_load() -> None:
    rows = loaded(("2026-03-01T05:00:00Z", "ok"), ("2026-03-01T07:00:00Z", "failed"), ("2026-03-01T09:30:00Z", "ok"))
    assert advance("2026-02-28T00:00:00Z", rows) == "2026-03-01T07:00:00Z"


def test_a_run_with_nothing_to_load_keeps_the_previous_watermark() -> None:
    assert advance("2026-02-28T00:00:00Z", loaded()) == "2026-02-28T00:00:00Z"
    assert advance(None, loaded()) is None


def test_the_watermark_never_moves_backwards_when_everything_was_delivered() -> None:
    rows = loaded(("2026-02-01T00:00:00Z", "ok"))
    assert advance("2026-02-28T00:00:00Z", rows) == "2026-02-28T00:00:00Z"


def test_timestamps_round_trip_through_iso_text() -> None:
    moment = dt.datetime(2026, 3, 1, 12, 30, 5, 250000, tzinfo=dt.UTC)
    assert parse_iso(iso(moment)) == moment
    assert iso(D1) == "2026-03-01T00:00:00Z"


def test_a_type_whose_first_run_failed_is_held_at_the_start_of_the_window_it_read() -> None:
    from include.pipeline.watermarks import hold

    marks = hold({"Host": "2026-06-01T10:00:00Z"}, {"Host": "2026-06-01T00:00:00Z", "URL": "2026-06-01T00:00:00Z"})
    assert marks == {"Host": "2026-06-01T10:00:00Z", "URL": "2026-06-01T00:00:00Z"}

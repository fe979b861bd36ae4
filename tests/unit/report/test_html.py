"""The report page over a hand-made ``runs`` dataset: tables carry exactly the rows' numbers, history stops at the
run, images are inline."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from include.pipeline.snapshots import SnapshotStore
from include.report import html, runs

DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def _row(day: int, indicator_type: str, **counts: int) -> dict:
    run_id = f"scheduled__2026-06-{day:02d}"
    base = {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "target": "sentinel",
        "run_type": "scheduled",
        "status": "ok",
        "data_interval_start": START + (day - 1) * DAY,
        "data_interval_end": START + day * DAY,
        "extracted": 0,
        "rejected": 0,
        "deduplicated": 0,
        "sent": 0,
        "loaded": 0,
        "verified": 0,
        "retracted": 0,
        "quarantined": 0,
        "rejected_by_target": 0,
        "failed": 0,
        **{f"planned_{a}": 0 for a in runs.PLAN_ACTIONS},
    }
    return {**base, **counts}


def _store(tmp_path: Path) -> SnapshotStore:
    store = SnapshotStore(str(tmp_path / "data"))
    records = []
    for day in range(1, 5):  # four runs; the report of day 2 must not show days 3 and 4
        records.append(
            _row(
                day,
                "Host",
                extracted=10 * day,
                rejected=day,
                deduplicated=9 * day,
                sent=day,
                loaded=day,
                verified=day,
                planned_create=day,
                planned_skip=2,
                rejected_by_reason=json.dumps({"invalid host": day}),
            )
        )
        records.append(
            _row(
                day, "URL", extracted=7, loaded=3, sent=4, failed=1, status="failed", rejected_by_reason=json.dumps({})
            )
        )
    runs.write(store, records)
    return store


def _cells(page: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert body, table_id
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


def test_the_stage_table_holds_the_runs_rows(tmp_path: Path) -> None:
    page = html.render(_store(tmp_path), "scheduled__2026-06-02")
    header, *rows = _cells(page, "stage-counts")
    table = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert set(table) == {"Host → sentinel", "URL → sentinel"}
    assert (table["Host → sentinel"]["extracted"], table["Host → sentinel"]["rejected"]) == ("20", "2")
    assert (table["URL → sentinel"]["failed"], table["URL → sentinel"]["status"]) == ("1", "failed")
    assert "Did not complete: URL → sentinel" in page


def test_history_stops_at_the_reported_run_and_rejects_come_by_reason(tmp_path: Path) -> None:
    page = html.render(_store(tmp_path), "scheduled__2026-06-02")
    history = _cells(page, "history")[1:]
    assert sorted({r[2] for r in history}) == ["scheduled__2026-06-01", "scheduled__2026-06-02"]
    assert _cells(page, "rejects")[1:] == [["Host", "invalid host", "2"]]


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    page = html.render(_store(tmp_path), "scheduled__2026-06-04")
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page
    assert "https://" not in page


def test_write_puts_the_run_and_latest_under_reports(tmp_path: Path) -> None:
    store = _store(tmp_path)
    location = html.write(store, "scheduled__2026-06-03")
    assert Path(location).name == "scheduled__2026-06-03.html"
    assert Path(location).read_text() == (tmp_path / "data" / "reports" / "latest.html").read_text()

"""The ``runs`` dataset and the per-run HTML report after three runs of the whole DAG: a clean first day, a day on
which one indicator keeps failing in Graph (the run fails), and the next day after the fault is gone.

Expected counts come from the seeded generator and from the run's own snapshots, read here with pandas, never from
``include/report``. The backfill run type is covered by ``tests/scheduler/test_run_reports_served.py`` (only a
real scheduler makes backfill runs).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from include.pipeline.snapshots import quote_partition_value
from simulators.stack import OWNER
from tests.dags.dagrun import (
    FIRST_DATE,
    FIRST_INTERVAL_END,
    NEXT_DATE,
    TYPES,
    Pipeline,
    Run,
    invalid_tc_ids,
    migrated_database,
    seeded_indicators,
)
from tests.dags.report_browser import open_page

THIRD_DATE = "2026-06-04"
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "report" / "report.png"


@dataclass
class Story:
    pipeline: Pipeline
    records: list[dict[str, Any]]
    first: Run
    failed: Run
    third: Run
    victim: str  # the Host whose write Graph refuses on the second day
    graph_requests_first: int  # what the Graph simulator logged during the first run


def _host(tc_id: int, host: str, modified: dt.datetime) -> dict[str, Any]:
    return {
        "id": tc_id,
        "type": "Host",
        "owner": OWNER,
        "hostName": host,
        "summary": host,
        "dateAdded": modified,
        "lastModified": modified,
        "rating": 3.0,
        "confidence": 70,
        "threatAssessScore": 500,
        "active": True,
        "falsePositives": 0,
        "tags": [],
        "securityLabels": ["TLP:GREEN"],
        "description": None,
        "externalDateExpires": None,
        "_invalid": False,
        "_duplicate_of": None,
    }


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    records = seeded_indicators()
    database = migrated_database(tmp_path_factory.mktemp("report-airflow-template"))
    pipeline = Pipeline.start(tmp_path_factory.mktemp("report"), "graph", records, database)
    try:
        first = pipeline.run(FIRST_DATE)
        graph_requests_first = len(pipeline.stack.graph.requests)
        victim = "failing-host.example.net"
        armed = [True]
        pipeline.stack.graph.fail_items(
            lambda item: armed[0] and item.get("domainName") == victim,
            count=None,
            message="Simulated permanent failure of one indicator",
        )
        pipeline.stack.tc.put(_host(9_100_001, victim, FIRST_INTERVAL_END + dt.timedelta(hours=3)))
        pipeline.stack.tc.put(_host(9_100_002, "fine-host.example.net", FIRST_INTERVAL_END + dt.timedelta(hours=4)))
        failed = pipeline.run(NEXT_DATE)
        armed[0] = False
        third = pipeline.run(THIRD_DATE)
        yield Story(pipeline, records, first, failed, third, victim, graph_requests_first)
    finally:
        pipeline.stop()


def _runs(story: Story) -> pd.DataFrame:
    return pd.read_parquet(story.pipeline.data_root / "runs")


def _stage(story: Story, stage: str, run: Run) -> pd.DataFrame:
    frame = story.pipeline.stage(stage, run).to_pandas()
    return frame


def _row(runs: pd.DataFrame, run: Run, indicator_type: str) -> pd.Series:
    rows = runs[(runs["run_id"] == run.run_id) & (runs["indicator_type"] == indicator_type)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _expected_counts(story: Story, run: Run, indicator_type: str) -> dict[str, int | None]:
    """The counts a run's snapshots hold for one type (Graph only), computed here with pandas; None where the
    stage wrote no partition for the type (its task failed before, or never ran)."""

    def of(stage: str) -> pd.DataFrame | None:
        if indicator_type not in story.pipeline.partitions(stage, run):
            return None
        frame = _stage(story, stage, run)
        return frame[frame["indicator_type"] == indicator_type] if len(frame) else frame

    def count(frame: pd.DataFrame | None, column: str | None = None, values: tuple[str, ...] = ()) -> int | None:
        if frame is None:
            return None
        return len(frame) if column is None else int(frame[column].isin(values).sum()) if len(frame) else 0

    raw, rejected, deduped = of("raw"), of("rejected"), of("deduped")
    plan, loaded, verified = of("plan"), of("loaded"), of("verified")
    counts = {
        "extracted": None if raw is None else int((~raw["deleted"].fillna(False)).sum()),
        "rejected": count(rejected),
        "deduplicated": count(deduped),
        "sent": count(loaded),
        "loaded": count(loaded, "status", ("ok",)),
        "failed": count(loaded, "status", ("failed",)),
        "rejected_by_target": count(loaded, "status", ("rejected",)),
        "verified": count(verified, "status", ("read back", "acknowledged")),
    }
    for action in ("create", "update", "refresh", "retract", "reject", "skip"):
        counts[f"planned_{action}"] = count(plan, "action", (action,))
    return counts


def _value(cell: object) -> int | None:
    """A count from the runs dataset (NaN: null) or from a report's table cell ("-": null)."""
    return None if cell == "-" or pd.isna(cell) else int(cell)


def test_every_run_appends_one_row_per_type_and_target(story: Story) -> None:
    runs = _runs(story)
    assert story.first.succeeded, story.first.explain()
    assert not story.failed.succeeded, story.failed.explain()
    assert story.third.succeeded, story.third.explain()
    for run in (story.first, story.failed, story.third):
        mine = runs[runs["run_id"] == run.run_id]
        assert sorted(mine["indicator_type"]) == sorted(TYPES)
        assert set(mine["target"]) == {"graph"}
        assert set(mine["run_type"]) == {"manual"}  # what `airflow dags test` creates
        assert set(pd.to_datetime(mine["data_interval_end"], utc=True)) == {pd.Timestamp(run.interval_end)}
    assert len(runs) == 3 * len(TYPES)


def test_the_first_runs_counts_match_the_generator(story: Story) -> None:
    runs = _runs(story)
    invalid = invalid_tc_ids(story.records)
    for indicator_type in TYPES:
        row = _row(runs, story.first, indicator_type)
        of_type = [r for r in story.records if r["type"] == indicator_type]
        assert row["extracted"] == len(of_type)
        assert row["rejected"] == len([r for r in of_type if r["id"] in invalid])
        assert sum(json.loads(row["rejected_by_reason"]).values()) == row["rejected"]
        assert row["status"] == "ok"
        assert row["failed"] == 0


@pytest.mark.parametrize("which", ["first", "failed", "third"])
def test_counts_match_the_runs_snapshots(story: Story, which: str) -> None:
    run = getattr(story, which)
    runs = _runs(story)
    for indicator_type in TYPES:
        row = _row(runs, run, indicator_type)
        expected = _expected_counts(story, run, indicator_type)
        assert {k: _value(row[k]) for k in expected} == expected, indicator_type


def test_the_failed_run_names_the_failed_type_and_holds_its_watermark(story: Story) -> None:
    runs = _runs(story)
    host = _row(runs, story.failed, "Host")
    assert host["status"] == "failed"
    assert pd.isna(host["verified"])  # verify never ran for it: unknown, not zero
    assert host["failed"] == 1
    assert pd.isna(host["watermark_after"])
    assert host["watermark_before"] == _row(runs, story.first, "Host")["watermark_after"]
    for indicator_type in set(TYPES) - {"Host"}:
        assert _row(runs, story.failed, indicator_type)["status"] == "ok"
    assert "run report:" in story.failed.output
    loaded = _stage(story, "loaded", story.failed)
    assert loaded[loaded["status"] == "failed"]["value"].tolist() == [story.victim]


class _Tables(HTMLParser):
    """Every <table id=...> of a page as a list of rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._current = dict(attrs).get("id") or ""
            self.tables[self._current] = []
        elif tag == "tr" and self._current is not None:
            self.tables[self._current].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._current is not None:
            self.tables[self._current][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _report(story: Story, run: Run) -> dict[str, list[dict[str, str]]]:
    page = (story.pipeline.data_root / "reports" / f"{quote_partition_value(run.run_id)}.html").read_text()
    parser = _Tables()
    parser.feed(page)
    return {name: [dict(zip(rows[0], row, strict=True)) for row in rows[1:]] for name, rows in parser.tables.items()}


@pytest.mark.parametrize("which", ["first", "failed", "third"])
def test_the_report_shows_exactly_the_snapshots_numbers(story: Story, which: str) -> None:
    run = getattr(story, which)
    tables = _report(story, run)
    stage_rows = {r["type → target"]: r for r in tables["stage-counts"]}
    assert set(stage_rows) == {f"{t} → graph" for t in TYPES}
    for indicator_type in TYPES:
        shown = stage_rows[f"{indicator_type} → graph"]
        expected = _expected_counts(story, run, indicator_type)
        for column in (
            "extracted",
            "rejected",
            "deduplicated",
            "sent",
            "loaded",
            "failed",
            "verified",
            "planned_create",
            "planned_update",
            "planned_skip",
            "rejected_by_target",
        ):
            assert shown[column] == ("-" if expected[column] is None else str(expected[column])), (
                indicator_type,
                column,
            )
        plan_row = next(r for r in tables["plan-actions"] if r["type → target"] == f"{indicator_type} → graph")
        assert {a: _value(plan_row[a]) for a in ("create", "update", "refresh", "retract", "reject", "skip")} == {
            a: expected[f"planned_{a}"] for a in ("create", "update", "refresh", "retract", "reject", "skip")
        }
    rejected = _stage(story, "rejected", run)
    assert sum(int(r["count"]) for r in tables["rejects"]) == len(rejected)
    by_type = Counter(r["type"] for r in tables["rejects"] for _ in range(int(r["count"])))
    assert by_type == Counter(rejected["indicator_type"])
    # the last 30 runs up to this one: every earlier run of this story appears, none after it
    order = [story.first, story.failed, story.third]
    shown_runs = {r["run"] for r in tables["history"]}
    assert shown_runs == {r.run_id for r in order[: order.index(run) + 1]}


def test_expiring_in_the_next_seven_days_matches_the_delivered_expiries(story: Story) -> None:
    tables = _report(story, story.third)
    loaded = story.pipeline.stage("loaded").to_pandas()
    ok = (
        loaded[loaded["status"] == "ok"]
        .sort_values("stix_modified")
        .drop_duplicates(["indicator_type", "external_id"], keep="last")
    )
    live = ok[ok["action"] != "retract"]
    start = pd.Timestamp(story.third.interval_end)
    soon = live[
        (pd.to_datetime(live["expiration"], utc=True) >= start)
        & (pd.to_datetime(live["expiration"], utc=True) < start + pd.Timedelta(days=7))
    ]
    assert sum(int(r["count"]) for r in tables["expiring"]) == len(soon)


def test_latest_is_the_last_report_written(story: Story) -> None:
    reports = story.pipeline.data_root / "reports"
    assert (reports / "latest.html").read_text() == (
        reports / f"{quote_partition_value(story.third.run_id)}.html"
    ).read_text()


def test_the_report_renders_in_chromium_without_errors(story: Story) -> None:
    page = story.pipeline.data_root / "reports" / f"{quote_partition_value(story.failed.run_id)}.html"
    check = open_page(page.as_uri())
    assert check.console_errors == []
    assert len(check.images) >= 3  # at least stage counts, history and plan actions
    assert all(i["complete"] and i["naturalWidth"] > 0 for i in check.images), check.images
    assert check.tables >= 5
    assert check.screenshot.startswith(b"\x89PNG")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(check.screenshot)  # docs/report.png (the README's screenshot) is a copy of this file


def test_the_requests_each_run_records_are_what_the_graph_simulator_logged(story: Story) -> None:
    runs = _runs(story)
    first = runs[runs["run_id"] == story.first.run_id]
    requests = [json.loads(cell) for cell in first["requests"]]
    recorded = sum(r.get("graph", 0) for r in requests)
    # Load and verify count their own requests; the preflight's probe of the Graph connection is not a stage's.
    assert story.graph_requests_first - 2 <= recorded <= story.graph_requests_first
    assert all(r.get("threatconnect", 0) > 0 for r in requests)
    assert [json.loads(cell) for cell in first["throttled"]] == [{"threatconnect": 0, "graph": 0}] * len(first)
    for cell in first["durations"]:
        assert set(json.loads(cell)) == {"extract", "normalize", "dedupe", "load", "verify"}

"""Rows of the ``runs`` dataset, counted from a run's snapshots (built here by hand, with known counts)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from include.pipeline.snapshots import SnapshotStore
from include.report import runs

RUN = runs.RunInfo(
    "manual__2026-06-02T00:00:00+00:00",
    "manual",
    dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    dt.datetime(2026, 6, 2, tzinfo=dt.UTC),
)


def _planned(targets: list[str]) -> dict:
    return {
        "indicator_type": "Host",
        "run_id": RUN.run_id,
        "config": {"targets": targets, "dry_run": False},
        "window": {"start": "2026-05-31T22:00:00Z", "end": "2026-06-02T00:00:00Z", "reason": "watermark"},
        "target_marks": {t: f"2026-05-31T22:00:00Z#{t}" for t in targets},
    }


def _store(tmp_path: Path) -> SnapshotStore:
    """Host: 6 raw rows (1 deleted), 3 rejected (2 invalid host, 1 missing), 4 deduped; two targets whose plans,
    loads and verifies differ."""
    store = SnapshotStore(str(tmp_path / "data"))
    store.write_table("raw", "Host", RUN.run_id, pa.table({"deleted": [False] * 5 + [True]}))
    store.write_table(
        "rejected",
        "Host",
        RUN.run_id,
        pa.table(
            {
                "reason": [
                    "invalid host: 300 characters (at most 253)",
                    "invalid host: empty label",
                    "missing Host value",
                ]
            }
        ),
    )
    store.write_table("deduped", "Host", RUN.run_id, pa.table({"external_id": ["a", "b", "c", "d"]}))
    store.write_table(
        "plan",
        "Host",
        RUN.run_id,
        pa.table(
            {
                "action": ["create", "create", "update", "skip"],
                "sink": ["graph"] * 4,
                "reason": ["new", "new", "changed", "quarantined: refused earlier"],
            }
        ),
        part="graph",
    )
    store.write_table(
        "plan",
        "Host",
        RUN.run_id,
        pa.table({"action": ["create", "retract"], "sink": ["defender"] * 2, "reason": ["new", "inactive"]}),
        part="defender",
    )
    store.write_table(
        "loaded",
        "Host",
        RUN.run_id,
        pa.table(
            {"action": ["create", "create", "update"], "status": ["ok", "failed", "rejected"], "sink": ["graph"] * 3}
        ),
        part="graph",
    )
    store.write_table(
        "loaded",
        "Host",
        RUN.run_id,
        pa.table({"action": ["create", "retract"], "status": ["ok", "ok"], "sink": ["defender"] * 2}),
        part="defender",
    )
    store.write_table(
        "verified",
        "Host",
        RUN.run_id,
        pa.table({"status": ["read back", "missing"], "sink": ["defender"] * 2}),
        part="defender",
    )
    return store


def test_reason_classes_drop_values_and_details() -> None:
    assert runs.reason_class("invalid url: no host") == "invalid url"
    assert runs.reason_class("unsupported indicator type 'Mutex'") == "unsupported indicator type"
    assert runs.reason_class("invalid host: 300 characters (at most 253)") == "invalid host"
    assert runs.reason_class(None) == "unknown"


def test_one_row_per_target_counted_from_that_targets_snapshots(tmp_path: Path) -> None:
    store = _store(tmp_path)
    verified = {
        "indicator_type": "Host",
        "target": "defender",
        "load": {"capacity": {"capacity": 15000, "used": 7}},
        "verify": {"verified": 1, "watermark": "2026-06-01T20:00:00Z"},
    }
    rows = {
        r["target"]: r
        for r in runs.rows(
            store, RUN, [_planned(["graph", "defender"])], [verified, None], failed_labels=["Host → graph"]
        )
    }
    graph, defender = rows["graph"], rows["defender"]
    shared = {"extracted": 5, "deleted": 1, "rejected": 3, "deduplicated": 4}
    assert {k: graph[k] for k in shared} == shared == {k: defender[k] for k in shared}
    assert json.loads(graph["rejected_by_reason"]) == {"invalid host": 2, "missing Host value": 1}
    planned = (graph["planned_create"], graph["planned_update"], graph["planned_skip"], graph["quarantined"])
    assert planned == (2, 1, 1, 1)
    assert (graph["sent"], graph["loaded"], graph["failed"], graph["rejected_by_target"]) == (3, 1, 1, 1)
    assert graph["verified"] is None
    assert graph["status"] == "failed"
    assert graph["watermark_after"] is None
    assert (defender["planned_create"], defender["planned_retract"], defender["retracted"]) == (1, 1, 1)
    assert (defender["verified"], defender["verify_missing"], defender["status"]) == (1, 1, "ok")
    assert (defender["capacity"], defender["capacity_used"]) == (15000, 7)
    assert defender["watermark_before"] == "2026-05-31T22:00:00Z#defender"
    assert defender["watermark_after"] == "2026-06-01T20:00:00Z"


def test_a_type_that_failed_before_load_has_its_early_counts_and_nulls_after(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path / "data"))
    store.write_table("raw", "Host", RUN.run_id, pa.table({"deleted": [False, False]}))
    (row,) = runs.rows(store, RUN, [_planned(["graph"])], [None], failed_labels=["Host"])
    assert row["extracted"] == 2
    assert row["deduplicated"] is None
    assert row["sent"] is None
    assert row["planned_create"] is None
    assert row["status"] == "failed"


def test_written_rows_read_back_as_a_hive_dataset_and_a_rewrite_replaces_them(tmp_path: Path) -> None:
    store = _store(tmp_path)
    records = runs.rows(store, RUN, [_planned(["graph", "defender"])], [None, None])
    runs.write(store, records)
    runs.write(store, records)  # the report task retried: same rows, not twice
    table = runs.read(store).to_pandas()
    assert len(table) == 2
    assert set(table["run_id"]) == {RUN.run_id}
    assert set(table["indicator_type"]) == {"Host"}
    assert table["data_interval_end"].iloc[0] == RUN.data_interval_end
    assert sorted(table["sent"]) == [2, 3]


def test_stage_figures_the_tasks_report_are_merged_as_json(tmp_path: Path) -> None:
    store = _store(tmp_path)
    done = {
        "indicator_type": "Host",
        "target": "graph",
        "extract": {"requests": {"threatconnect": 3}, "seconds": 1.5},
        "load": {"requests": {"graph": 40}, "throttled": {"graph": 2}, "seconds": 30.0},
        "verify": {"requests": {"graph": 5}, "verified": 1, "watermark": "x", "seconds": 4.0},
    }
    (row,) = runs.rows(store, RUN, [_planned(["graph"])], [done])
    assert json.loads(row["requests"]) == {"graph": 45, "threatconnect": 3}
    assert json.loads(row["throttled"]) == {"graph": 2}
    assert json.loads(row["durations"]) == {"extract": 1.5, "load": 30.0, "verify": 4.0}


@pytest.mark.parametrize("column", [c for c, _, _ in runs.COLUMNS])
def test_every_column_is_documented_in_the_readme(column: str) -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert f"`{column}`" in readme

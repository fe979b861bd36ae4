"""The approval gate's core: a load past the retraction guard holds its retractions and sends the rest, verify holds
the watermark before them, the request shows the numbers, and approved retractions are done and recorded."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from include.microsoft.graph import GraphSink
from include.pipeline import approval, delivery, lifecycle, watermarks
from include.pipeline.ports import SinkResult, Traffic, WriteRate
from include.pipeline.schema import NORMALIZED_SCHEMA
from include.pipeline.snapshots import SnapshotStore
from tests.unit.microsoft.graph_rows import BASE_TIME, ip_rows

FIRST = lifecycle.Policy(interval_start=BASE_TIME - dt.timedelta(days=1), interval_end=BASE_TIME + dt.timedelta(days=1))
SECOND = lifecycle.Policy(
    interval_start=BASE_TIME + dt.timedelta(days=1), interval_end=BASE_TIME + dt.timedelta(days=2)
)
RETIRED = BASE_TIME + dt.timedelta(days=1, hours=1)  # when the first of the 40 turned inactive


class MemoryGraph(GraphSink):
    """Graph's payloads and comparison over an in-memory target that records every retraction."""

    listing = None  # read back by id only

    def __init__(self) -> None:
        super().__init__(client=None)
        self.held: dict[str, dict[str, Any]] = {}
        self.retracted: list[str] = []

    def upsert(self, rows: pd.DataFrame, never_sent: Collection[str] = frozenset()) -> list[SinkResult]:
        for row in rows.to_dict("records"):
            self.held[row["external_id"]] = self.payload(row)
        return [
            SinkResult(e, a, "ok", f"g-{e}", 1, None) for e, a in zip(rows["external_id"], rows["action"], strict=True)
        ]

    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        for external_id in rows["external_id"]:
            self.held.pop(external_id, None)
            self.retracted.append(external_id)
        return [SinkResult(e, "retract", "ok", f"g-{e}", 1, None) for e in rows["external_id"]]

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {e: self.held[e] for e in external_ids if e in self.held}

    def write_rate(self) -> WriteRate:
        return WriteRate(self.batch_size, None)  # in memory: no budget

    def traffic(self) -> Traffic:
        return Traffic(0, 0)


def _deduped(store: SnapshotStore, run_id: str, rows: pd.DataFrame) -> None:
    store.write_table("deduped", "Address", run_id, pa.Table.from_pandas(rows, schema=NORMALIZED_SCHEMA))


def _second_run_rows() -> pd.DataFrame:
    """40 of the 50 delivered turn inactive (80 %: past the 20 % guard), one changes, two are new."""
    rows = ip_rows(52)
    for i in range(40):
        rows.loc[i, "active"] = False
        rows.loc[i, "last_modified"] = pd.Timestamp(RETIRED + dt.timedelta(minutes=i))
    rows.loc[40, "confidence"] = 20
    rows.loc[40, "last_modified"] = pd.Timestamp(BASE_TIME + dt.timedelta(days=1, hours=5))
    rows.loc[51, "last_modified"] = pd.Timestamp(BASE_TIME + dt.timedelta(days=1, hours=6))
    return rows


@pytest.fixture
def held_run(tmp_path) -> tuple[MemoryGraph, SnapshotStore, dict[str, Any], dict[str, Any]]:
    """A first run delivers 50 indicators; a second run would retract 40 of them: (sink, store, load, verify)."""
    sink, store = MemoryGraph(), SnapshotStore(str(tmp_path))
    _deduped(store, "run-1", ip_rows(50))
    delivery.load(sink, store, "run-1", "Address", FIRST)
    first = delivery.verify(sink, store, "run-1", "Address", None)
    _deduped(store, "run-2", _second_run_rows())
    loaded = delivery.load(sink, store, "run-2", "Address", SECOND)
    verified = delivery.verify(sink, store, "run-2", "Address", first["watermark"])
    return sink, store, loaded, verified


def _job(store: SnapshotStore, loaded: dict[str, Any]) -> dict[str, Any]:
    """The parts of a verified job document the gate reads."""
    return {
        "indicator_type": "Address",
        "run_id": "run-2",
        "owner": "Example Org",
        "target": "graph",
        "config": {"targets": ["graph"], "data_root": store.root},
        "load": loaded,
    }


def test_a_load_past_the_guard_sends_creates_and_updates_and_retracts_nothing(held_run) -> None:
    sink, _, loaded, _ = held_run
    assert sink.retracted == []
    assert loaded["held_retractions"] == {"retractions": 40, "live": 50, "allowed": 10, "guard": 0.2}
    assert (loaded["created"], loaded["updated"], loaded["retracted"]) == (2, 1, 0)
    assert loaded["planned"]["held"] == 40


def test_held_retractions_are_in_the_plan_with_their_reason(held_run) -> None:
    _, store, _, _ = held_run
    plan = store.read("plan", "Address", "run-2").to_pandas()
    retracts = plan[plan["action"] == "retract"]
    assert len(retracts) == 40
    assert set(retracts["reason"]) == {"held for approval: inactive in ThreatConnect"}


def test_verify_holds_the_watermark_before_the_first_held_retraction(held_run) -> None:
    _, _, _, verified = held_run
    assert watermarks.parse_iso(verified["watermark"]) == RETIRED
    assert watermarks.parse_iso(verified["watermark_after_retractions"]) == BASE_TIME + dt.timedelta(days=1, hours=6)


def test_without_approval_the_retractions_stay_live_so_the_next_run_plans_them_again(held_run) -> None:
    sink, store, _, _ = held_run
    state = lifecycle.delivered_state(store, "Address", "graph")
    retired = set(_second_run_rows()["external_id"][:40])
    assert (state.loc[list(retired), "action"] != "retract").all()
    planned = lifecycle.plan(_second_run_rows(), state, sink.payload, "graph", SECOND, sink.volatile_fields)
    assert set(planned.loc[planned["action"] == "retract", "external_id"]) == retired


def test_the_request_shows_the_numbers_and_a_sample(held_run) -> None:
    _, store, loaded, _ = held_run
    others = [
        {**_job(store, loaded), "load": {"held_retractions": None}},
        {**_job(store, loaded), "load": {**loaded, "dry_run": True}},
    ]
    held = approval.held_deliveries([_job(store, loaded), *others])
    assert [(h["label"], h["retractions"], h["live"], h["allowed"]) for h in held] == [("Address", 40, 50, 10)]
    asked = approval.request(store, held, sample=3)
    assert asked["subject"].startswith("Approve 40 retractions past the retraction guard (Address)")
    assert "| Address | graph | 40 | 50 | 10 (20%) |" in asked["body"]
    assert asked["body"].count("(inactive in ThreatConnect)") == 3


def test_approved_retractions_are_done_recorded_and_read_back(held_run) -> None:
    sink, store, loaded, _ = held_run
    (held,) = approval.held_deliveries([_job(store, loaded)])
    result = approval.retract_held(sink, store, held)
    assert result == {
        "label": "Address",
        "watermark_key": "Address",
        "held": 40,
        "retracted": 40,
        "failed": 0,
        "verified": 40,
        "complete": True,
    }
    assert sorted(sink.retracted) == sorted(_second_run_rows()["external_id"][:40])
    recorded = store.read("loaded", "Address", "run-2").to_pandas()
    assert recorded["action"].value_counts().to_dict() == {"retract": 40, "create": 2, "update": 1}
    assert (store.read("verified", "Address", "run-2").to_pandas()["status"] == "read back").all()
    state = lifecycle.delivered_state(store, "Address", "graph")
    assert int((state["action"] == "retract").sum()) == 40


def test_a_retried_retract_task_records_each_retraction_once(held_run) -> None:
    sink, store, loaded, _ = held_run
    (held,) = approval.held_deliveries([_job(store, loaded)])
    approval.retract_held(sink, store, held)
    approval.retract_held(sink, store, held)
    recorded = store.read("loaded", "Address", "run-2").to_pandas()
    assert recorded["action"].value_counts().to_dict() == {"retract": 40, "create": 2, "update": 1}
    assert len(store.read("verified", "Address", "run-2")) == 43


def test_the_explicit_param_sends_a_mass_retraction_without_holding_it(tmp_path) -> None:
    sink, store = MemoryGraph(), SnapshotStore(str(tmp_path))
    _deduped(store, "run-1", ip_rows(50))
    delivery.load(sink, store, "run-1", "Address", FIRST)
    _deduped(store, "run-2", _second_run_rows())
    allowed = lifecycle.Policy(SECOND.interval_start, SECOND.interval_end, allow_mass_retraction=True)
    loaded = delivery.load(sink, store, "run-2", "Address", allowed)
    assert loaded["held_retractions"] is None
    assert loaded["retracted"] == 40
    assert len(sink.retracted) == 40

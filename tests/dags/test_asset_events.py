"""The run's asset events: one per stage and type (and target), whose ``extra`` names the partition the stage wrote
and counts what is in it. The expected counts come from the generator's intent and from reading the Parquet files
the events name, never from the code that built ``extra``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest

from simulators.dataset import REJECTED
from tests.dags.dagrun import TYPES

pytestmark = [pytest.mark.integration, pytest.mark.dag]

PER_TYPE = ("tc_sentinel.raw", "tc_sentinel.normalized", "tc_sentinel.rejected", "tc_sentinel.deduped")
PER_TARGET = ("tc_sentinel.plan", "tc_sentinel.loaded", "tc_sentinel.verified")


def _by_type(run, asset: str) -> dict[str, dict]:
    events = run.events(asset)
    extras = {e.extra["indicator_type"]: e.extra for e in events}
    assert len(extras) == len(events), f"{asset}: more than one event for a type"
    return extras


def _partition(extra: dict, target: str | None = None) -> pd.DataFrame:
    """The Parquet files of the partition the event names, read as a data team would (the target's rows only)."""
    frame = pd.read_parquet(extra["partition"])
    return frame if target is None else frame[frame["sink"] == target]


@pytest.fixture(scope="module")
def first(graph_first):
    assert graph_first.run.succeeded, graph_first.run.explain()
    return graph_first.run


@pytest.mark.parametrize("asset", PER_TYPE + PER_TARGET)
def test_each_stage_announces_one_event_per_indicator_type_naming_the_run_and_its_partition(
    first, graph_pipeline, asset
) -> None:
    extras = _by_type(first, asset)
    assert sorted(extras) == sorted(TYPES)
    stage = asset.removeprefix("tc_sentinel.")
    for indicator_type, extra in extras.items():
        assert extra["run_id"] == first.run_id
        assert extra["stage"] == stage
        assert extra["data_root"] == str(graph_pipeline.data_root)
        # The README's layout: <data_root>/<stage>/indicator_type=<type>/run_id=<url-quoted run id>
        layout = (
            graph_pipeline.data_root
            / stage
            / f"indicator_type={indicator_type}"
            / f"run_id={quote(first.run_id, safe='')}"
        )
        assert Path(extra["partition"]) == layout
        assert Path(extra["partition"]).is_dir()
        if asset in PER_TARGET:
            assert extra["target"] == "graph"


def test_the_events_come_from_the_stage_tasks_one_per_mapped_instance(first) -> None:
    tasks = Counter((e.asset, e.task_id) for e in first.asset_events)
    assert tasks == {
        ("tc_sentinel.raw", "extract"): len(TYPES),
        ("tc_sentinel.normalized", "normalize"): len(TYPES),
        ("tc_sentinel.rejected", "normalize"): len(TYPES),
        ("tc_sentinel.deduped", "dedupe"): len(TYPES),
        ("tc_sentinel.plan", "load"): len(TYPES),
        ("tc_sentinel.loaded", "load"): len(TYPES),
        ("tc_sentinel.verified", "verify"): len(TYPES),
        ("tc_sentinel.report", "report"): 1,
    }
    assert sorted(e.map_index for e in first.events("tc_sentinel.normalized")) == list(range(len(TYPES)))


def test_the_raw_events_count_every_record_read_and_their_partitions_hold_them(first, intents) -> None:
    meant = Counter(i.indicator_type for i in intents.values())
    for indicator_type, extra in _by_type(first, "tc_sentinel.raw").items():
        assert extra["rows"] == len(_partition(extra)) == meant[indicator_type], indicator_type
        assert extra["extracted"] + extra["deleted"] == extra["rows"]


def test_the_normalized_events_count_every_valid_candidate_in_the_partition_they_name(first, intents) -> None:
    # One candidate per observable the generator meant (a File: one per hash), rejected records left out.
    meant = Counter()
    for intent in intents.values():
        if intent.outcome != REJECTED:
            meant[intent.indicator_type] += len(intent.observables)
    for indicator_type, extra in _by_type(first, "tc_sentinel.normalized").items():
        assert extra["rows"] == len(_partition(extra)) == meant[indicator_type], indicator_type


def test_the_rejected_events_count_the_records_meant_to_be_rejected(first, intents) -> None:
    meant = Counter(i.indicator_type for i in intents.values() if i.outcome == REJECTED)
    for indicator_type, extra in _by_type(first, "tc_sentinel.rejected").items():
        rows = _partition(extra)
        assert extra["rows"] == len(rows) == meant[indicator_type], indicator_type
        assert sorted(rows["tc_id"]) == sorted(
            i.tc_id for i in intents.values() if i.outcome == REJECTED and (i.indicator_type == indicator_type)
        )


def test_the_deduped_events_count_one_row_per_type_and_canonical_value(first, expected) -> None:
    meant = Counter(x.indicator_type for x in expected.values())
    for indicator_type, extra in _by_type(first, "tc_sentinel.deduped").items():
        rows = _partition(extra)
        assert extra["rows"] == len(rows) == meant[indicator_type], indicator_type
        assert set(rows["external_id"]) == {e for e, x in expected.items() if x.indicator_type == indicator_type}


def test_the_loaded_events_count_the_target_writes_in_their_partition(first, expected) -> None:
    # A first run into an empty Graph creates every indicator meant to be live, and nothing else.
    live = Counter(x.indicator_type for x in expected.values() if x.active)
    for indicator_type, extra in _by_type(first, "tc_sentinel.loaded").items():
        rows = _partition(extra, target="graph")
        assert extra["rows"] == len(rows), indicator_type
        assert extra["created"] == extra["ok"] == int((rows["status"] == "ok").sum()) == live[indicator_type]
        assert extra["failed"] == 0
        assert extra["dry_run"] is False


def test_the_plan_events_count_every_planned_action_in_their_partition(first) -> None:
    for indicator_type, extra in _by_type(first, "tc_sentinel.plan").items():
        rows = _partition(extra, target="graph")
        assert extra["rows"] == len(rows), indicator_type
        assert extra["actions"] == {a: int((rows["action"] == a).sum()) for a in extra["actions"]}


def test_the_verified_events_count_what_verify_read_back(first, expected) -> None:
    live = Counter(x.indicator_type for x in expected.values() if x.active)
    for indicator_type, extra in _by_type(first, "tc_sentinel.verified").items():
        rows = _partition(extra, target="graph")
        assert extra["rows"] == extra["verified"] == len(rows) == live[indicator_type], indicator_type
        assert set(rows["status"]) <= {"read back"}
        assert extra["watermark"]


def test_the_report_event_names_the_report_written_and_the_runs_counts(first, graph_pipeline, expected) -> None:
    (event,) = first.events("tc_sentinel.report")
    extra = event.extra
    assert extra["run_id"] == first.run_id
    assert Path(extra["report"]).is_file()
    assert Path(extra["report"]).parent == graph_pipeline.data_root / "reports"
    runs = pd.read_parquet(extra["runs"])
    mine = runs[runs["run_id"] == first.run_id].set_index("indicator_type")
    assert sorted(extra["counts"]) == sorted(TYPES)
    for indicator_type, counts in extra["counts"].items():
        assert counts["deduplicated"] == mine.loc[indicator_type, "deduplicated"]
        assert counts["verified"] == mine.loc[indicator_type, "verified"]


def test_with_several_targets_each_target_gets_its_own_event_counting_its_own_file(fanout) -> None:
    from tests.dags.fanout import TYPES as FANOUT_TYPES

    run = fanout.first
    assert run.succeeded, run.explain()
    pairs = sorted((t, s) for t in FANOUT_TYPES for s in ("sentinel", "defender"))
    for asset in PER_TARGET:
        assert sorted((e.extra["indicator_type"], e.extra["target"]) for e in run.events(asset)) == pairs, asset
    for event in run.events("tc_sentinel.loaded"):
        rows = _partition(event.extra, target=event.extra["target"])
        assert event.extra["rows"] == len(rows) > 0
        assert event.extra["ok"] == int((rows["status"] == "ok").sum())


def test_a_rerun_of_the_same_date_announces_its_own_events_once(fanout) -> None:
    from tests.dags.fanout import TYPES as FANOUT_TYPES

    assert sorted(e.extra["indicator_type"] for e in fanout.rerun.events("tc_sentinel.normalized")) == sorted(
        FANOUT_TYPES
    )

"""The whole DAG against the ThreatConnect and Graph simulators: final state, reruns, chaos and watermarks."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc
import pytest

from include.pipeline.watermarks import iso, parse_iso
from simulators.dataset import NOT_LIVE, REJECTED
from tests.dags.dagrun import (
    DAY,
    FAILING_TYPE,
    FIRST_INTERVAL_END,
    FIRST_INTERVAL_START,
    PERMANENT_FAILURE,
    TYPES,
    documented_external_id,
    duplicate_external_ids,
    expected_live_keys,
    expected_rejections,
    graph_items,
    graph_observed,
    observable_value,
    raw_values,
    reason_matches,
)

pytestmark = [pytest.mark.integration, pytest.mark.dag]

STAGES = ("raw", "normalized", "rejected", "deduped", "plan", "loaded")


def _inactive_keys(expected):
    return {x.key for x in expected.values() if not x.active}


def _observed(items):
    """What each tiIndicator observes, by its own fields: (type, variant, value), counted."""
    return Counter(graph_observed(i) for i in items)


# --------------------------------------------------------------------------------------------- the seeded data
def test_the_seeded_data_means_some_records_to_be_rejected_respelled_inactive_or_false_positive(intents) -> None:
    kinds = Counter()
    for intent in intents.values():
        kinds["rejected"] += intent.outcome == REJECTED
        kinds["duplicate"] += intent.duplicate_of is not None
        kinds["inactive"] += intent.outcome == NOT_LIVE and intent.reason == "inactive"
        kinds["false positive"] += intent.outcome == NOT_LIVE and intent.reason == "false positive"
    assert all(kinds[k] > 0 for k in ("rejected", "duplicate", "inactive", "false positive")), kinds


def test_the_seeded_data_holds_the_dirt_the_canonicaliser_must_remove(seeded_records, intents) -> None:
    # raw != canonical for: case, a root dot, IDN, IPv6 spellings, hash case, URL host case, padding
    dirty = Counter()
    for record in seeded_records:
        for raw, observable in zip(raw_values(record), intents[record["id"]].observables, strict=False):
            if raw != observable.value:
                dirty[
                    (record["type"], "root dot" if raw.endswith(".") else "idn" if not raw.isascii() else "other")
                ] += 1
    assert {
        ("Host", "root dot"),
        ("Host", "idn"),
        ("Host", "other"),
        ("Address", "other"),
        ("URL", "other"),
        ("EmailAddress", "other"),
        ("File", "other"),
    } <= set(dirty), dirty


def test_each_seeded_duplicate_means_the_same_canonical_values_as_its_original(intents) -> None:
    for intent in (i for i in intents.values() if i.duplicate_of is not None):
        original = intents[intent.duplicate_of]
        assert (intent.indicator_type, intent.observables) == (original.indicator_type, original.observables)
        assert original.outcome != REJECTED


# --------------------------------------------------------------------------------------------- one clean run
def test_the_first_run_succeeds(graph_first) -> None:
    assert graph_first.run.succeeded, graph_first.run.explain()


def test_the_first_run_covers_exactly_one_day_ending_at_its_logical_date(graph_first) -> None:
    run = graph_first.run
    assert (run.interval_start, run.interval_end) == (FIRST_INTERVAL_START, FIRST_INTERVAL_END)
    assert run.interval_end - run.interval_start == DAY


def test_every_indicator_meant_to_be_loaded_is_live_in_graph_exactly_once_with_its_canonical_value(
    graph_first,
    expected,
) -> None:
    live = _observed(i for i in graph_first.items if i.get("isActive") is True)
    want = expected_live_keys(expected)
    assert {k: n for k, n in live.items() if want.get(k) != n} == {}, "held but not meant, or held more than once"
    assert sorted(set(want) - set(live)) == [], "meant to be loaded, not held"


def test_graph_holds_no_external_id_twice(graph_first) -> None:
    counts = Counter(i["externalId"] for i in graph_first.items)
    assert [e for e, n in counts.items() if n > 1] == []


def test_graph_holds_nothing_that_was_not_expected(graph_first, expected) -> None:
    assert sorted(set(_observed(graph_first.items)) - {x.key for x in expected.values()}) == []


def test_each_graph_indicator_carries_the_documented_external_id_of_what_it_observes(graph_first) -> None:
    wrong = {}
    for item in graph_first.items:
        kind, _, value = graph_observed(item)
        if item["externalId"] != documented_external_id(kind, value):
            wrong[item["externalId"]] = (kind, value)
    assert wrong == {}


def test_inactive_and_false_positive_indicators_never_delivered_are_not_created(graph_first, expected) -> None:
    assert set(_observed(graph_first.items)) & _inactive_keys(expected) == set()


def test_the_rejected_snapshot_holds_exactly_the_records_meant_to_be_rejected(
    graph_pipeline, graph_first, intents
) -> None:
    rejected = graph_pipeline.stage("rejected", graph_first.run)
    assert sorted(rejected["tc_id"].to_pylist()) == sorted(expected_rejections(intents.values()))


def test_each_rejection_gives_the_reason_the_generator_meant(graph_pipeline, graph_first, intents) -> None:
    meant = expected_rejections(intents.values())
    rows = graph_pipeline.stage("rejected", graph_first.run).to_pylist()
    wrong = [
        (r["tc_id"], r["raw_value"], meant.get(r["tc_id"]), r["reason"])
        for r in rows
        if r["tc_id"] not in meant or not reason_matches(meant[r["tc_id"]], r["reason"])
    ]
    assert wrong == []


def test_rejected_values_never_reach_graph(graph_first, seeded_records) -> None:
    held = {observable_value(i).lower() for i in graph_first.items}
    leaked = [v for r in seeded_records if r["_invalid"] for v in raw_values(r) if v.strip().lower() in held]
    assert leaked == []


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_snapshot_reads_as_a_hive_partitioned_dataset_with_a_partition_per_type(
    graph_pipeline, graph_first, stage
) -> None:
    table = graph_pipeline.stage(stage, graph_first.run)
    assert table.column_names[-2:] == ["indicator_type", "run_id"]
    assert graph_pipeline.partitions(stage, graph_first.run) == set(TYPES)


def test_the_loaded_snapshot_records_exactly_what_graph_holds_as_delivered(graph_pipeline, graph_first) -> None:
    loaded = graph_pipeline.stage("loaded", graph_first.run)
    delivered = loaded.filter(pc.equal(loaded["status"], "ok"))
    assert sorted(delivered["external_id"].to_pylist()) == sorted(i["externalId"] for i in graph_first.items)


# --------------------------------------------------------------------------------------------- watermarks
def test_the_first_run_commits_each_types_latest_valid_change_as_its_watermark(graph_first, expected) -> None:
    # Unchanged and never-delivered inactive indicators are skipped, not failed: they count as done for the mark.
    latest = {t: max(x.last_modified for x in expected.values() if x.indicator_type == t) for t in TYPES}
    assert graph_first.run.xcom("commit_watermarks", "watermarks") == {t: iso(m) for t, m in latest.items()}


def test_the_next_run_reads_each_type_from_the_committed_watermark_not_its_interval_start(
    graph_first, graph_story
) -> None:
    marks = graph_first.run.xcom("commit_watermarks", "watermarks")
    assert all(parse_iso(m) < FIRST_INTERVAL_END for m in marks.values()), "the seed must end before the interval"
    windows = {
        job["indicator_type"]: (job["window"]["start"], job["window"]["end"])
        for job in graph_story.next.run.xcom("plan_run")
    }
    assert windows == {t: (marks[t], iso(FIRST_INTERVAL_END + DAY)) for t in TYPES}


def test_the_next_days_run_succeeds(graph_story) -> None:
    assert graph_story.next.run.succeeded, graph_story.next.run.explain()


def test_the_next_run_extracts_a_change_that_arrived_after_the_first_run(graph_pipeline, graph_story) -> None:
    raw = graph_pipeline.stage("raw", graph_story.next.run)
    extracted = set(raw.filter(pc.equal(raw["indicator_type"], "Host"))["tc_id"].to_pylist())
    assert {graph_story.late["id"], graph_story.next_day["id"]} <= extracted


def test_a_change_that_arrived_late_but_predates_the_next_interval_still_reaches_graph(graph_story) -> None:
    assert ("Host", "domain", graph_story.late["hostName"]) in _observed(graph_story.next.items)


# --------------------------------------------------------------------------------------------- rerun
def test_a_rerun_of_the_same_interval_succeeds(graph_rerun) -> None:
    assert graph_rerun.run.succeeded, graph_rerun.run.explain()


def test_a_rerun_of_the_same_interval_submits_no_new_indicator(graph_story, graph_rerun) -> None:
    assert graph_rerun.submitted == graph_story.next.submitted
    assert {i["externalId"] for i in graph_rerun.items} == {i["externalId"] for i in graph_story.next.items}


def test_a_rerun_of_the_same_interval_leaves_no_duplicate_external_id(graph_pipeline, graph_rerun) -> None:
    assert duplicate_external_ids(graph_pipeline.stack) == {}


def test_a_rerun_of_the_same_interval_leaves_graph_in_the_same_state(graph_story, graph_rerun) -> None:
    assert graph_rerun.projection == graph_story.next.projection


def test_a_rerun_over_an_unchanged_source_sends_no_write_at_all(graph_story) -> None:
    assert graph_story.rerun.writes == graph_story.next.writes


# --------------------------------------------------------------------------------------------- chaos
def test_the_chaos_run_met_throttling_outages_an_ambiguous_submit_and_partial_failures(graph_chaos) -> None:
    statuses = Counter(r.status for r in graph_chaos.pipeline.stack.graph.requests)
    assert all(statuses[s] > 0 for s in (429, 503, 504, 206)), statuses


def test_a_run_through_throttling_outages_and_partial_failures_succeeds(graph_chaos) -> None:
    assert graph_chaos.captured.run.succeeded, graph_chaos.captured.run.explain()


def test_indicators_refused_inside_a_206_are_resubmitted_and_delivered(graph_chaos) -> None:
    loaded = graph_chaos.pipeline.stage("loaded", graph_chaos.captured.run).to_pylist()
    retried = [(r["status"], r["attempts"] >= 2) for r in loaded if r["external_id"] in graph_chaos.partial]
    assert retried == [("ok", True)] * len(graph_chaos.partial)


def test_a_run_through_chaos_ends_in_the_clean_runs_graph_state(graph_first, graph_chaos) -> None:
    assert graph_chaos.captured.projection == graph_first.projection


def test_a_run_through_chaos_leaves_no_duplicate_external_id(graph_chaos) -> None:
    assert duplicate_external_ids(graph_chaos.pipeline.stack) == {}


# --------------------------------------------------------------------------------------------- permanent failure
def test_one_permanently_refused_indicator_fails_the_run_at_the_default_threshold(graph_permanent_failure) -> None:
    run = graph_permanent_failure.run
    assert (run.state, run.process.returncode != 0) == ("failed", True), run.explain()


def test_the_loaded_snapshot_records_the_refused_indicator_as_failed_with_graphs_message(
    graph_permanent_failure,
) -> None:
    loaded = graph_permanent_failure.pipeline.stage("loaded", graph_permanent_failure.run)
    rows = loaded.filter(pc.equal(loaded["external_id"], graph_permanent_failure.victim)).to_pylist()
    assert [(r["status"], PERMANENT_FAILURE in (r["error"] or "")) for r in rows] == [("failed", True)], rows


def test_a_five_percent_failure_threshold_lets_the_run_succeed_despite_one_refused_indicator(
    graph_tolerated_failure,
) -> None:
    assert graph_tolerated_failure.run.succeeded, graph_tolerated_failure.run.explain()


def test_with_a_tolerated_failure_graph_holds_every_other_indicator(graph_tolerated_failure, expected) -> None:
    held = set(_observed(graph_items(graph_tolerated_failure.pipeline.stack)))
    wanted = {x.key for x in expected.values() if x.indicator_type == FAILING_TYPE and x.active}
    assert held & wanted == wanted - {expected[graph_tolerated_failure.victim].key}

"""The whole DAG against the ThreatConnect and Sentinel STIX upload simulators: stored objects, reruns and chaos."""

from __future__ import annotations

from collections import Counter

import pytest
import stix2
from stix2patterns.pattern import Pattern

from tests.dags.dagrun import (
    SOURCE_SYSTEM,
    documented_external_id,
    expected_live_keys,
    expected_rejections,
    reason_matches,
    stix_observed,
)

pytestmark = [pytest.mark.integration, pytest.mark.dag]


def _observed(objects):
    """What each STIX indicator's pattern compares, by the pattern alone: (type, variant, value), counted."""
    return Counter(stix_observed(obj) for obj in objects)


# --------------------------------------------------------------------------------------------- one clean run
def test_the_first_sentinel_run_succeeds(sentinel_first) -> None:
    assert sentinel_first.run.succeeded, sentinel_first.run.explain()


def test_every_indicator_meant_to_be_loaded_is_stored_once_unrevoked_with_its_canonical_value(
    sentinel_first, expected
) -> None:
    live = _observed(obj for obj in sentinel_first.objects.values() if not obj.get("revoked"))
    want = expected_live_keys(expected)
    assert {k: n for k, n in live.items() if want.get(k) != n} == {}, "held but not meant, or held more than once"
    assert sorted(set(want) - set(live)) == [], "meant to be loaded, not held"


def test_no_stix_id_is_stored_twice(sentinel_first) -> None:
    counts = Counter(stix_id for _, _, stix_id in sentinel_first.keys)
    assert [s for s, n in counts.items() if n > 1] == []


def test_sentinel_holds_nothing_that_was_not_expected(sentinel_first, expected) -> None:
    assert sorted(set(_observed(sentinel_first.objects.values())) - {x.key for x in expected.values()}) == []


def test_every_stored_object_parses_as_stix(sentinel_first) -> None:
    types = {stix2.parse(obj, allow_custom=True).type for obj in sentinel_first.objects.values()}
    assert types == {"indicator"}


def test_every_object_is_uploaded_under_the_threatconnect_owner_sourcesystem(sentinel_first) -> None:
    assert {source for _, source, _ in sentinel_first.keys} == {SOURCE_SYSTEM}


def test_every_pattern_is_one_comparison_without_operators_or_qualifiers(sentinel_first) -> None:
    compound = []
    for sid, obj in sentinel_first.objects.items():
        shape = Pattern(obj["pattern"]).inspect()
        comparisons = sum(len(c) for c in shape.comparisons.values())
        if comparisons != 1 or shape.observation_ops or shape.qualifiers:
            compound.append((sid, obj["pattern"]))
    assert compound == []


def test_each_stix_id_is_the_documented_id_of_what_its_pattern_observes(sentinel_first) -> None:
    wrong = []
    for sid, obj in sentinel_first.objects.items():
        kind, _, value = stix_observed(obj)
        if sid != f"indicator--{documented_external_id(kind, value)}":
            wrong.append((sid, obj["pattern"]))
    assert wrong == []


def test_inactive_and_false_positive_indicators_never_delivered_are_not_uploaded(sentinel_first, expected) -> None:
    inactive = {x.key for x in expected.values() if not x.active}
    assert set(_observed(sentinel_first.objects.values())) & inactive == set()


def test_every_record_meant_to_be_rejected_is_rejected_with_the_reason_meant(
    sentinel_story, sentinel_first, intents
) -> None:
    meant = expected_rejections(intents.values())
    rows = sentinel_story.pipeline.stage("rejected", sentinel_first.run).to_pylist()
    assert sorted(r["tc_id"] for r in rows) == sorted(meant)
    assert [(r["tc_id"], r["reason"]) for r in rows if not reason_matches(meant[r["tc_id"]], r["reason"])] == []


# --------------------------------------------------------------------------------------------- rerun
def test_a_sentinel_rerun_of_the_same_interval_succeeds(sentinel_rerun) -> None:
    assert sentinel_rerun.run.succeeded, sentinel_rerun.run.explain()


def test_a_sentinel_rerun_of_the_same_interval_adds_no_object(sentinel_first, sentinel_rerun) -> None:
    assert sorted(sentinel_rerun.keys) == sorted(sentinel_first.keys)


def test_a_sentinel_rerun_of_the_same_interval_leaves_every_object_as_it_was(sentinel_first, sentinel_rerun) -> None:
    assert sentinel_rerun.objects == sentinel_first.objects


def test_a_sentinel_rerun_over_an_unchanged_source_uploads_nothing(sentinel_first, sentinel_rerun) -> None:
    assert sentinel_rerun.rows == sentinel_first.rows


# --------------------------------------------------------------------------------------------- chaos
def test_the_sentinel_chaos_run_met_rate_limit_and_bare_429s(sentinel_chaos) -> None:
    # Two bare 429s were injected; anything beyond them is the workspace's own rate limit (with Retry-After).
    assert sentinel_chaos.pipeline.stack.sentinel.throttled > 2


def test_a_sentinel_run_through_throttling_and_record_errors_succeeds(sentinel_chaos) -> None:
    assert sentinel_chaos.captured.run.succeeded, sentinel_chaos.captured.run.explain()


def test_objects_rejected_once_per_record_are_delivered_on_their_second_upload(sentinel_chaos) -> None:
    loaded = sentinel_chaos.pipeline.stage("loaded", sentinel_chaos.captured.run).to_pylist()
    retried = [(r["status"], r["attempts"]) for r in loaded if r["target_id"] in sentinel_chaos.rejected_once]
    assert retried == [("ok", 2)] * len(sentinel_chaos.rejected_once)


def test_a_sentinel_run_through_chaos_ends_in_the_clean_runs_stored_state(sentinel_first, sentinel_chaos) -> None:
    assert sentinel_chaos.captured.objects == sentinel_first.objects

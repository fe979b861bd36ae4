"""The whole DAG against the ThreatConnect and Sentinel STIX upload simulators: stored objects, reruns and chaos."""

from __future__ import annotations

from collections import Counter

import pytest
import stix2
from stix2patterns.pattern import Pattern

from tests.dags.dagrun import SOURCE_SYSTEM

pytestmark = [pytest.mark.integration, pytest.mark.dag]


def _stix(ids):
    return {f"indicator--{e}" for e in ids}


def _literal(quoted: str) -> str:
    """A STIX pattern string literal's value: quotes removed, ``\\'`` and ``\\\\`` unescaped."""
    return quoted[1:-1].replace("\\'", "'").replace("\\\\", "\\")


# --------------------------------------------------------------------------------------------- one clean run
def test_the_first_sentinel_run_succeeds(sentinel_first) -> None:
    assert sentinel_first.run.succeeded, sentinel_first.run.explain()


def test_every_active_expected_indicator_is_stored_and_not_revoked(sentinel_first, expected) -> None:
    live = {sid for sid, obj in sentinel_first.objects.items() if not obj.get("revoked")}
    assert live == _stix(e for e, x in expected.items() if x.active)


def test_no_stix_id_is_stored_twice(sentinel_first) -> None:
    counts = Counter(stix_id for _, _, stix_id in sentinel_first.keys)
    assert [s for s, n in counts.items() if n > 1] == []


def test_sentinel_holds_nothing_that_was_not_expected(sentinel_first, expected) -> None:
    assert set(sentinel_first.objects) <= _stix(expected)


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


def test_each_pattern_observes_the_expected_canonical_value(sentinel_first, expected) -> None:
    wrong = []
    for sid, obj in sentinel_first.objects.items():
        (comparisons,) = Pattern(obj["pattern"]).inspect().comparisons.values()
        value = _literal(comparisons[0][2])
        if value != expected[sid.removeprefix("indicator--")].value:
            wrong.append((sid, obj["pattern"]))
    assert wrong == []


def test_inactive_and_false_positive_indicators_never_delivered_are_not_uploaded(sentinel_first, expected) -> None:
    assert set(sentinel_first.objects) & _stix(e for e, x in expected.items() if not x.active) == set()


# --------------------------------------------------------------------------------------------- rerun
def test_a_sentinel_rerun_of_the_same_interval_succeeds(sentinel_rerun) -> None:
    assert sentinel_rerun.run.succeeded, sentinel_rerun.run.explain()


def test_a_sentinel_rerun_of_the_same_interval_adds_no_object(sentinel_first, sentinel_rerun) -> None:
    assert sorted(sentinel_rerun.keys) == sorted(sentinel_first.keys)


def test_a_sentinel_rerun_of_the_same_interval_leaves_every_object_as_it_was(sentinel_first,
                                                                             sentinel_rerun) -> None:
    assert sentinel_rerun.objects == sentinel_first.objects


def test_a_sentinel_rerun_over_an_unchanged_source_uploads_nothing(sentinel_first,
                                                                                      sentinel_rerun) -> None:
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

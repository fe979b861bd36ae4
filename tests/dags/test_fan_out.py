"""Several targets in one run: one extraction, one load and verify per (type, target), each target with its own
delivered state and watermark; a target added later is back-filled without resending to the others."""

from __future__ import annotations

import ipaddress

import pytest

from include.pipeline.watermarks import iso
from tests.dags.dagrun import FIRST_INTERVAL_START, SOURCE_SYSTEM
from tests.dags.fanout import TYPES

pytestmark = [pytest.mark.integration, pytest.mark.dag]


def _active(expected) -> set[str]:
    return {e for e, x in expected.items() if x.indicator_type in TYPES and x.active}


def _defender_can_hold(expected) -> set[str]:
    return {
        e
        for e in _active(expected)
        if expected[e].indicator_type != "Address" or ipaddress.ip_address(expected[e].value).is_global
    }


def _sentinel_live(stack) -> set[str]:
    return {
        key[2].removeprefix("indicator--")
        for key, obj in stack.sentinel.objects.items()
        if key[1] == SOURCE_SYSTEM and not obj.get("revoked")
    }


def test_a_run_to_sentinel_and_defender_succeeds_with_a_load_and_verify_per_type_and_target(fanout) -> None:
    assert fanout.first.succeeded, fanout.first.explain()
    rows = fanout.first.xcom("report")["types"]
    assert set(rows) == {f"{t} → {target}" for t in TYPES for target in ("sentinel", "defender")}
    assert all(row["verified"] is not None for row in rows.values())


def test_the_fan_out_ends_exact_on_both_targets(fanout, expected) -> None:
    stack = fanout.pipeline.stack
    assert _sentinel_live(stack) == _active(expected)
    assert stack.target_external_ids("defender") == _defender_can_hold(expected)


def test_a_rerun_of_the_fan_out_sends_nothing_to_either_target(fanout) -> None:
    assert fanout.rerun.succeeded, fanout.rerun.explain()
    assert fanout.writes["rerun"] == {"sentinel": 0, "defender": 0, "graph": 0}


def test_each_target_keeps_its_own_watermark(fanout) -> None:
    marks = fanout.first.xcom("commit_watermarks", "watermarks")
    assert {f"{t} → {target}" for t in TYPES for target in ("sentinel", "defender")} <= set(marks)


def test_a_target_added_later_is_back_filled_without_resending_to_the_others(fanout, expected) -> None:
    assert fanout.added.succeeded, fanout.added.explain()
    assert fanout.writes["added"]["sentinel"] == 0
    assert fanout.writes["added"]["defender"] == 0
    assert fanout.pipeline.stack.target_external_ids("graph", include_retracted=False) == _active(expected)


def test_one_failing_type_and_target_fails_the_run_and_names_only_itself(partial_failure) -> None:
    run = partial_failure.run
    assert not run.succeeded
    assert "did not complete: ['URL → graph']" in run.output


def test_the_healthy_types_and_targets_still_load_verify_and_advance_their_watermarks(
    partial_failure, expected
) -> None:
    marks = partial_failure.run.xcom("commit_watermarks", "watermarks")
    latest = {t: iso(max(x.last_modified for x in expected.values() if x.indicator_type == t)) for t in ("Host", "URL")}
    assert marks["Host → graph"] == latest["Host"]
    assert marks["Host → sentinel"] == latest["Host"]
    assert marks["URL → sentinel"] == latest["URL"]
    assert marks["URL → graph"] == iso(FIRST_INTERVAL_START)  # held where the run began reading

"""What the target really holds decides what is sent: a rerun repairs objects removed or changed in the target,
and a third source's objects in the same target are never touched (scenarios in ``tests/dags/drift.py``)."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from tests.dags import drift as dr
from tests.dags.dagrun import SOURCE_SYSTEM

pytestmark = [pytest.mark.integration, pytest.mark.dag]


@pytest.fixture(params=["drift_graph", "drift_sentinel", "drift_defender"])
def drift(request: pytest.FixtureRequest, scenarios) -> dr.Drift:
    return scenarios.get(request.param)


def _our_live(drift: dr.Drift) -> set[str]:
    stack = drift.pipeline.stack
    if drift.pipeline.sink in ("graph", "defender"):  # owned by our app only
        return stack.target_external_ids(drift.pipeline.sink, include_retracted=False)
    return {
        key[2].removeprefix("indicator--")
        for key, obj in stack.sentinel.objects.items()
        if key[1] == SOURCE_SYSTEM and not obj.get("revoked")
    }


def _plan(drift: dr.Drift) -> dict[str, dict]:
    table = drift.pipeline.stage("plan", drift.rerun)
    return {r["external_id"]: r for r in table.filter(pc.invert(pc.equal(table["action"], "skip"))).to_pylist()}


def test_both_runs_of_the_interval_succeed(drift) -> None:
    assert drift.first.succeeded, drift.first.explain()
    assert drift.rerun.succeeded, drift.rerun.explain()


def test_a_rerun_recreates_what_was_removed_from_the_target_and_updates_what_was_changed(drift) -> None:
    planned = _plan(drift)
    assert {e: planned[e]["action"] for e in drift.removed} == dict.fromkeys(drift.removed, "create")
    assert planned[drift.changed]["action"] == "update"
    assert all(r["reason"].startswith("heal:") for r in planned.values())
    # Nothing else is sent: only the drift.
    assert set(planned) == {*drift.removed, drift.changed}


def test_the_rerun_costs_at_most_one_write_request_per_kind_of_repair(drift) -> None:
    # Graph: one submit for the five creates and one update; Sentinel and Defender: one upload/import for all six.
    assert drift.rerun_writes <= 2


def test_after_the_rerun_the_target_holds_every_indicator_exactly(drift, expected) -> None:
    assert _our_live(drift) == {e for e, x in expected.items() if x.indicator_type == "Host" and x.active}
    assert drift.rerun.xcom("report")["types"]["Host"]["healed"] == len(drift.removed) + 1


def test_a_third_sources_objects_in_the_same_target_are_never_touched(drift) -> None:
    assert drift.others_before
    assert drift.others_after == drift.others_before

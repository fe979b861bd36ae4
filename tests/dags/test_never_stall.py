"""Never stall, never lose: a refused indicator, a deletion, a minimal connection, dropped writes, bad credentials.

Each test reads what the simulators saw and what the runs left behind (snapshots, XCom, output); the scenarios
are built in ``tests/dags/never_stall.py``.
"""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from include.pipeline.watermarks import iso
from tests.dags import never_stall as ns
from tests.dags.dagrun import FIRST_INTERVAL_START

pytestmark = [pytest.mark.integration, pytest.mark.dag]


def _rows(pipeline, stage, run, external_id=None) -> list[dict]:
    table = pipeline.stage(stage, run)
    if external_id is not None:
        table = table.filter(pc.equal(table["external_id"], external_id))
    return table.to_pylist()


def _report(run) -> dict:
    return run.xcom("report")["types"]


# --------------------------------------------------------------------------------------------- 1. quarantine
def test_item1_an_indicator_the_target_refuses_for_its_content_does_not_fail_the_run(quarantine) -> None:
    assert quarantine.first.succeeded, quarantine.first.explain()


def test_item1_the_refused_indicator_is_recorded_rejected_with_the_targets_message(quarantine) -> None:
    rows = _rows(quarantine.pipeline, "loaded", quarantine.first, quarantine.victim)
    assert [(r["status"], ns.REFUSAL in (r["error"] or "")) for r in rows] == [("rejected", True)]
    assert quarantine.sent["first"][quarantine.victim] == 1  # refused content is not resent within the run


def test_item1_the_refusal_does_not_hold_the_watermark_back(quarantine, expected) -> None:
    latest = max(x.last_modified for x in expected.values() if x.indicator_type == "URL")
    assert quarantine.first.xcom("commit_watermarks")["URL"] == iso(latest)


def test_item1_the_summary_counts_the_refusal_as_rejected_by_the_target(quarantine) -> None:
    assert _report(quarantine.first)["URL"]["tgt_rejected"] == 1
    assert "tgt_rejected" in quarantine.first.output


def test_item1_a_url_over_2083_characters_is_rejected_before_sending_with_its_reason(quarantine) -> None:
    rejected = [
        r for r in _rows(quarantine.pipeline, "rejected", quarantine.first) if r["tc_id"] == quarantine.long_url_id
    ]
    assert len(rejected) == 1
    assert "2,083" in rejected[0]["reason"]
    assert all(
        len(str(i.get("url") or "")) <= 2083
        for i in quarantine.pipeline.stack.graph.owned_by(
            quarantine.pipeline.stack.connections()["msgraph_default"]["login"]
        )
    )


def test_item1_a_rerun_does_not_send_the_quarantined_indicator_again(quarantine) -> None:
    assert quarantine.rerun.succeeded, quarantine.rerun.explain()
    assert quarantine.sent["rerun"][quarantine.victim] == 0
    plan = _rows(quarantine.pipeline, "plan", quarantine.rerun, quarantine.victim)
    assert [r["action"] for r in plan] == ["skip"]
    assert plan[0]["reason"].startswith("quarantined")


def test_item1_the_quarantined_indicator_is_sent_again_once_it_changes_in_threatconnect(quarantine) -> None:
    assert quarantine.changed.succeeded, quarantine.changed.explain()
    assert quarantine.sent["changed"][quarantine.victim] == 1


def test_item1_many_refusals_fail_the_run_at_once_without_an_airflow_retry(mass_rejection) -> None:
    assert not mass_rejection.run.succeeded
    assert "rejection threshold" in mass_rejection.run.output
    # One load attempt: a retry could not change a mapping the target refuses.
    assert mass_rejection.writes == mass_rejection.expected_batches


def test_item1_many_refusals_are_recorded_failed_so_they_are_sent_again_after_a_fix(mass_rejection) -> None:
    statuses = {r["status"] for r in _rows(mass_rejection.pipeline, "loaded", mass_rejection.run)}
    assert statuses == {"failed"}


# --------------------------------------------------------------------------------------------- 2. deletions
@pytest.fixture(params=["deletion_graph_v2", "deletion_sentinel_v3"])
def deletion(request: pytest.FixtureRequest, scenarios) -> ns.Deletion:
    return scenarios.get(request.param)


def test_item2_the_deleted_listing_reports_a_date_added_older_than_the_delivered_change(deletion, expected) -> None:
    # The precondition that broke the field test: dateAdded predates the lastModified that was delivered.
    for external_id in deletion.deleted:
        assert FIRST_INTERVAL_START - ns.dt.timedelta(days=30) < expected[external_id].last_modified


def test_item2_an_indicator_deleted_in_threatconnect_is_retracted_by_the_next_run(deletion) -> None:
    assert deletion.first.succeeded, deletion.first.explain()
    assert deletion.next.succeeded, deletion.next.explain()
    live = deletion.pipeline.stack.target_external_ids(deletion.pipeline.sink, include_retracted=False)
    assert set(deletion.deleted) & live == set()
    plan = {r["external_id"]: r for r in _rows(deletion.pipeline, "plan", deletion.next)}
    assert {plan[e]["action"] for e in deletion.deleted} == {"retract"}


def test_item2_a_value_re_created_inside_the_window_stays_live(deletion) -> None:
    live = deletion.pipeline.stack.target_external_ids(deletion.pipeline.sink, include_retracted=False)
    assert deletion.recreated in live


def test_item2_running_the_deletions_interval_again_does_not_retract_the_value_re_created_since(deletion) -> None:
    assert deletion.later.succeeded, deletion.later.explain()
    assert deletion.replayed.succeeded, deletion.replayed.explain()
    plan = {r["external_id"]: r for r in _rows(deletion.pipeline, "plan", deletion.replayed)}
    assert plan[deletion.recreated]["action"] == "skip"
    assert plan[deletion.recreated]["reason"].startswith("stale: deletion of an earlier indicator")
    live = deletion.pipeline.stack.target_external_ids(deletion.pipeline.sink, include_retracted=False)
    assert deletion.recreated in live
    assert set(deletion.deleted) & live == set()


# --------------------------------------------------------------------------------------------- 3. Sentinel
def test_item3_the_documented_minimal_sentinel_connection_gives_a_green_run(sentinel_acknowledged) -> None:
    assert sentinel_acknowledged.run.succeeded, sentinel_acknowledged.run.explain()


def test_item3_without_management_coordinates_verify_relies_on_acknowledgements_and_says_so(
    sentinel_acknowledged,
) -> None:
    row = _report(sentinel_acknowledged.run)["Host"]
    assert row["verified_by"] == "acknowledged"
    assert row["verified"] > 0
    assert "cannot read objects back" in sentinel_acknowledged.run.output
    assert "(ack)" in sentinel_acknowledged.run.output


@pytest.fixture(params=["dropped_graph", "dropped_sentinel"])
def dropped(request: pytest.FixtureRequest, scenarios) -> ns.Dropped:
    return scenarios.get(request.param)


def test_item3_writes_acknowledged_and_dropped_fail_the_run_that_sent_them(dropped) -> None:
    assert not dropped.first.succeeded
    assert "missing" in dropped.first.output
    # The mark holds where the run began reading: the next run reads the first window again.
    assert dropped.first.xcom("commit_watermarks")["Host"] == iso(FIRST_INTERVAL_START)


def test_item3_the_next_run_sends_exactly_the_dropped_writes_again_and_ends_exact(dropped, expected) -> None:
    assert dropped.next.succeeded, dropped.next.explain()
    assert dict(dropped.sent_next) == dict.fromkeys(dropped.dropped, 1)
    live = dropped.pipeline.stack.target_external_ids(dropped.pipeline.sink, include_retracted=False)
    assert live == {e for e, x in expected.items() if x.indicator_type == "Host" and x.active}
    assert _report(dropped.next)["Host"]["healed"] == len(dropped.dropped)


# --------------------------------------------------------------------------------------------- 3 and 5. preflight
def test_item3_wrong_credentials_fail_the_run_in_preflight_before_anything_is_extracted(bad_credentials) -> None:
    assert not bad_credentials.run.succeeded
    assert not (bad_credentials.pipeline.data_root / "raw").exists()
    assert "preflight failed" in bad_credentials.run.output


def test_item3_the_preflight_message_names_each_connection_and_what_the_service_said(bad_credentials) -> None:
    output = bad_credentials.run.output
    assert "'threatconnect_default'" in output
    assert "'msgraph_default'" in output
    assert "AADSTS7000215" in output


def test_item5_wrong_credentials_are_tried_once_not_retried(bad_credentials) -> None:
    assert bad_credentials.tc_requests == 1
    assert bad_credentials.token_requests == 1

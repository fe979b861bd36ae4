"""The whole DAG into Microsoft Defender for Endpoint (scenarios in ``tests/dags/defender_story.py``)."""

from __future__ import annotations

import ipaddress

import pyarrow.compute as pc
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.dag]

DOCUMENTED_FIELDS = {
    "indicatorValue",
    "indicatorType",
    "action",
    "title",
    "description",
    "expirationTime",
    "severity",
    "recommendedActions",
    "generateAlert",
    "rbacGroupNames",
    "application",
    "educateUrl",
}


def _defender_can_hold(expected) -> set[str]:
    """Active indicators Defender has a type for: no email addresses, no internal addresses (the contract)."""
    held = set()
    for external_id, x in expected.items():
        if not x.active or x.indicator_type == "EmailAddress":
            continue
        if x.indicator_type == "Address" and not ipaddress.ip_address(x.value).is_global:
            continue
        held.add(external_id)
    return held


def test_the_first_defender_run_succeeds(defender_story) -> None:
    assert defender_story.first.succeeded, defender_story.first.explain()


def test_defender_holds_exactly_the_active_indicators_it_has_a_type_for(defender_story, expected) -> None:
    held = defender_story.pipeline.stack.target_external_ids("defender")
    assert held == _defender_can_hold(expected)


def test_email_addresses_and_internal_addresses_are_planned_as_not_supported_never_errors(
    defender_story, expected
) -> None:
    plan = defender_story.pipeline.stage("plan", defender_story.first)
    skipped = plan.filter(pc.starts_with(plan["reason"], "not supported by defender"))
    emails = {e for e, x in expected.items() if x.indicator_type == "EmailAddress" and x.active}
    assert emails <= set(skipped["external_id"].to_pylist())
    loaded = defender_story.pipeline.stage("loaded", defender_story.first)
    assert set(loaded["status"].to_pylist()) == {"ok"}


def test_every_stored_indicator_carries_only_documented_fields_with_exact_enum_spellings(defender_story) -> None:
    stack = defender_story.pipeline.stack
    for item in stack.defender.created_by(stack.connections()["defender_default"]["login"]):
        assert item["indicatorType"] in {"IpAddress", "DomainName", "Url", "FileMd5", "FileSha1", "FileSha256"}
        assert item["action"] == "Alert"
        assert item.get("severity") in (None, "Informational", "Low", "Medium", "High")
        sent = {k for k in item if k in DOCUMENTED_FIELDS}
        assert {"indicatorValue", "indicatorType", "action", "title", "description"} <= sent


def test_a_rerun_sends_nothing_to_defender(defender_story) -> None:
    assert defender_story.rerun.succeeded, defender_story.rerun.explain()
    assert defender_story.imports_first > 0
    assert defender_story.imports_rerun == 0


def test_the_capacity_is_never_exceeded_and_the_left_out_ones_are_reported(defender_capacity, expected) -> None:
    run = defender_capacity.run
    assert run.succeeded, run.explain()
    stack = defender_capacity.pipeline.stack
    assert len(stack.target_external_ids("defender")) == defender_capacity.capacity
    active = len([x for x in expected.values() if x.indicator_type == "Host" and x.active])
    plan = defender_capacity.pipeline.stage("plan", run)
    over = plan.filter(pc.starts_with(plan["reason"], "over defender capacity"))
    assert over.num_rows == active - defender_capacity.capacity
    assert run.xcom("report")["types"]["Host"]["capacity"]["used"] == defender_capacity.capacity
    assert f"{defender_capacity.capacity} / {defender_capacity.capacity}" in run.output

"""The Graph simulator's validation and $filter, tested without a socket (the fake must be as strict as documented)."""

from __future__ import annotations

from typing import Any

import pytest

from simulators.graph import GraphValidationError, parse_filter, validate_new, validate_update


def _indicator(**overrides: Any) -> dict[str, Any]:
    body = {
        "action": "alert",
        "description": "test",
        "expirationDateTime": "2026-04-10T08:30:00Z",
        "targetProduct": "Azure Sentinel",
        "threatType": "C2",
        "tlpLevel": "amber",
        "networkIPv4": "10.0.0.1",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    "missing", ["action", "description", "expirationDateTime", "targetProduct", "threatType", "tlpLevel"]
)
def test_each_required_field_is_required(missing: str) -> None:
    with pytest.raises(GraphValidationError, match=missing):
        validate_new(_indicator(**{missing: None}))


def test_an_indicator_needs_an_observable() -> None:
    with pytest.raises(GraphValidationError, match="observable"):
        validate_new(_indicator(networkIPv4=None, domainName=""))


def test_microsoft_sentinel_is_not_a_target_product() -> None:
    with pytest.raises(GraphValidationError, match="Azure Sentinel"):
        validate_new(_indicator(targetProduct="Microsoft Sentinel"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("description", "x" * 101),
        ("confidence", 101),
        ("severity", 6),
        ("tlpLevel", "purple"),
        ("action", "quarantine"),
        ("threatType", "Spam"),
        ("diamondModel", "attacker"),
        ("expirationDateTime", "tomorrow"),
        ("isActive", "yes"),
        ("tags", "one-tag"),
        ("networkIPv4s", "10.0.0.1"),
    ],
)
def test_values_outside_their_domain_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(GraphValidationError):
        validate_new(_indicator(**{field: value}))


def test_a_hash_needs_its_hash_type() -> None:
    with pytest.raises(GraphValidationError, match="fileHashType"):
        validate_new(_indicator(networkIPv4=None, fileHashValue="d41d8cd98f00b204e9800998ecf8427e"))


def test_scalars_are_coerced_leniently_like_the_real_service() -> None:
    stored = validate_new(
        _indicator(
            confidence="75",
            isActive="true",
            passiveOnly="false",
            expirationDateTime="2026-04-10T10:30:00+0200",
            tlpLevel="Amber",
        )
    )
    assert stored["confidence"] == 75
    assert stored["isActive"] is True
    assert stored["passiveOnly"] is False
    assert stored["expirationDateTime"] == "2026-04-10T08:30:00Z"
    assert stored["tlpLevel"] == "amber"


def test_threat_type_and_observables_cannot_be_updated() -> None:
    stored = {**validate_new(_indicator()), "id": "x"}
    with pytest.raises(GraphValidationError, match="threatType"):
        validate_update({"id": "x", "threatType": "Malware"}, stored)
    with pytest.raises(GraphValidationError, match="networkIPv4"):
        validate_update({"id": "x", "networkIPv4": "10.0.0.2"}, stored)


def test_an_update_may_repeat_unchanged_fixed_fields() -> None:
    stored = {**validate_new(_indicator()), "id": "x"}
    changes = validate_update({"id": "x", "targetProduct": "Azure Sentinel", "confidence": 10}, stored)
    assert changes == {"confidence": 10}


def test_filters_combine_eq_with_or_and_and() -> None:
    predicate = parse_filter("externalId eq 'a' or externalId eq 'b' and tlpLevel eq 'red'")
    assert predicate({"externalId": "a", "tlpLevel": "green"})
    assert predicate({"externalId": "b", "tlpLevel": "red"})
    assert not predicate({"externalId": "b", "tlpLevel": "green"})


def test_filters_honour_parentheses_and_doubled_quotes() -> None:
    predicate = parse_filter("(externalId eq 'o''brien' or externalId eq 'b') and isActive eq true")
    assert predicate({"externalId": "o'brien", "isActive": True})
    assert not predicate({"externalId": "o'brien", "isActive": False})


@pytest.mark.parametrize(
    "expression",
    ["externalId gt 'a'", "nosuch eq 'a'", "externalId eq 'a' or", "contains(externalId,'a')", "externalId eq 'a')"],
)
def test_unsupported_filters_are_a_bad_request(expression: str) -> None:
    with pytest.raises(GraphValidationError):
        parse_filter(expression)

"""The Sentinel simulator answers like the documented API: request checks, per-record validation, throttling."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests

from include.microsoft.auth import GRAPH_SCOPE
from include.microsoft.sentinel.stix import build_indicator
from tests.integration.sentinel.sentinel_stack import SOURCE, WORKSPACE, SentinelStack, make_row

pytestmark = pytest.mark.integration
API = {"api-version": "2024-02-01-preview"}


def _post(
    stack: SentinelStack,
    body: object,
    params: dict[str, str] | None = None,
    token: str | None = None,
    workspace: str = WORKSPACE,
) -> requests.Response:
    token = token or stack.provider().token()
    return requests.post(
        f"{stack.server.base_url}/workspaces/{workspace}/threat-intelligence-stix-objects:upload",
        params=API if params is None else params,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _good(index: int = 0, **changes: Any) -> dict[str, Any]:
    obj = build_indicator(make_row(index))
    obj.update(changes)
    return obj


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    trimmed = copy.deepcopy(obj)
    trimmed.pop(key)
    return trimmed


def test_an_all_valid_upload_gets_an_empty_200(stack: SentinelStack) -> None:
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0), _good(1)]})
    assert response.status_code == 200
    assert response.content == b""
    assert len(stack.objects()) == 2


def test_bad_records_are_reported_by_index_while_good_ones_are_stored(stack: SentinelStack) -> None:
    objects = [_good(0), _without(_good(1), "id"), _good(2), _good(3, pattern="[ipv4-addr:value = ")]
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": objects})
    assert response.status_code == 200
    errors = response.json()["errors"]
    assert [e["recordIndex"] for e in errors] == [1, 3]
    assert errors[0]["errorMessages"] == ["Error for Property=id: Required property is missing. Actual value: NULL."]
    assert "pattern" in errors[1]["errorMessages"][0]
    assert set(stack.objects()) == {objects[0]["id"], objects[2]["id"]}


@pytest.mark.parametrize(
    ("change", "property_name"),
    [
        ({"valid_until": "2026-03-02T09:15:00.000Z"}, "valid_until"),  # equal to valid_from
        ({"confidence": 101}, "confidence"),
        ({"confidence": "high"}, "confidence"),
        ({"id": "indicator--not-a-uuid"}, "id"),
        ({"id": "malware--6ba7b810-9dad-51d1-80b4-00c04fd430c8"}, "id"),
        ({"type": "malware"}, "type"),
        ({"modified": "2020-01-01T00:00:00.000Z"}, "modified"),  # before created
        ({"created": "yesterday"}, "created"),
        ({"revoked": "yes"}, "revoked"),
        ({"object_marking_refs": ["tlp:red"]}, "object_marking_refs"),
        ({"pattern": "[file:hashes.'SHA-256' = 'abc']"}, "pattern"),
    ],
)
def test_each_documented_field_rule_rejects_its_record(
    stack: SentinelStack, change: dict[str, Any], property_name: str
) -> None:
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0, **change)]})
    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert error["errorMessages"][0].startswith(f"Error for Property={property_name}:")
    assert stack.objects() == {}


@pytest.mark.parametrize("missing", ["pattern", "pattern_type", "valid_from", "created", "modified", "type"])
def test_required_fields_are_enforced(stack: SentinelStack, missing: str) -> None:
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_without(_good(0), missing)]})
    messages = response.json()["errors"][0]["errorMessages"]
    assert f"Error for Property={missing}: Required property is missing. Actual value: NULL." in messages


def test_complex_patterns_are_accepted_like_the_real_api(stack: SentinelStack) -> None:
    pattern = "[ipv4-addr:value = '198.18.0.1' OR ipv4-addr:value = '198.18.0.2'] AND [domain-name:value = 'x.example']"
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0, pattern=pattern)]})
    assert response.status_code == 200
    assert response.content == b""


def test_other_supported_object_types_are_accepted(stack: SentinelStack) -> None:
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": "identity--6ba7b810-9dad-51d1-80b4-00c04fd430c8",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "TC",
    }
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [identity]})
    assert response.status_code == 200
    assert response.content == b""


def test_more_than_one_hundred_objects_is_a_400(stack: SentinelStack) -> None:
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(i) for i in range(101)]})
    assert response.status_code == 400
    assert stack.objects() == {}


@pytest.mark.parametrize("sourcesystem", [None, "", "Microsoft Sentinel"])
def test_a_missing_or_restricted_sourcesystem_is_a_400(stack: SentinelStack, sourcesystem: str | None) -> None:
    response = _post(stack, {"sourcesystem": sourcesystem, "stixobjects": [_good(0)]})
    assert response.status_code == 400


def test_a_wrong_api_version_is_a_400(stack: SentinelStack) -> None:
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}, params={"api-version": "2022-07-01"})
    assert response.status_code == 400


def test_an_unknown_workspace_is_a_404(stack: SentinelStack) -> None:
    response = _post(
        stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}, workspace="00000000-0000-0000-0000-000000000000"
    )
    assert response.status_code == 404


def test_a_token_for_another_audience_is_a_401(stack: SentinelStack) -> None:
    graph_token = stack.provider(scope=GRAPH_SCOPE).token()
    response = _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}, token=graph_token)
    assert response.status_code == 401


def test_the_rate_limit_answers_the_documented_429(stack: SentinelStack) -> None:
    stack.sentinel.rate_limit_per_minute = 1
    body = {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}
    assert _post(stack, body).status_code == 200
    stack.clock.now += 15
    throttled = _post(stack, body)
    assert throttled.status_code == 429
    assert throttled.json() == {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 45 seconds."}
    assert throttled.headers["Retry-After"] == "45"
    stack.clock.now += 45
    assert _post(stack, body).status_code == 200


def test_retry_after_can_be_left_out(stack: SentinelStack) -> None:
    stack.sentinel.rate_limit_per_minute = 1
    stack.sentinel.send_retry_after = False
    body = {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}
    _post(stack, body)
    throttled = _post(stack, body)
    assert throttled.status_code == 429
    assert "Retry-After" not in throttled.headers


def test_every_accepted_upload_appends_rows_but_keeps_one_object(stack: SentinelStack) -> None:
    body = {"sourcesystem": SOURCE, "stixobjects": [_good(0)]}
    for _ in range(3):
        _post(stack, body)
    assert len(stack.sentinel.rows) == 3
    assert len(stack.objects()) == 1
    assert [(r.status, r.object_count) for r in stack.sentinel.upload_requests] == [(200, 1)] * 3


def test_the_same_id_under_two_sourcesystems_is_two_objects(stack: SentinelStack) -> None:
    _post(stack, {"sourcesystem": SOURCE, "stixobjects": [_good(0)]})
    _post(stack, {"sourcesystem": "Another-Feed", "stixobjects": [_good(0)]})
    assert len(stack.sentinel.objects) == 2


def test_the_query_endpoint_needs_the_registered_workspace_path(stack: SentinelStack) -> None:
    token = stack.provider().token()
    url = (
        f"{stack.server.base_url}/subscriptions/x/resourceGroups/y/providers/Microsoft.OperationalInsights/"
        "workspaces/z/providers/Microsoft.SecurityInsights/threatIntelligence/main/query"
    )
    response = requests.post(
        url,
        params={"api-version": "2025-07-01-preview"},
        json={},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ResourceNotFound"

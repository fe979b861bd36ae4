"""The Sentinel simulator's hostile corners, called directly with Requests (no sockets): long URLs in patterns,
acknowledged-but-lost uploads and objects deleted behind the client's back, with the query kept consistent."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from simulators.mslogin import ARM_AUDIENCE, IssuedToken, LoginService
from simulators.sentinel import SentinelService, url_values, validate_object
from simulators.server import Request, Response
from tests.fakes import FakeClock

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "cccccccc-0000-0000-0000-000000000001"
WORKSPACE = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
SUBSCRIPTION = "99999999-8888-7777-6666-555555555555"
SOURCE = "ThreatConnect-Example Org"
UPLOAD = f"/workspaces/{WORKSPACE}/threat-intelligence-stix-objects:upload?api-version=2024-02-01-preview"
QUERY = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/law"
    "/providers/Microsoft.SecurityInsights/threatIntelligence/main/query?api-version=2025-07-01-preview"
)
# KB 208427: 2,083 characters is the longest URL Microsoft supports.
LONGEST_URL = "https://bad.example/" + "a" * (2083 - len("https://bad.example/"))


@pytest.fixture
def sentinel() -> SentinelService:
    login = LoginService()
    login.register(TENANT, CLIENT, "secret")
    # A token valid for an hour, issued straight into the login service.
    login.tokens["token"] = IssuedToken(CLIENT, TENANT, ARM_AUDIENCE, time.time() + 3600)
    service = SentinelService(login, {WORKSPACE}, clock=FakeClock())
    service.register_management(WORKSPACE, SUBSCRIPTION, "rg", "law")
    return service


def _post(sentinel: SentinelService, target: str, body: Any) -> Response:
    headers = {"Authorization": "Bearer token", "Host": "sentinel.test"}
    response = sentinel(Request("POST", target, headers, json.dumps(body).encode()))
    assert response is not None
    return response


def _upload(sentinel: SentinelService, objects: list[dict[str, Any]]) -> Response:
    return _post(sentinel, UPLOAD, {"sourcesystem": SOURCE, "stixobjects": objects})


def _queried(sentinel: SentinelService) -> list[str]:
    response = _post(sentinel, QUERY, {"condition": {"stixObjectType": "indicator"}, "maxPageSize": 100})
    assert response.status == 200
    return sorted(item["properties"]["data"]["id"] for item in response.body["value"])


def _indicator(
    n: int, url: str = "https://bad.example/x", modified: str = "2026-03-02T09:15:00.000Z", **changes: Any
) -> dict[str, Any]:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
        "created": "2026-03-01T00:00:00.000Z",
        "modified": modified,
        "name": f"url {n}",
        "pattern": f"[url:value = '{url}']",
        "pattern_type": "stix",
        "valid_from": "2026-03-01T00:00:00.000Z",
    }
    obj.update(changes)
    return obj


def _ids(*numbers: int) -> list[str]:
    return [_indicator(n)["id"] for n in numbers]


# --------------------------------------------------------------------- url:value length


def test_a_url_value_of_2083_characters_is_stored_and_a_longer_one_is_refused_by_record_index(
    sentinel: SentinelService,
) -> None:
    response = _upload(sentinel, [_indicator(1, LONGEST_URL), _indicator(2, LONGEST_URL + "b")])
    assert response.status == 200
    [error] = response.body["errors"]
    assert error["recordIndex"] == 1
    [message] = error["errorMessages"]
    assert message.startswith("Error for Property=pattern: ")
    assert "2083" in message
    assert list(sentinel.objects) == [(WORKSPACE, SOURCE, _ids(1)[0])]
    assert len(sentinel.rows) == 1


def test_every_url_a_pattern_compares_with_is_checked_but_like_wildcards_are_not() -> None:
    long = LONGEST_URL + "b"
    assert validate_object(_indicator(1, pattern=f"[url:value IN ('https://ok.example/', '{long}')]"))
    assert validate_object(_indicator(1, pattern=f"[url:value = 'https://ok.example/'] OR [url:value != '{long}']"))
    assert validate_object(_indicator(1, pattern=f"[url:value LIKE '{long}%']")) == []
    assert validate_object(_indicator(1, pattern=f"[domain-name:value = '{'a' * 2100}.example']")) == []


def test_url_values_are_unescaped_before_they_are_measured() -> None:
    escaped = LONGEST_URL[:-1] + "\\'"  # 2,084 characters as written, 2,083 once STIX's \' is read as '
    assert url_values(f"[url:value = '{escaped}']") == [LONGEST_URL[:-1] + "'"]
    assert validate_object(_indicator(1, pattern=f"[url:value = '{escaped}']")) == []
    assert url_values("[url:value = 'a\\\\b' AND url:value NOT IN ('c', 'd')]") == ["a\\b", "c", "d"]
    assert url_values("[url:value = 'x']", stix_version="2.0") == ["x"]


# --------------------------------------------------------------------- drop_acknowledged


def test_a_dropped_object_is_acknowledged_but_neither_stored_nor_ingested_nor_queryable(
    sentinel: SentinelService,
) -> None:
    lost = _ids(2)[0]
    sentinel.drop_acknowledged(lambda obj: obj["id"] == lost)
    response = _upload(sentinel, [_indicator(1), _indicator(2), _indicator(3)])
    assert (response.status, response.body) == (200, None)
    assert sorted(key[2] for key in sentinel.objects) == _ids(1, 3)
    assert sorted(row.stix_object["id"] for row in sentinel.rows) == _ids(1, 3)
    assert _queried(sentinel) == _ids(1, 3)


def test_a_drop_count_is_spent_over_objects_across_uploads_then_objects_are_stored_again(
    sentinel: SentinelService,
) -> None:
    sentinel.drop_acknowledged(lambda obj: True, count=2)
    _upload(sentinel, [_indicator(1), _indicator(2), _indicator(3)])
    _upload(sentinel, [_indicator(4)])
    assert _queried(sentinel) == _ids(3, 4)


def test_only_objects_that_pass_validation_and_injected_failures_are_dropped(sentinel: SentinelService) -> None:
    sentinel.fail_records(lambda obj: obj["id"] == _ids(2)[0])
    sentinel.drop_acknowledged(lambda obj: True, count=1)
    response = _upload(sentinel, [_indicator(1, confidence=101), _indicator(2), _indicator(3), _indicator(4)])
    assert [error["recordIndex"] for error in response.body["errors"]] == [0, 1]
    assert _queried(sentinel) == _ids(4)


def test_a_predicate_that_cannot_read_an_object_does_not_drop_it(sentinel: SentinelService) -> None:
    sentinel.drop_acknowledged(lambda obj: obj["valid_until"] > "2026")
    _upload(sentinel, [_indicator(1)])
    assert _queried(sentinel) == _ids(1)


# --------------------------------------------------------------------- remove


def test_remove_deletes_matching_objects_says_how_many_and_the_query_agrees(sentinel: SentinelService) -> None:
    _upload(
        sentinel,
        [
            _indicator(1),
            _indicator(2, url="https://bad.example/retire-me"),
            _indicator(3, url="https://bad.example/retire-me"),
        ],
    )
    assert sentinel.remove(lambda obj: "retire-me" in obj["pattern"]) == 2
    assert sentinel.remove(lambda obj: "retire-me" in obj["pattern"]) == 0
    assert _queried(sentinel) == _ids(1)
    assert sentinel.stored(WORKSPACE, SOURCE, _ids(2)[0]) is None
    assert len(sentinel.rows) == 3  # the ingestion history stays, as a log's does


def test_a_removed_object_is_stored_again_when_uploaded_again_even_with_an_older_modified(
    sentinel: SentinelService,
) -> None:
    _upload(sentinel, [_indicator(1, modified="2026-03-05T00:00:00.000Z")])
    sentinel.remove(lambda obj: True)
    _upload(sentinel, [_indicator(1, modified="2026-03-02T00:00:00.000Z")])
    assert _queried(sentinel) == _ids(1)
    assert sentinel.stored(WORKSPACE, SOURCE, _ids(1)[0])["modified"] == "2026-03-02T00:00:00.000Z"

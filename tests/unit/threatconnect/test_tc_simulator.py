"""The ThreatConnect simulator's contract, called directly with signed Requests (no sockets)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

import pytest

from include.threatconnect.auth import signature
from simulators.server import Request
from simulators.threatconnect import ThreatConnectService

NOW = 1_710_000_000.0
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _record(i: int, kind: str = "Host", minutes: int = 0, **extra: Any) -> dict[str, Any]:
    values = {
        "Host": {"hostName": f"h{i}.example"},
        "Address": {"ip": f"10.0.0.{i}"},
        "URL": {"text": f"http://u{i}.example/"},
        "EmailAddress": {"address": f"e{i}@x.example"},
        "File": {"md5": f"{i:032x}"},
    }[kind]
    return {
        "id": i,
        "type": kind,
        "owner": "Example Organization",
        **values,
        "dateAdded": T0,
        "lastModified": T0 + dt.timedelta(minutes=minutes),
        "rating": 3.0,
        "confidence": 50,
        "threatAssessScore": 400,
        "active": True,
        "falsePositives": 0,
        "tags": ["APT"],
        "securityLabels": ["TLP:GREEN"],
        "description": None,
        "externalDateExpires": None,
    } | extra


@pytest.fixture
def service() -> ThreatConnectService:
    records = [_record(i, minutes=i) for i in range(1, 8)]
    records.append(_record(8, minutes=8, active=False))
    records.append(_record(9, "Address", minutes=9))
    records.append(_record(10, minutes=10, owner="Other Org"))
    return ThreatConnectService(
        records, "ID", "SECRET", owners=("Example Organization", "Other Org"), clock=lambda: NOW
    )


def _call(
    service: ThreatConnectService,
    target: str,
    *,
    secret: str = "SECRET",  # noqa: S107
    ts: float = NOW,
    host: str = "localhost:8443",
) -> tuple[int, Any, dict[str, str]]:
    stamp = int(ts)
    headers = {
        "Host": host,
        "Timestamp": str(stamp),
        "Authorization": f"TC ID:{signature(secret, target, 'GET', stamp)}",
    }
    response = service(Request("GET", target, headers, b""))
    assert response is not None
    return response.status, response.body, response.headers


def _tql(text: str) -> str:
    return quote(text, safe="")


HOSTS = _tql('typeName EQ "Host"')


def test_paths_outside_the_base_path_are_left_to_other_handlers(service: ThreatConnectService) -> None:
    assert service(Request("GET", "/graph/v1.0/x", {}, b"")) is None


def test_a_bad_signature_is_a_401_failure_envelope(service: ThreatConnectService) -> None:
    status, body, _ = _call(service, "/api/v2/indicators/hosts", secret="WRONG")
    assert status == 401
    assert body == {"status": "Failure", "message": "Signature data did not match expected result"}


def test_a_timestamp_more_than_five_minutes_off_is_refused(service: ThreatConnectService) -> None:
    assert _call(service, "/api/v2/indicators/hosts", ts=NOW - 299)[0] == 200
    status, body, _ = _call(service, "/api/v2/indicators/hosts", ts=NOW + 301)
    assert (status, body["message"]) == (401, "Timestamp out of acceptable time range")


def test_the_signature_covers_the_raw_target_not_the_decoded_one(service: ThreatConnectService) -> None:
    target = "/api/v2/indicators/hosts?owner=Example%20Organization"
    stamp = int(NOW)
    signed_decoded = signature("SECRET", "/api/v2/indicators/hosts?owner=Example Organization", "GET", stamp)
    headers = {"Timestamp": str(stamp), "Authorization": f"TC ID:{signed_decoded}"}
    response = service(Request("GET", target, headers, b""))
    assert response is not None
    assert response.status == 401


def test_v2_typed_branch_is_active_only_by_default_and_has_no_type_or_summary(service: ThreatConnectService) -> None:
    status, body, _ = _call(service, "/api/v2/indicators/hosts")
    assert status == 200
    items = body["data"]["host"]
    assert [item["id"] for item in items] == [1, 2, 3, 4, 5, 6, 7]
    assert "type" not in items[0]
    assert "summary" not in items[0]
    assert items[0]["hostName"] == "h1.example"
    assert "active" not in items[0]
    assert "tag" not in items[0]


def test_v2_filters_with_or_params_return_inactive_too_with_includes(service: ThreatConnectService) -> None:
    target = (
        "/api/v2/indicators/hosts?filters=active%3Dtrue,active%3Dfalse&orParams=true"
        "&includeAdditional=true&includeTags=true&includes=labels"
    )
    items = _call(service, target)[1]["data"]["host"]
    assert [item["id"] for item in items] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert items[-1]["active"] is False
    assert items[0]["tag"][0]["name"] == "APT"
    assert items[0]["securityLabel"][0]["name"] == "TLP:GREEN"
    assert items[0]["falsePositiveCount"] == 0


def test_v2_result_count_appears_only_on_the_first_page(service: ThreatConnectService) -> None:
    first = _call(service, "/api/v2/indicators/hosts?resultStart=0&resultLimit=3")[1]["data"]
    later = _call(service, "/api/v2/indicators/hosts?resultStart=3&resultLimit=3")[1]["data"]
    assert first["resultCount"] == 7
    assert "resultCount" not in later
    assert [item["id"] for item in later["host"]] == [4, 5, 6]


def test_v2_modified_since_is_inclusive(service: ThreatConnectService) -> None:
    target = "/api/v2/indicators/hosts?modifiedSince=2024-01-01T00:05:00Z"
    assert [item["id"] for item in _call(service, target)[1]["data"]["host"]] == [5, 6, 7]


def test_v2_all_types_listing_carries_type_and_summary(service: ThreatConnectService) -> None:
    items = _call(service, "/api/v2/indicators")[1]["data"]["indicator"]
    assert {item["type"] for item in items} == {"Host", "Address"}
    assert items[-1]["summary"] == "10.0.0.9"


def test_v2_result_limit_above_ten_thousand_is_a_400(service: ThreatConnectService) -> None:
    status, body, _ = _call(service, "/api/v2/indicators/hosts?resultLimit=10001")
    assert status == 400
    assert body["status"] == "Failure"
    assert "10000" in body["message"]


def test_an_unknown_owner_is_a_403(service: ThreatConnectService) -> None:
    status, body, _ = _call(service, "/api/v2/indicators/hosts?owner=Nobody")
    assert (status, body["message"]) == (403, "The requested owner was not found")


def test_v3_tql_with_parentheses_or_and_dates(service: ThreatConnectService) -> None:
    tql = (
        'typeName IN ("Host", "Address") AND lastModified GEQ "2024-01-01T00:03:00Z" AND '
        'lastModified LT "2024-01-01 00:09:00" AND (indicatorActive EQ true OR indicatorActive EQ false)'
    )
    body = _call(service, f"/api/v3/indicators?tql={_tql(tql)}&sorting=lastModified%20ASC")[1]
    assert [item["id"] for item in body["data"]] == [3, 4, 5, 6, 7, 8]
    assert body["status"] == "Success"


def test_v3_is_active_only_unless_the_tql_names_indicator_active(service: ThreatConnectService) -> None:
    body = _call(service, f"/api/v3/indicators?tql={HOSTS}")[1]
    assert 8 not in [item["id"] for item in body["data"]]
    inactive = _call(service, "/api/v3/indicators?tql=" + _tql("indicatorActive EQ false"))[1]
    assert [item["id"] for item in inactive["data"]] == [8]


def test_v3_owner_name_in_tql_and_the_owner_parameter_both_filter(service: ThreatConnectService) -> None:
    by_tql = _call(service, "/api/v3/indicators?tql=" + _tql('ownerName EQ "Other Org"'))[1]
    assert [item["id"] for item in by_tql["data"]] == [10]
    by_param = _call(service, "/api/v3/indicators?owner=Other%20Org")[1]
    assert [item["id"] for item in by_param["data"]] == [10]


def test_v3_next_and_prev_are_absolute_and_keep_every_parameter(service: ThreatConnectService) -> None:
    target = (
        "/api/v3/indicators?tql=typeName%20EQ%20%22Host%22&fields=tags&count=true&resultLimit=3"
        "&owner=Example+Organization"
    )
    first = _call(service, target)[1]
    assert first["count"] == 7
    assert first["next"] == f"https://localhost:8443{target}&resultStart=3"
    assert "prev" not in first
    second = _call(service, first["next"].removeprefix("https://localhost:8443"))[1]
    assert "count" not in second
    assert second["prev"] == f"https://localhost:8443{target}&resultStart=0"
    assert [item["id"] for item in second["data"]] == [4, 5, 6]
    assert second["data"][0]["tags"]["data"][0]["name"] == "APT"
    last = _call(service, second["next"].removeprefix("https://localhost:8443"))[1]
    assert "next" not in last


def test_v3_fields_add_their_blocks(service: ThreatConnectService) -> None:
    target = "/api/v3/indicators?tql=id%20EQ%201&fields=securityLabels&fields=threatAssess&fields=falsePositives"
    item = _call(service, target)[1]["data"][0]
    assert item["securityLabels"]["data"][0]["name"] == "TLP:GREEN"
    assert item["threatAssessScore"] == 400
    assert item["falsePositives"] == 0
    assert "tags" not in item


def test_v3_spans_every_readable_owner_without_an_owner_parameter(service: ThreatConnectService) -> None:
    body = _call(service, f"/api/v3/indicators?tql={HOSTS}&sorting=lastModified%20DESC")[1]
    assert [item["id"] for item in body["data"]] == [10, 7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "tql",
    ["typeName EQ", "bogusField EQ 1", 'lastModified GT "not a date"', '(typeName EQ "Host"', "id EQ 1 AND"],
)
def test_bad_tql_is_a_v3_error(service: ThreatConnectService, tql: str) -> None:
    status, body, _ = _call(service, f"/api/v3/indicators?tql={_tql(tql)}")
    assert status == 400
    assert body["status"] == "Error"
    assert body["errCode"]
    assert body["message"]


def test_fail_next_answers_the_chaos_status_then_recovers(service: ThreatConnectService) -> None:
    service.fail_next(2, status=429, retry_after=3)
    first = _call(service, "/api/v2/indicators/hosts")
    assert (first[0], first[2]) == (429, {"Retry-After": "3"})
    assert _call(service, "/api/v2/indicators/hosts")[0] == 429
    assert _call(service, "/api/v2/indicators/hosts")[0] == 200
    assert len(service.requests) == 3
    assert service.requests[0] == ("GET", "/api/v2/indicators/hosts")


def test_put_replaces_by_id_and_moves_the_indicator_in_time(service: ThreatConnectService) -> None:
    service.put(_record(1, minutes=100, hostName="moved.example"))
    items = _call(service, "/api/v2/indicators/hosts")[1]["data"]["host"]
    assert [item["id"] for item in items] == [2, 3, 4, 5, 6, 7, 1]
    assert items[-1]["hostName"] == "moved.example"


def test_put_accepts_iso_strings_for_dates(service: ThreatConnectService) -> None:
    service.put(_record(50, lastModified="2024-02-01T00:00:00Z", dateAdded="2024-01-15T00:00:00"))
    assert service.get(50)["lastModified"] == dt.datetime(2024, 2, 1, tzinfo=dt.UTC)


def test_deleted_indicators_leave_the_listing_and_appear_under_deleted(service: ThreatConnectService) -> None:
    service.delete(2, T0 + dt.timedelta(days=1))
    service.delete(3, T0 + dt.timedelta(days=3))
    assert 2 not in [item["id"] for item in _call(service, "/api/v2/indicators/hosts")[1]["data"]["host"]]
    v2 = _call(service, "/api/v2/indicators/hosts/deleted?deletedSince=2024-01-03T00:00:00Z")[1]["data"]
    # deletedSince filters on the deletion time; dateAdded is when the indicator was first added (T0).
    assert v2["indicator"] == [
        {
            "ownerName": "Example Organization",
            "dateAdded": "2024-01-01T00:00:00Z",
            "type": "Host",
            "summary": "h3.example",
        }
    ]
    v3 = _call(service, "/api/v3/indicators/deleted?type=Host&deletedSince=2024-01-01T00:00:00Z")[1]
    assert v3["count"] == 2
    assert [entry["summary"] for entry in v3["data"]] == ["h2.example", "h3.example"]
    assert _call(service, "/api/v2/indicators/addresses/deleted")[1]["data"]["indicator"] == []

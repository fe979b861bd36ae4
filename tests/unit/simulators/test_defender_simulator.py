"""The Defender for Endpoint simulator called directly with Requests (no sockets): validation, upsert by type and value,
app-scoped visibility, expiry, the tenant cap, rate limits, paging and the fault knobs."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from simulators.defender import DEFENDER_AUDIENCE, DOCUMENTED_LIMITS, PREFIX, DefenderService
from simulators.mslogin import GRAPH_AUDIENCE, IssuedToken, LoginService
from simulators.server import Request, Response
from tests.fakes import FakeClock

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-0000-0000-0000-000000000001"
OTHER_CLIENT = "bbbbbbbb-0000-0000-0000-000000000002"
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
LATER = "2026-06-01T00:00:00Z"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(now=NOW.timestamp())


@pytest.fixture
def defender(clock: FakeClock) -> DefenderService:
    login = LoginService()
    for client_id in (CLIENT, OTHER_CLIENT):
        login.register(TENANT, client_id, "secret")
        # Tokens valid for an hour: issued straight into the login service, no token endpoint round trip.
        login.tokens[client_id] = IssuedToken(client_id, TENANT, DEFENDER_AUDIENCE, time.time() + 3600)
    return DefenderService(login, clock=clock)


def _call(
    defender: DefenderService,
    method: str,
    path: str = "",
    body: Any = None,
    client_id: str = CLIENT,
    query: dict[str, str] | None = None,
) -> Response:
    headers = {"Authorization": f"Bearer {client_id}", "Host": "defender.test"}
    target = PREFIX + path + (f"?{urlencode(query)}" if query else "")
    raw = b"" if body is None else json.dumps(body).encode()
    response = defender(Request(method, target, headers, raw))
    assert response is not None
    return response


def _indicator(value: str = "198.51.100.7", kind: str = "IpAddress", **overrides: Any) -> dict[str, Any]:
    item = {
        "indicatorValue": value,
        "indicatorType": kind,
        "action": "Alert",
        "title": f"t {value}",
        "description": f"d {value}",
        "expirationTime": LATER,
        "severity": "High",
    }
    item.update(overrides)
    return item


def _import(defender: DefenderService, items: list[dict[str, Any]], client_id: str = CLIENT) -> Response:
    return _call(defender, "POST", "/import", {"Indicators": items}, client_id)


def _results(response: Response) -> list[dict[str, Any]]:
    assert response.status == 200, response.body
    assert isinstance(response.body, dict)
    return response.body["value"]


def _listed(defender: DefenderService, client_id: str = CLIENT, **query: str) -> list[dict[str, Any]]:
    response = _call(defender, "GET", client_id=client_id, query=query or None)
    assert response.status == 200, response.body
    assert isinstance(response.body, dict)
    return response.body["value"]


# ----------------------------------------------------------------- import and upsert
def test_an_import_answers_one_result_per_indicator_in_order(defender: DefenderService) -> None:
    results = _results(_import(defender, [_indicator("198.51.100.7"), _indicator("bad.example", "DomainName")]))
    assert [r["indicator"] for r in results] == ["198.51.100.7", "bad.example"]
    assert [r["isFailed"] for r in results] == [False, False]
    assert all(set(r) == {"id", "indicator", "isFailed", "failureReason"} for r in results)
    assert {i["createdBy"] for i in defender.created_by(CLIENT)} == {CLIENT}


def test_importing_the_same_type_and_value_again_updates_the_indicator(defender: DefenderService) -> None:
    first = _results(_import(defender, [_indicator(severity="Low")]))
    second = _results(_import(defender, [_indicator(severity="High", title="new title")]))
    assert first[0]["id"] == second[0]["id"]
    stored = defender.created_by(CLIENT)
    assert len(stored) == 1
    assert (stored[0]["severity"], stored[0]["title"]) == ("High", "new title")


def test_the_same_value_under_another_type_is_another_indicator(defender: DefenderService) -> None:
    _import(defender, [_indicator("bad.example", "DomainName"), _indicator("bad.example", "Url")])
    assert len(defender.created_by(CLIENT)) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "alert"),
        ("indicatorType", "ipaddress"),
        ("severity", "high"),
        ("action", "Allow"),
    ],
)
def test_an_enum_in_the_wrong_case_refuses_the_whole_import(defender: DefenderService, field: str, value: str) -> None:
    response = _import(defender, [_indicator("198.51.100.8"), _indicator(**{field: value})])
    assert response.status == 400
    assert response.body["error"]["code"] == "InvalidInput"
    assert set(response.body["error"]) == {"code", "message", "target"}
    assert defender.created_by(CLIENT) == []


def test_a_documented_name_in_the_wrong_case_is_refused(defender: DefenderService) -> None:
    item = _indicator()
    item["Title"] = item.pop("title")
    assert _import(defender, [item]).status == 400


@pytest.mark.parametrize("field", ["indicatorValue", "indicatorType", "action", "title", "description"])
def test_a_missing_required_field_refuses_the_import(defender: DefenderService, field: str) -> None:
    item = _indicator()
    del item[field]
    response = _import(defender, [item])
    assert response.status == 400
    assert response.body["error"]["code"] == "MissingRequiredParameter"


def test_schema_errors_can_be_answered_per_item_instead(defender: DefenderService) -> None:
    defender.schema_errors_per_item = True
    results = _results(_import(defender, [_indicator("198.51.100.8"), _indicator(action="alert")]))
    assert [r["isFailed"] for r in results] == [False, True]


def test_more_than_500_indicators_in_one_import_are_refused(defender: DefenderService) -> None:
    items = [_indicator(f"198.51.{i // 250}.{i % 250 + 1}") for i in range(501)]
    response = _import(defender, items)
    assert response.status == 400
    assert response.body["error"]["code"] == "MaximumBatchSizeExceeded"
    assert "Received: 501, allowed: 500" in response.body["error"]["message"]


@pytest.mark.parametrize(
    ("value", "kind", "reason"),
    [
        ("10.0.0.1", "IpAddress", "internal"),
        ("192.168.10.1", "IpAddress", "internal"),
        ("127.0.0.1", "IpAddress", "internal"),
        ("169.254.1.1", "IpAddress", "internal"),
        ("fe80:0:0:0:0:0:0:1", "IpAddress", "internal"),
        ("198.51.100.0/24", "IpAddress", "CIDR"),
        ("2a02:c7f::1", "IpAddress", "8 segments"),
        ("not-an-ip", "IpAddress", "InvalidIpAddress"),
        ("abc", "FileSha256", "InvalidHashValue"),
        ("d41d8cd98f00b204e9800998ecf8427e", "FileSha1", "InvalidHashValue"),
        ("bad domain.example", "DomainName", "InvalidDomainName"),
        ("https://bad.example/" + "a" * 2100, "Url", "InvalidUrl"),
    ],
)
def test_a_value_defender_cannot_hold_fails_only_its_item(
    defender: DefenderService, value: str, kind: str, reason: str
) -> None:
    results = _results(_import(defender, [_indicator("198.51.100.9"), _indicator(value, kind)]))
    assert results[0]["isFailed"] is False
    assert results[1]["isFailed"] is True
    assert reason in results[1]["failureReason"]
    assert [i["indicatorValue"] for i in defender.created_by(CLIENT)] == ["198.51.100.9"]


def test_ipv6_with_all_eight_segments_is_accepted(defender: DefenderService) -> None:
    assert _results(_import(defender, [_indicator("2a02:c7f:0:0:0:0:0:1")]))[0]["isFailed"] is False


@pytest.mark.parametrize(("field", "length"), [("title", 101), ("description", 101)])
def test_a_title_or_description_over_the_limit_fails_its_item(
    defender: DefenderService, field: str, length: int
) -> None:
    results = _results(_import(defender, [_indicator(**{field: "x" * length})]))
    assert results[0]["isFailed"] is True
    assert field in results[0]["failureReason"]


def test_audit_without_generate_alert_fails_its_item(defender: DefenderService) -> None:
    results = _results(
        _import(defender, [_indicator(action="Audit"), _indicator("198.51.100.10", action="Audit", generateAlert=True)])
    )
    assert [r["isFailed"] for r in results] == [True, False]


def test_unknown_properties_are_ignored(defender: DefenderService) -> None:
    results = _results(_import(defender, [_indicator(externalId="abc", somethingElse=1)]))
    assert results[0]["isFailed"] is False


# ----------------------------------------------------------------- ownership and visibility
def test_an_app_with_ti_readwrite_sees_only_its_own_indicators(defender: DefenderService) -> None:
    _import(defender, [_indicator("198.51.100.7")])
    _import(defender, [_indicator("198.51.100.8")], client_id=OTHER_CLIENT)
    assert [i["indicatorValue"] for i in _listed(defender)] == ["198.51.100.7"]
    defender.grant(CLIENT, "Ti.ReadWrite.All")
    assert {i["indicatorValue"] for i in _listed(defender)} == {"198.51.100.7", "198.51.100.8"}


def test_another_apps_indicator_cannot_be_overwritten_without_readwrite_all(defender: DefenderService) -> None:
    _import(defender, [_indicator(title="theirs")], client_id=OTHER_CLIENT)
    results = _results(_import(defender, [_indicator(title="ours")]))
    assert results[0]["isFailed"] is True
    assert defender.created_by(OTHER_CLIENT)[0]["title"] == "theirs"

    defender.grant(CLIENT, "Ti.ReadWrite.All")
    assert _results(_import(defender, [_indicator(title="ours")]))[0]["isFailed"] is False
    stored = defender.created_by(OTHER_CLIENT)
    assert (stored[0]["title"], stored[0]["lastUpdatedBy"]) == ("ours", CLIENT)
    assert defender.created_by(CLIENT) == []


def test_an_app_without_the_permission_is_forbidden(defender: DefenderService) -> None:
    defender.grant(CLIENT, None)
    response = _import(defender, [_indicator()])
    assert response.status == 403
    assert response.body["error"]["code"] == "Forbidden"


def test_a_missing_token_or_a_token_for_another_api_is_unauthorized(defender: DefenderService) -> None:
    assert _call(defender, "GET", client_id="nobody").status == 401
    defender.login.tokens["graph"] = IssuedToken(CLIENT, TENANT, GRAPH_AUDIENCE, time.time() + 3600)
    response = _call(defender, "GET", client_id="graph")
    assert response.status == 401
    assert response.body["error"]["code"] == "Unauthorized"


def test_the_login_simulator_issues_defender_tokens_for_the_defender_scope(defender: DefenderService) -> None:
    form = urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "client_secret": "secret",
            "scope": "https://api.securitycenter.microsoft.com/.default",
        }
    )
    answer = defender.login(Request("POST", f"/{TENANT}/oauth2/v2.0/token", {}, form.encode()))
    assert answer is not None
    assert answer.status == 200
    token = answer.body["access_token"]
    assert defender.login.tokens[token].audience == DEFENDER_AUDIENCE


# ----------------------------------------------------------------- expiry and capacity
def test_an_indicator_disappears_when_its_expiration_time_passes(defender: DefenderService, clock: FakeClock) -> None:
    _import(defender, [_indicator(expirationTime="2026-03-01T01:00:00Z")])
    assert len(_listed(defender)) == 1
    clock.sleep(3600)
    assert _listed(defender) == []


def test_an_expiration_time_in_the_past_fails_its_item(defender: DefenderService) -> None:
    results = _results(_import(defender, [_indicator(expirationTime="2026-02-01T00:00:00Z")]))
    assert results[0]["isFailed"] is True
    assert "future" in results[0]["failureReason"]


def test_new_indicators_over_the_tenant_cap_fail_per_item_but_updates_pass(defender: DefenderService) -> None:
    defender.capacity = 2
    results = _results(_import(defender, [_indicator(f"198.51.100.{i}") for i in (1, 2, 3)]))
    assert [r["isFailed"] for r in results] == [False, False, True]
    assert "limit" in results[2]["failureReason"]
    assert _results(_import(defender, [_indicator("198.51.100.1", title="changed")]))[0]["isFailed"] is False
    _import(defender, [_indicator("198.51.100.4")], client_id=OTHER_CLIENT)  # the cap is per tenant, not per app
    assert defender.created_by(OTHER_CLIENT) == []


# ----------------------------------------------------------------- listing
def test_the_listing_filters_on_documented_fields_and_escapes_quotes(defender: DefenderService) -> None:
    _import(defender, [_indicator("198.51.100.7"), _indicator("bad.example", "DomainName", title="O'Brien's")])
    assert [i["indicatorType"] for i in _listed(defender, **{"$filter": "indicatorType eq 'DomainName'"})] == [
        "DomainName"
    ]
    assert len(_listed(defender, **{"$filter": "title eq 'O''Brien''s'"})) == 1
    assert len(_listed(defender, **{"$filter": f"createdBy eq '{CLIENT}' and severity eq 'High'"})) == 2
    response = _call(defender, "GET", query={"$filter": "color eq 'red'"})
    assert response.status == 400


def test_top_bounds_the_answer_and_a_smaller_page_links_on(defender: DefenderService) -> None:
    _import(defender, [_indicator(f"198.51.100.{i}") for i in range(1, 8)])
    assert len(_listed(defender, **{"$top": "3"})) == 3
    defender.page_size = 3
    first = _call(defender, "GET").body
    assert len(first["value"]) == 3
    link = urlsplit(first["@odata.nextLink"])
    assert link.path == PREFIX
    second = _call(defender, "GET", query=dict(parse_qsl(link.query))).body
    assert [i["id"] for i in second["value"]] == [i["id"] for i in _listed(defender, **{"$skip": "3"})][:3]
    assert _call(defender, "GET", query={"$top": "10001"}).status == 400


# ----------------------------------------------------------------- deletion
def test_batch_delete_removes_every_listed_id(defender: DefenderService) -> None:
    ids = [r["id"] for r in _results(_import(defender, [_indicator(f"198.51.100.{i}") for i in (1, 2)]))]
    response = _call(defender, "POST", "/BatchDelete", {"IndicatorIds": ids})
    assert response.status == 204
    assert defender.created_by(CLIENT) == []


def test_batch_delete_with_an_unknown_id_answers_404_and_deletes_nothing_by_default(defender: DefenderService) -> None:
    ids = [r["id"] for r in _results(_import(defender, [_indicator()]))]
    assert _call(defender, "POST", "/BatchDelete", {"IndicatorIds": [*ids, "999"]}).status == 404
    assert len(defender.created_by(CLIENT)) == 1
    defender.batch_delete_partial = True
    assert _call(defender, "POST", "/BatchDelete", {"IndicatorIds": [*ids, "999"]}).status == 404
    assert defender.created_by(CLIENT) == []


@pytest.mark.parametrize("ids", [[], ["abc"], [str(i) for i in range(1, 502)]])
def test_batch_delete_refuses_an_empty_invalid_or_oversized_list(defender: DefenderService, ids: list[str]) -> None:
    assert _call(defender, "POST", "/BatchDelete", {"IndicatorIds": ids}).status == 400


def test_an_app_cannot_delete_another_apps_indicator(defender: DefenderService) -> None:
    theirs = _results(_import(defender, [_indicator()], client_id=OTHER_CLIENT))[0]["id"]
    assert _call(defender, "DELETE", f"/{theirs}").status == 404
    assert _call(defender, "POST", "/BatchDelete", {"IndicatorIds": [theirs]}).status == 404
    assert len(defender.created_by(OTHER_CLIENT)) == 1
    assert _call(defender, "DELETE", f"/{theirs}", client_id=OTHER_CLIENT).status == 204


# ----------------------------------------------------------------- rate limits and faults
def test_rate_limits_are_off_by_default(defender: DefenderService) -> None:
    assert all(_import(defender, [_indicator()]).status == 200 for _ in range(40))


def test_the_documented_import_limit_answers_429_with_retry_after_until_the_window_moves(
    defender: DefenderService, clock: FakeClock
) -> None:
    defender.rate_limits = DOCUMENTED_LIMITS
    defender.minute_seconds = 6.0
    assert all(_import(defender, [_indicator()]).status == 200 for _ in range(30))
    refused = _import(defender, [_indicator()])
    assert refused.status == 429
    assert refused.body["error"]["code"] == "TooManyRequests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 6
    assert _call(defender, "GET").status == 200  # the listing has its own budget
    assert _import(defender, [_indicator()], client_id=OTHER_CLIENT).status == 200  # and so has every app
    clock.sleep(int(refused.headers["Retry-After"]))
    assert _import(defender, [_indicator()]).status == 200


def test_an_injected_fault_answers_the_next_requests_then_clears(defender: DefenderService) -> None:
    defender.inject(429, count=2, retry_after=7, path_contains="/import")
    assert [
        (r.status, r.headers.get("Retry-After")) for r in (_import(defender, [_indicator()]) for _ in range(2))
    ] == [(429, "7"), (429, "7")]
    assert _call(defender, "GET").status == 200
    assert _import(defender, [_indicator()]).status == 200


def test_a_processed_fault_stores_the_import_before_failing(defender: DefenderService) -> None:
    defender.inject(504, processed=True)
    assert _import(defender, [_indicator()]).status == 504
    assert len(defender.created_by(CLIENT)) == 1


def test_fail_items_fails_matching_items_the_given_number_of_times(defender: DefenderService) -> None:
    defender.fail_items(lambda i: i["indicatorValue"].endswith(".7"), count=1, reason="Injected: invalid")
    first = _results(_import(defender, [_indicator("198.51.100.7"), _indicator("198.51.100.8")]))
    assert [(r["isFailed"], r["failureReason"]) for r in first] == [(True, "Injected: invalid"), (False, None)]
    assert _results(_import(defender, [_indicator("198.51.100.7")]))[0]["isFailed"] is False


def test_a_dropped_item_is_acknowledged_but_not_stored(defender: DefenderService) -> None:
    defender.drop_acknowledged(lambda i: i["indicatorValue"] == "198.51.100.7")
    results = _results(_import(defender, [_indicator("198.51.100.7"), _indicator("198.51.100.8")]))
    assert [r["isFailed"] for r in results] == [False, False]
    assert all(r["id"] for r in results)
    assert [i["indicatorValue"] for i in defender.created_by(CLIENT)] == ["198.51.100.8"]


def test_remove_deletes_matching_indicators_of_any_app(defender: DefenderService) -> None:
    _import(defender, [_indicator("198.51.100.7")])
    _import(defender, [_indicator("198.51.100.8")], client_id=OTHER_CLIENT)
    assert defender.remove(lambda i: i["indicatorValue"].startswith("198.51.100.")) == 2
    assert defender.created_by(CLIENT) == defender.created_by(OTHER_CLIENT) == []


def test_the_request_log_counts_the_items_of_each_write(defender: DefenderService) -> None:
    ids = [r["id"] for r in _results(_import(defender, [_indicator(f"198.51.100.{i}") for i in (1, 2, 3)]))]
    _call(defender, "POST", "/BatchDelete", {"IndicatorIds": ids[:2]})
    _call(defender, "GET")
    assert [(r.method, r.items, r.status) for r in defender.requests] == [
        ("POST", 3, 200),
        ("POST", 2, 204),
        ("GET", 0, 200),
    ]
    assert [r.items for r in defender.writes("/import")] == [3]

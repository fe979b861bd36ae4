"""SentinelClient without a network: request shapes, retry rules, the shared limiter, query paging."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from include.microsoft.sentinel import (
    ManagementTarget,
    SentinelClient,
    SentinelError,
)
from include.transport.limiter import SharedRateLimiter
from include.transport.retry_after import retry_after

WORKSPACE = "11111111-2222-3333-4444-555555555555"
THROTTLED = {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 7 seconds."}


def _response(status: int = 200, body: object = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"" if body is None else json.dumps(body).encode()
    response.headers.update(headers or {})
    response.url = "https://example.invalid/"
    return response


@dataclass
class FakeSession:
    """Answers scripted responses (or raises scripted exceptions) in order and records every call."""

    script: list[requests.Response | Exception]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        # The auth class writes its header when the request is prepared, as requests does.
        prepared = requests.Request(method, url, headers=kwargs.get("headers")).prepare()
        if kwargs.get("auth") is not None:
            kwargs["auth"](prepared)
        self.calls.append({"method": method, "url": url, **kwargs, "headers": dict(prepared.headers)})
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class FakeTokens:
    tokens: list[str] = field(default_factory=lambda: ["token-1", "token-2", "token-3"])
    invalidated: int = 0

    def token(self) -> str:
        return self.tokens[min(self.invalidated, len(self.tokens) - 1)]

    def invalidate(self) -> None:
        self.invalidated += 1


@dataclass
class Sleeps:
    seconds: list[float] = field(default_factory=list)

    def __call__(self, value: float) -> None:
        self.seconds.append(value)


def _client(script: list[requests.Response | Exception], **kwargs: Any) -> tuple[SentinelClient, FakeSession, Sleeps]:
    session = FakeSession(script)
    sleeps = Sleeps()
    kwargs.setdefault("token_provider", FakeTokens())
    client = SentinelClient(
        "https://api.ti.sentinel.azure.com/",
        WORKSPACE,
        session=session,  # type: ignore[arg-type]
        sleep=sleeps,
        **kwargs,
    )
    return client, session, sleeps


OBJECT = {"type": "indicator", "id": "indicator--6ba7b810-9dad-51d1-80b4-00c04fd430c8"}


def test_an_upload_posts_the_documented_url_and_body() -> None:
    client, session, _ = _client([_response(200)])
    assert client.upload("ThreatConnect-Org", [OBJECT]) == []
    [call] = session.calls
    assert call["method"] == "POST"
    assert call["url"] == (
        f"https://api.ti.sentinel.azure.com/workspaces/{WORKSPACE}/threat-intelligence-stix-objects:upload"
    )
    assert call["params"] == {"api-version": "2024-02-01-preview"}
    assert call["json"] == {"sourcesystem": "ThreatConnect-Org", "stixobjects": [OBJECT]}
    assert call["headers"]["Authorization"] == "Bearer token-1"


def test_per_record_errors_of_a_200_are_returned() -> None:
    errors = [{"recordIndex": 1, "errorMessages": ["Error for Property=id: Required property is missing."]}]
    client, _, _ = _client([_response(200, {"errors": errors})])
    assert client.upload("src", [OBJECT, OBJECT]) == errors


def test_more_than_one_hundred_objects_are_refused_before_sending() -> None:
    client, session, _ = _client([])
    with pytest.raises(ValueError, match="at most 100"):
        client.upload("src", [OBJECT] * 101)
    assert session.calls == []


def test_an_empty_upload_sends_nothing() -> None:
    client, _session, _ = _client([])
    assert client.upload("src", []) == []
    assert client.requests_sent == 0


def test_a_429_waits_as_long_as_retry_after_says() -> None:
    client, _session, sleeps = _client([_response(429, THROTTLED, {"Retry-After": "12"}), _response(200)])
    client.upload("src", [OBJECT])
    assert sleeps.seconds == [12.0]  # the larger of header (12) and body (7)
    assert client.requests_sent == 2
    assert client.throttled == 1


def test_a_429_without_retry_after_waits_as_long_as_the_body_says() -> None:
    client, _, sleeps = _client([_response(429, THROTTLED), _response(200)])
    client.upload("src", [OBJECT])
    assert sleeps.seconds == [7.0]


def test_a_429_pauses_the_shared_limiter_instead_of_sleeping_alone(tmp_path: Path) -> None:
    now = [1000.0]
    limiter_sleeps: list[float] = []

    def limiter_sleep(seconds: float) -> None:
        limiter_sleeps.append(seconds)
        now[0] += seconds

    limiter = SharedRateLimiter(tmp_path / "rl.json", 10, 60, clock=lambda: now[0], sleep=limiter_sleep)
    client, _, sleeps = _client([_response(429, THROTTLED), _response(200)], limiter=limiter)
    client.upload("src", [OBJECT])
    assert sleeps.seconds == []
    assert limiter_sleeps == [pytest.approx(7.0)]
    other = SharedRateLimiter(tmp_path / "rl.json", 10, 60, clock=lambda: now[0], sleep=limiter_sleep)
    assert other.in_window() == 2  # both attempts went through the shared budget


def test_server_errors_back_off_exponentially_then_give_up() -> None:
    client, _, sleeps = _client([_response(503)] * 4, max_retries=3, backoff=0.5)
    with pytest.raises(SentinelError) as caught:
        client.upload("src", [OBJECT])
    assert caught.value.status == 503
    assert sleeps.seconds == [0.5, 1.0, 2.0]
    assert client.requests_sent == 4


def test_a_server_error_that_clears_is_invisible_to_the_caller() -> None:
    client, _, _ = _client([_response(500), _response(502), _response(200)])
    assert client.upload("src", [OBJECT]) == []


def test_connection_errors_are_retried() -> None:
    client, _, sleeps = _client([requests.ConnectionError("reset"), requests.Timeout("slow"), _response(200)])
    assert client.upload("src", [OBJECT]) == []
    assert sleeps.seconds == [1.0, 2.0]


def test_a_401_refreshes_the_token_once() -> None:
    tokens = FakeTokens()
    client, session, _ = _client([_response(401), _response(200)], token_provider=tokens)
    client.upload("src", [OBJECT])
    assert tokens.invalidated == 1
    assert [c["headers"]["Authorization"] for c in session.calls] == ["Bearer token-1", "Bearer token-2"]


def test_a_second_401_is_an_error() -> None:
    client, _, _ = _client([_response(401), _response(401)])
    with pytest.raises(SentinelError) as caught:
        client.upload("src", [OBJECT])
    assert caught.value.status == 401


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(status: int) -> None:
    client, _, _ = _client([_response(status, {"message": "nope"})])
    with pytest.raises(SentinelError) as caught:
        client.upload("src", [OBJECT])
    assert caught.value.status == status
    assert "nope" in caught.value.body
    assert client.requests_sent == 1


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "3"}, None, 3.0),
        ({}, THROTTLED, 7.0),
        ({"Retry-After": "30"}, THROTTLED, 30.0),
        ({}, {"message": "busy"}, None),
        ({"Retry-After": "soon"}, None, None),
    ],
)
def test_retry_after_reads_the_header_and_the_body(
    headers: dict[str, str], body: object, expected: float | None
) -> None:
    assert retry_after(_response(429, body, headers)) == expected


MANAGEMENT = ManagementTarget("sub-1", "rg-1", "ws-name", host="https://management.azure.com")
QUERY_URL = (
    "https://management.azure.com/subscriptions/sub-1/resourceGroups/rg-1/providers/"
    "Microsoft.OperationalInsights/workspaces/ws-name/providers/Microsoft.SecurityInsights/"
    "threatIntelligence/main/query"
)


def _item(stix_object_id: str, modified: str = "2026-01-01T00:00:00.000Z") -> dict[str, Any]:
    return {
        "id": f"/x/{stix_object_id}",
        "name": stix_object_id,
        "properties": {"source": "src", "data": {"id": stix_object_id, "modified": modified}},
    }


def test_a_query_posts_id_and_source_clauses_to_the_management_plane() -> None:
    client, session, _ = _client([_response(200, {"value": [_item("indicator--a")]})], management=MANAGEMENT)
    assert client.query(["indicator--a", "indicator--b"], "src") == {
        "indicator--a": {"id": "indicator--a", "modified": "2026-01-01T00:00:00.000Z"}
    }
    [call] = session.calls
    assert call["method"] == "POST"
    assert call["url"] == QUERY_URL
    assert call["params"] == {"api-version": "2025-07-01-preview"}
    assert call["json"] == {
        "condition": {
            "clauses": [
                {"field": "id", "operator": "Equals", "values": ["indicator--a", "indicator--b"]},
                {"field": "source", "operator": "Equals", "values": ["src"]},
            ],
            "conditionConnective": "And",
            "stixObjectType": "indicator",
        },
        "maxPageSize": 100,
    }


def test_a_query_follows_next_links_with_get() -> None:
    next_link = f"{QUERY_URL}?api-version=2025-07-01-preview&$skipToken=abc"
    client, session, _ = _client(
        [
            _response(200, {"value": [_item("indicator--a")], "nextLink": next_link}),
            _response(200, {"value": [_item("indicator--b")]}),
        ],
        management=MANAGEMENT,
    )
    assert set(client.query(["indicator--a", "indicator--b"])) == {"indicator--a", "indicator--b"}
    assert [(c["method"], c["url"], c["params"]) for c in session.calls][1] == ("GET", next_link, None)


def test_a_repeated_next_link_stops_the_query() -> None:
    page = {"value": [], "nextLink": f"{QUERY_URL}?api-version=x&$skipToken=same"}
    client, _, _ = _client([_response(200, page)] * 3, management=MANAGEMENT)
    with pytest.raises(SentinelError, match="repeated"):
        client.query(["indicator--a"])


def test_a_query_keeps_the_newest_version_of_an_id() -> None:
    page = {"value": [_item("indicator--a", "2026-01-02T00:00:00.000Z"), _item("indicator--a", "2026-01-01T00:00:00Z")]}
    client, _, _ = _client([_response(200, page)], management=MANAGEMENT)
    assert client.query(["indicator--a"])["indicator--a"]["modified"] == "2026-01-02T00:00:00.000Z"


def test_a_query_splits_many_ids_into_requests_of_one_hundred() -> None:
    ids = [f"indicator--{i}" for i in range(250)]
    client, session, _ = _client([_response(200, {"value": []})] * 3, management=MANAGEMENT)
    client.query(ids)
    assert [len(c["json"]["condition"]["clauses"][0]["values"]) for c in session.calls] == [100, 100, 50]


def test_a_query_without_the_management_plane_is_refused() -> None:
    client, _, _ = _client([])
    with pytest.raises(RuntimeError, match="management plane"):
        client.query(["indicator--a"])


def test_queries_do_not_spend_the_upload_budget(tmp_path: Path) -> None:
    limiter = SharedRateLimiter(tmp_path / "rl.json", 10, 60)
    client, _, _ = _client([_response(200, {"value": []})], management=MANAGEMENT, limiter=limiter)
    client.query(["indicator--a"])
    assert limiter.in_window() == 0


def test_the_management_plane_can_use_its_own_token_provider() -> None:
    arm = FakeTokens(tokens=["arm-token"])
    target = ManagementTarget("sub-1", "rg-1", "ws-name", token_provider=arm)
    client, session, _ = _client([_response(200, {"value": []})], management=target)
    client.query(["indicator--a"])
    assert session.calls[0]["headers"]["Authorization"] == "Bearer arm-token"

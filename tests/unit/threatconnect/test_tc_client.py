"""ThreatConnectClient paging, retries and errors against a scripted fake session (no network)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from include.pipeline.errors import PermanentError
from include.threatconnect.client import (
    ThreatConnectAuthError,
    ThreatConnectClient,
    ThreatConnectError,
    ThreatConnectLinkError,
)

BASE = "https://tc.example/api"
SECRET = "super-secret-key"
FROM = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TO = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)


def _response(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b""
    response.headers.update(headers or {})
    return response


class FakeSession:
    """Answers each GET with the next scripted item (a Response, an exception, or a callable of the URL)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.urls: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.verify: Any = True

    def request(self, method: str, url: str, auth: Any = None, **_: Any) -> requests.Response:
        assert method == "GET"
        prepared = requests.Request("GET", url).prepare()
        if auth is not None:
            prepared = auth(prepared)
        self.urls.append(url)
        self.headers.append(dict(prepared.headers))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step(url) if callable(step) else step


def _client(session: FakeSession, **options: Any) -> tuple[ThreatConnectClient, list[float]]:
    sleeps: list[float] = []
    options.setdefault("page_size", 2)
    client = ThreatConnectClient(
        BASE,
        "ACCESS",
        SECRET,
        "Example Organization",
        session=session,  # type: ignore[arg-type]
        sleep=sleeps.append,
        clock=lambda: 1_704_067_200,
        **options,
    )
    return client, sleeps


def _host(i: int, modified: str = "2024-01-01T06:00:00Z", **extra: Any) -> dict[str, Any]:
    return {
        "id": i,
        "ownerName": "Example Organization",
        "dateAdded": "2023-12-01T00:00:00Z",
        "lastModified": modified,
        "hostName": f"h{i}.example",
        **extra,
    }


def _v2_page(items: list[dict[str, Any]], count: int | None = None) -> requests.Response:
    data: dict[str, Any] = {"host": items}
    if count is not None:
        data["resultCount"] = count
    return _response(200, {"status": "Success", "data": data})


def _ids(batches: list) -> list[int]:
    return [i for batch in batches for i in batch.column("tc_id").to_pylist()]


def _params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_v2_pages_by_result_start_until_result_count_is_reached_then_counts_once_more() -> None:
    session = FakeSession(
        [_v2_page([_host(1), _host(2)], count=4), _v2_page([_host(3), _host(4)]), _v2_page([_host(1)], count=4)]
    )
    client, _ = _client(session, api_version="v2")
    batches = list(client.iter_pages("Host", FROM, TO))
    assert _ids(batches) == [1, 2, 3, 4]
    assert [batch.column("page").to_pylist() for batch in batches] == [[0, 0], [1, 1]]
    # the full last page is not followed by an empty one; a one-row page asks resultCount again (unchanged)
    assert client.requests_sent == 3
    assert [(_params(url)["resultStart"], _params(url)["resultLimit"]) for url in session.urls] == [
        (["0"], ["2"]),
        (["2"], ["2"]),
        (["0"], ["1"]),
    ]


def test_v2_stops_on_a_short_page_when_result_count_is_missing() -> None:
    session = FakeSession([_v2_page([_host(1), _host(2)]), _v2_page([_host(3)])])
    client, _ = _client(session, api_version="v2")
    assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1, 2, 3]
    assert client.requests_sent == 2


def test_v2_asks_for_active_and_inactive_with_tags_labels_and_additional_fields() -> None:
    session = FakeSession([_v2_page([], count=0)])
    client, _ = _client(session, api_version="v2")
    assert list(client.iter_pages("Host", FROM, TO)) == []
    url = session.urls[0]
    assert urlsplit(url).path == "/api/v2/indicators/hosts"
    assert "filters=active%3Dtrue,active%3Dfalse&orParams=true" in url
    assert "owner=Example%20Organization" in url
    params = _params(url)
    assert params["modifiedSince"] == ["2024-01-01T00:00:00Z"]
    assert params["includeAdditional"] == ["true"]
    assert params["includeTags"] == ["true"]
    assert params["includes"] == ["labels"]
    assert params["resultLimit"] == ["2"]


def test_v2_drops_rows_modified_at_or_after_the_window_end() -> None:
    page = [_host(1, "2024-01-01T23:59:59Z"), _host(2, "2024-01-02T00:00:00Z")]
    session = FakeSession([_v2_page(page, count=2)])
    client, _ = _client(session, api_version="v2")
    assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1]


def test_v2_warns_when_fewer_rows_arrive_than_result_count_promised(caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession([_v2_page([_host(1), _host(2)], count=5), _v2_page([_host(3)]), _v2_page([], count=5)])
    client, _ = _client(session, api_version="v2")
    with caplog.at_level(logging.WARNING):
        assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1, 2, 3]
    assert "resultCount was 5 but 3" in caplog.text


def _v3_page(items: list[dict[str, Any]], next_url: str | None = None) -> requests.Response:
    body: dict[str, Any] = {"data": items, "status": "Success"}
    if next_url:
        body["next"] = next_url
    return _response(200, body)


def test_v3_follows_the_absolute_next_link_verbatim_and_signs_it() -> None:
    next_url = f"{BASE}/v3/indicators?tql=x&owner=Example%20Organization&resultLimit=2&resultStart=2"
    items = [_host(i) | {"type": "Host", "summary": f"h{i}"} for i in range(1, 4)]
    session = FakeSession([_v3_page(items[:2], next_url), _v3_page(items[2:])])
    client, _ = _client(session)
    assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1, 2, 3]
    assert session.urls[1] == next_url
    assert client.requests_sent == 2
    assert all(h["Authorization"].startswith("TC ACCESS:") for h in session.headers)


def test_v3_builds_a_tql_window_that_includes_inactive_indicators() -> None:
    session = FakeSession([_v3_page([])])
    client, _ = _client(session)
    list(client.iter_pages("URL", FROM, TO))
    params = _params(session.urls[0])
    assert urlsplit(session.urls[0]).path == "/api/v3/indicators"
    tql = params["tql"][0]
    assert 'typeName EQ "URL"' in tql
    assert 'lastModified GEQ "2024-01-01T00:00:00Z"' in tql
    assert 'lastModified LT "2024-01-02T00:00:00Z"' in tql
    assert "indicatorActive EQ true OR indicatorActive EQ false" in tql
    assert {"tags", "securityLabels", "threatAssess", "falsePositives"} <= set(params["fields"])
    assert params["sorting"] == ["lastModified ASC"]
    assert params["owner"] == ["Example Organization"]


def test_v3_refuses_to_loop_on_a_repeated_next_link() -> None:
    loop = f"{BASE}/v3/indicators?resultStart=2"
    session = FakeSession([_v3_page([_host(1)], loop), _v3_page([_host(2)], loop)])
    client, _ = _client(session)
    with pytest.raises(ThreatConnectError, match="repeated a next link"):
        list(client.iter_pages("Host", FROM, TO))


def test_v3_refuses_a_next_link_to_another_host_at_once_as_a_setting_to_fix() -> None:
    session = FakeSession([_v3_page([_host(1)], "https://evil.example/api/v3/indicators?resultStart=2")])
    client, _ = _client(session)
    with pytest.raises(ThreatConnectLinkError, match=r"origin https://tc\.example for https://evil\.example") as info:
        list(client.iter_pages("Host", FROM, TO))
    assert isinstance(info.value, PermanentError)
    assert client.requests_sent == 1


@pytest.mark.parametrize("spelling", ["https://TC.Example/api", "https://tc.example:443/api", "HTTPS://tc.example/api"])
def test_v3_follows_a_next_link_to_the_same_origin_spelt_differently(spelling: str) -> None:
    link = f"{spelling}/v3/indicators?resultStart=1"
    session = FakeSession([_v3_page([_host(1)], link), _v3_page([_host(2)])])
    client, _ = _client(session)
    assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1, 2]
    assert session.urls[1] == link


def test_v3_refuses_a_next_link_on_another_port() -> None:
    session = FakeSession([_v3_page([_host(1)], "https://tc.example:8443/api/v3/indicators?resultStart=1")])
    client, _ = _client(session)
    with pytest.raises(ThreatConnectLinkError, match=r"for https://tc\.example:8443"):
        list(client.iter_pages("Host", FROM, TO))


def test_the_page_size_is_capped_at_ten_thousand() -> None:
    client, _ = _client(FakeSession([]), page_size=50_000)
    assert client.page_size == 10_000


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_with_exponential_back_off(status: int) -> None:
    failure = _response(status, {"status": "Failure", "message": "busy"})
    session = FakeSession([failure, failure, _v3_page([_host(1)])])
    client, sleeps = _client(session, backoff=0.5)
    assert _ids(list(client.iter_pages("Host", FROM, TO))) == [1]
    assert sleeps == [0.5, 1.0]
    assert client.requests_sent == 3


def test_retry_after_is_honoured() -> None:
    session = FakeSession([_response(429, {"message": "slow down"}, {"Retry-After": "7"}), _v3_page([])])
    client, sleeps = _client(session)
    list(client.iter_pages("Host", FROM, TO))
    assert sleeps == [7.0]


def test_connection_errors_are_retried_then_reported_without_secrets() -> None:
    session = FakeSession([requests.ConnectionError("boom")] * 3)
    client, sleeps = _client(session, max_retries=2)
    with pytest.raises(ThreatConnectError, match=r"unreachable: .* failed after retries: ConnectionError") as caught:
        list(client.iter_pages("Host", FROM, TO))
    assert sleeps == [1.0, 2.0]
    assert SECRET not in str(caught.value)


def test_retries_are_bounded() -> None:
    session = FakeSession([_response(503, {"message": "down"})] * 5)
    client, sleeps = _client(session, max_retries=4)
    with pytest.raises(ThreatConnectError, match="503") as caught:
        list(client.iter_pages("Host", FROM, TO))
    assert caught.value.status == 503
    assert len(sleeps) == 4
    assert client.requests_sent == 5


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_raise_at_once_with_the_server_message(status: int) -> None:
    body = {"status": "Failure", "message": "Signature data did not match expected result"}
    session = FakeSession([_response(status, body)])
    client, sleeps = _client(session)
    with pytest.raises(ThreatConnectAuthError, match="Signature data did not match") as caught:
        list(client.iter_pages("Host", FROM, TO))
    assert sleeps == []
    assert client.requests_sent == 1
    assert SECRET not in str(caught.value)
    assert "TC ACCESS:" not in str(caught.value)


def test_a_bad_request_raises_with_the_v3_error_message() -> None:
    body = {"errCode": "0x1001", "message": "Invalid TQL", "status": "Error"}
    session = FakeSession([_response(400, body)])
    client, _ = _client(session)
    with pytest.raises(ThreatConnectError, match="Invalid TQL") as caught:
        list(client.iter_pages("Host", FROM, TO))
    assert not isinstance(caught.value, ThreatConnectAuthError)


def test_an_envelope_that_is_not_success_is_an_error() -> None:
    session = FakeSession([_response(200, {"status": "Failure", "message": "nope"})])
    client, _ = _client(session)
    with pytest.raises(ThreatConnectError, match="nope"):
        list(client.iter_pages("Host", FROM, TO))


def test_nothing_logged_carries_the_signature(caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession([_response(503, {"message": "down"}), _v3_page([])])
    client, _ = _client(session)
    with caplog.at_level(logging.DEBUG):
        list(client.iter_pages("Host", FROM, TO))
    signature = session.headers[0]["Authorization"].split(":", 1)[1]
    assert signature not in caplog.text
    assert SECRET not in caplog.text
    assert "503" in caplog.text


def _deleted_step(kind: str) -> Callable[[str], requests.Response]:
    def answer(url: str) -> requests.Response:
        item = {
            "ownerName": "Example Organization",
            "type": kind,
            "dateAdded": "2024-01-01T05:00:00Z",
            "summary": "gone.example",
        }
        if "/v2/" in url:
            return _response(200, {"status": "Success", "data": {"resultCount": 1, "indicator": [item]}})
        return _response(200, {"data": [item], "count": 1, "status": "Success"})

    return answer


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_deleted_listings_yield_type_summary_owner_and_time(version: str) -> None:
    session = FakeSession([_deleted_step("Host")])
    client, _ = _client(session, api_version=version)
    assert list(client.iter_deleted("Host", FROM)) == [
        {
            "indicator_type": "Host",
            "summary": "gone.example",
            "owner": "Example Organization",
            "date_added": dt.datetime(2024, 1, 1, 5, tzinfo=dt.UTC),
        }
    ]
    path = urlsplit(session.urls[0]).path
    assert path == ("/api/v2/indicators/hosts/deleted" if version == "v2" else "/api/v3/indicators/deleted")
    assert _params(session.urls[0])["deletedSince"] == ["2024-01-01T00:00:00Z"]


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_deleted_rows_are_versioned_by_the_window_and_keep_the_listings_date_added(version: str) -> None:
    session = FakeSession([_deleted_step("Host")])
    client, _ = _client(session, api_version=version)
    stamp = dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    rows = [row for batch in client.iter_deleted_batches("Host", FROM, stamp) for row in batch.to_pylist()]
    assert [(r["summary"], r["deleted"], r["active"], r["last_modified"], r["date_added"]) for r in rows] == [
        ("gone.example", True, False, stamp, dt.datetime(2024, 1, 1, 5, tzinfo=dt.UTC))
    ]


def test_a_v3_deleted_listing_that_counts_more_than_it_lists_says_so(caplog: pytest.LogCaptureFixture) -> None:
    item = {"ownerName": "Example Organization", "type": "Host", "summary": "gone.example"}
    session = FakeSession([_response(200, {"data": [item], "count": 3, "status": "Success"})])
    client, _ = _client(session)
    with caplog.at_level(logging.WARNING):
        assert len(list(client.iter_deleted("Host", FROM))) == 1
    assert "listed 1 of the 3 deleted Host indicators" in caplog.text


def test_the_client_repr_does_not_reveal_the_secret() -> None:
    client, _ = _client(FakeSession([]))
    assert SECRET not in repr(client)
    assert SECRET not in repr(client.transport.auth)

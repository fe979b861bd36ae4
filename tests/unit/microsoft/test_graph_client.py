"""GraphClient's retry layer, failure detection and $filter chunking, against a scripted in-memory session."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from include.microsoft.graph import (
    GraphClient,
    GraphError,
    is_graph_id,
    item_error,
    item_transient,
    result_info_error,
)
from include.transport.http import RetryPolicy
from tests.unit.microsoft.conftest import FakeTokenProvider

GUID = "e58c072b-c9bb-a5c4-34ce-eb69af44fb1e"


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"" if body is None else json.dumps(body).encode()
    response.headers = CaseInsensitiveDict(headers or {})
    return response


class ScriptedSession:
    """Answers each request with the next scripted response (or raises it), recording what was asked."""

    def __init__(self, *script: requests.Response | Exception) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str, Any, str]] = []

    def request(
        self, method: str, url: str, json: Any = None, auth: Any = None, timeout: Any = None, **_: Any
    ) -> requests.Response:
        prepared = requests.Request(method, url).prepare()
        auth(prepared)
        self.calls.append((method, url, json, prepared.headers["Authorization"]))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _client(
    session: ScriptedSession, provider: FakeTokenProvider | None = None, max_retries: int = 3
) -> tuple[GraphClient, list[float]]:
    sleeps: list[float] = []
    client = GraphClient(
        "https://graph.example",
        provider or FakeTokenProvider(),
        session=session,  # type: ignore[arg-type]
        max_retries=max_retries,
        backoff=1.0,
        sleep=sleeps.append,
    )
    return client, sleeps


def _ok_items(count: int) -> requests.Response:
    return _response(200, {"value": [{"id": GUID, "externalId": f"e{i}"} for i in range(count)]})


# ----------------------------------------------------------------------------------------- failure detection
def test_a_created_item_with_a_guid_is_a_success() -> None:
    assert item_error({"id": GUID, "externalId": "x"}) is None


def test_a_numeric_defender_id_is_a_success() -> None:
    assert is_graph_id("1004273")
    assert item_error({"id": "1004273"}) is None


def test_an_item_with_an_error_element_failed_with_its_message() -> None:
    item = {
        "id": "Failed to create, check Error element for reason",
        "externalId": "x",
        "Error": {"code": "BadRequest", "message": "description must be 100 characters or less."},
    }
    assert item_error(item) == "BadRequest: description must be 100 characters or less."


def test_a_lowercase_error_key_also_marks_a_failure() -> None:
    assert item_error({"id": GUID, "error": "boom"}) == "boom"


def test_an_item_whose_id_is_not_a_graph_id_failed() -> None:
    assert item_error({"id": "Failed to create, check Error element for reason"}) == (
        "Failed to create, check Error element for reason"
    )


def test_an_item_without_an_id_failed() -> None:
    assert item_error({"externalId": "x"}) is not None


@pytest.mark.parametrize(
    ("item", "transient"),
    [
        # Graph's refusal text in place of the id, without the Error element it names (seen in the field)
        ({"id": "Failed to create, check Error element for reason", "externalId": "x"}, False),
        ({"id": "Failed to update, check Error element for reason"}, False),
        ({"id": "Failed to create", "Error": {"code": "BadRequest", "message": "bad"}}, False),
        ({"id": "x", "Error": {"code": "ServiceUnavailable", "message": "busy"}}, True),
        ({"externalId": "x"}, True),  # says nothing at all: may pass on a resend
        ({"id": "x", "Error": {"code": "x", "status": 503}}, True),
    ],
)
def test_whether_a_failed_item_may_pass_on_a_resend(item: dict[str, Any], transient: bool) -> None:
    assert item_transient(item) is transient


@pytest.mark.parametrize("info", [{"code": 0, "message": ""}, {"code": "0"}, {"code": 404, "message": "gone"}])
def test_delete_results_that_leave_nothing_behind_are_successes(info: dict[str, Any]) -> None:
    assert result_info_error(info) is None


def test_a_failed_delete_result_reports_code_message_and_either_subcode_spelling() -> None:
    assert result_info_error({"code": 500, "message": "provider down", "subCode": "7"}) == (
        "500: provider down (subcode 7)"
    )


# ----------------------------------------------------------------------------------------- retry layer
def test_a_429_waits_the_retry_after_seconds_then_succeeds() -> None:
    session = ScriptedSession(
        _response(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "7"}), _ok_items(1)
    )
    client, sleeps = _client(session)
    assert client.update([{"id": GUID}])[0]["id"] == GUID
    assert sleeps == [7.0]
    assert client.requests_sent == 2


def test_a_huge_retry_after_is_capped() -> None:
    session = ScriptedSession(_response(429, None, {"Retry-After": "86400"}), _ok_items(1))
    client, sleeps = _client(session)
    client.update([{"id": GUID}])
    assert sleeps == [RetryPolicy().max_server_wait]


def test_5xx_backs_off_exponentially_and_gives_up_after_max_retries() -> None:
    session = ScriptedSession(*[_response(503, {"error": {"code": "ServiceUnavailable", "message": "busy"}})] * 4)
    client, sleeps = _client(session, max_retries=3)
    with pytest.raises(GraphError) as raised:
        client.update([{"id": GUID}])
    assert sleeps == [1.0, 2.0, 4.0]
    assert raised.value.status == 503
    assert raised.value.transient
    assert "ServiceUnavailable" in str(raised.value)


def test_a_504_on_a_read_is_retried() -> None:
    session = ScriptedSession(_response(504), _response(200, {"value": []}))
    client, sleeps = _client(session)
    assert list(client.list_all()) == []
    assert sleeps == [1.0]


def test_connection_errors_on_a_read_are_retried() -> None:
    session = ScriptedSession(requests.ConnectionError("reset"), _response(200, {"value": []}))
    client, _ = _client(session)
    assert client.find_by_external_ids(["a"]) == {}
    assert len(session.calls) == 2


def test_a_submit_is_not_resent_after_a_500_because_it_may_have_created_the_items() -> None:
    session = ScriptedSession(_response(500, {"error": {"code": "InternalServerError", "message": "x"}}))
    client, _ = _client(session)
    with pytest.raises(GraphError) as raised:
        client.submit([{"externalId": "a"}])
    assert raised.value.ambiguous
    assert len(session.calls) == 1


def test_a_submit_dropped_mid_request_is_ambiguous_and_not_resent() -> None:
    session = ScriptedSession(requests.ReadTimeout("read timed out"))
    client, _ = _client(session)
    with pytest.raises(GraphError) as raised:
        client.submit([{"externalId": "a"}])
    assert raised.value.ambiguous
    assert len(session.calls) == 1


def test_a_submit_refused_with_429_or_503_is_resent() -> None:
    session = ScriptedSession(_response(429, None, {"Retry-After": "1"}), _response(503), _ok_items(1))
    client, sleeps = _client(session)
    assert client.submit([{"externalId": "e0"}])[0]["id"] == GUID
    assert sleeps == [1.0, 2.0]


def test_a_401_refreshes_the_token_once_and_retries() -> None:
    provider = FakeTokenProvider()
    session = ScriptedSession(_response(401, {"error": {"code": "InvalidAuthenticationToken"}}), _ok_items(1))
    client, sleeps = _client(session, provider)
    client.update([{"id": GUID}])
    assert provider.invalidations == 1
    assert [call[3] for call in session.calls] == ["Bearer token-1", "Bearer token-2"]
    assert sleeps == []


def test_a_second_401_is_an_error_not_a_loop() -> None:
    provider = FakeTokenProvider()
    session = ScriptedSession(*[_response(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})] * 2)
    client, _ = _client(session, provider)
    with pytest.raises(GraphError) as raised:
        client.update([{"id": GUID}])
    assert raised.value.status == 401
    assert not raised.value.transient
    assert provider.invalidations == 1


def test_a_206_that_names_no_failed_item_is_ambiguous() -> None:
    session = ScriptedSession(_response(206, {"value": [{"id": GUID}]}))
    client, _ = _client(session)
    with pytest.raises(GraphError) as raised:
        client.update([{"id": GUID}])
    assert raised.value.ambiguous


def test_a_result_count_that_does_not_match_the_request_is_ambiguous() -> None:
    session = ScriptedSession(_ok_items(1))
    client, _ = _client(session)
    with pytest.raises(GraphError, match="1 results for 2 values"):
        client.submit([{"externalId": "a"}, {"externalId": "b"}])


def test_batches_over_100_are_refused_before_sending() -> None:
    session = ScriptedSession()
    client, _ = _client(session)
    with pytest.raises(ValueError, match="at most 100"):
        client.delete_by_external_ids([str(i) for i in range(101)])
    assert session.calls == []


# ----------------------------------------------------------------------------------------- lookup and paging
def test_lookups_split_ids_into_filters_that_keep_urls_well_under_2000_characters() -> None:
    ids = [f"{i:08d}-0000-5000-8000-{i:012d}" for i in range(300)]
    pages = [_response(200, {"value": []}) for _ in range(300)]
    session = ScriptedSession(*pages)
    client, _ = _client(session)
    client.find_by_external_ids(ids)
    asked: list[str] = []
    for _method, url, _body, _auth in session.calls:
        assert len(url) < 1600
        expression = parse_qs(urlsplit(url).query)["$filter"][0]
        asked += [term.split(" eq ")[1].strip("'") for term in expression.split(" or ")]
    assert asked == ids
    assert len(session.calls) > 1


def test_a_quote_in_an_external_id_is_doubled_in_the_filter() -> None:
    session = ScriptedSession(_response(200, {"value": []}))
    client, _ = _client(session)
    client.find_by_external_ids(["o'brien"])
    assert parse_qs(urlsplit(session.calls[0][1]).query)["$filter"][0] == "externalId eq 'o''brien'"


def test_lookups_follow_next_links_and_group_duplicates_oldest_first() -> None:
    first = _response(
        200,
        {
            "value": [{"id": "b", "externalId": "x", "ingestedDateTime": "2026-01-02T00:00:00Z"}],
            "@odata.nextLink": "https://graph.example/beta/security/tiIndicators?$skiptoken=1",
        },
    )
    second = _response(
        200,
        {
            "value": [
                {"id": "a", "externalId": "x", "ingestedDateTime": "2026-01-01T00:00:00Z"},
                {"id": "c", "externalId": "y"},
            ]
        },
    )
    client, _ = _client(ScriptedSession(first, second))
    found = client.find_by_external_ids(["x", "y", "z"])
    assert [i["id"] for i in found["x"]] == ["a", "b"]
    assert [i["id"] for i in found["y"]] == ["c"]
    assert "z" not in found


def test_a_next_link_that_repeats_is_refused_instead_of_looping() -> None:
    loop = {"value": [], "@odata.nextLink": "https://graph.example/beta/security/tiIndicators?$skiptoken=1"}
    client, _ = _client(ScriptedSession(_response(200, loop), _response(200, loop)))
    with pytest.raises(GraphError, match="paging loop"):
        list(client.list_all())


class CountingLimiter:
    """Stands in for SharedRateLimiter: records every slot taken and every server-imposed pause."""

    def __init__(self) -> None:
        self.acquired = 0
        self.penalties: list[float] = []

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0

    def penalise(self, seconds: float) -> None:
        self.penalties.append(seconds)


def test_every_request_including_retries_takes_a_slot_of_the_shared_budget() -> None:
    session = ScriptedSession(
        _response(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "2"}), _response(200, {"value": []})
    )
    limiter = CountingLimiter()
    client = GraphClient(
        "https://graph.example",
        FakeTokenProvider(),
        session=session,  # type: ignore[arg-type]
        sleep=lambda _: None,
        limiter=limiter,
    )  # type: ignore[arg-type]
    client.find_by_external_ids(["a"])
    assert limiter.acquired == 2
    assert limiter.penalties == [2.0]

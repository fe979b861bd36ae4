"""The Graph simulator's hostile corners, called directly with Requests (no sockets): long URLs, permanent item
rejections, acknowledged-but-lost writes and indicators deleted behind the client's back."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from simulators.graph import FAILED_CREATE_ID, FAILED_UPDATE_ID, PREFIX, GraphService
from simulators.mslogin import GRAPH_AUDIENCE, IssuedToken, LoginService
from simulators.server import Request, Response
from tests.fakes import FakeClock

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-0000-0000-0000-000000000001"
OTHER_CLIENT = "bbbbbbbb-0000-0000-0000-000000000002"
# KB 208427: 2,083 characters is the longest URL Microsoft supports.
LONGEST_URL = "https://bad.example/" + "a" * (2083 - len("https://bad.example/"))
RFC_1738 = "'url' must comply with RFC 1738"


@pytest.fixture
def graph() -> GraphService:
    login = LoginService()
    for client_id in (CLIENT, OTHER_CLIENT):
        login.register(TENANT, client_id, "secret")
        # Tokens valid for an hour: issued straight into the login service, no token endpoint round trip.
        login.tokens[client_id] = IssuedToken(client_id, TENANT, GRAPH_AUDIENCE, time.time() + 3600)
    return GraphService(login, clock=FakeClock())


def _call(graph: GraphService, method: str, path: str = "", body: Any = None, client_id: str = CLIENT) -> Response:
    headers = {"Authorization": f"Bearer {client_id}", "Host": "graph.test"}
    raw = b"" if body is None else json.dumps(body).encode()
    response = graph(Request(method, PREFIX + path, headers, raw))
    assert response is not None
    return response


def _submit(graph: GraphService, items: list[dict[str, Any]], client_id: str = CLIENT) -> Response:
    return _call(graph, "POST", "/submitTiIndicators", {"value": items}, client_id)


def _update(graph: GraphService, items: list[dict[str, Any]]) -> Response:
    return _call(graph, "POST", "/updateTiIndicators", {"value": items})


def _indicator(external_id: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "externalId": external_id,
        "action": "alert",
        "description": "hostile corners",
        "tlpLevel": "green",
        "expirationDateTime": "2026-04-10T08:30:00Z",
        "targetProduct": "Azure Sentinel",
        "threatType": "MaliciousUrl",
        "url": "https://bad.example/x",
        "confidence": 60,
    }
    body.update(overrides)
    return body


def _created_id(graph: GraphService, external_id: str, **overrides: Any) -> str:
    response = _submit(graph, [_indicator(external_id, **overrides)])
    assert response.status == 200
    return response.body["value"][0]["id"]


# --------------------------------------------------------------------- url length


def test_a_url_of_2083_characters_is_stored_and_one_character_more_is_refused_per_item(graph: GraphService) -> None:
    response = _submit(graph, [_indicator("fits", url=LONGEST_URL), _indicator("too-long", url=LONGEST_URL + "b")])
    assert response.status == 206
    fits, too_long = response.body["value"]
    assert fits["url"] == LONGEST_URL
    assert too_long == {
        "id": FAILED_CREATE_ID,
        "externalId": "too-long",
        "Error": {"code": "BadRequest", "message": RFC_1738},
    }
    assert [i["externalId"] for i in graph.owned_by(CLIENT)] == ["fits"]


def test_an_update_carrying_an_overlong_url_is_refused_per_item(graph: GraphService) -> None:
    indicator_id = _created_id(graph, "u")
    response = _update(graph, [{"id": indicator_id, "externalId": "u", "url": LONGEST_URL + "b", "confidence": 5}])
    assert response.status == 206
    assert response.body["value"] == [
        {"id": FAILED_UPDATE_ID, "externalId": "u", "Error": {"code": "BadRequest", "message": RFC_1738}}
    ]
    assert graph.indicators[indicator_id]["confidence"] == 60


def test_a_single_create_with_an_overlong_url_is_a_bad_request(graph: GraphService) -> None:
    response = _call(graph, "POST", "", _indicator("single", url=LONGEST_URL + "b"))
    assert response.status == 400
    assert (response.body["error"]["code"], response.body["error"]["message"]) == ("BadRequest", RFC_1738)
    assert graph.indicators == {}


# --------------------------------------------------------------------- fail_items(code=...)


def test_an_injected_item_failure_reads_as_a_transient_internal_server_error_by_default(graph: GraphService) -> None:
    graph.fail_items(lambda item: item["externalId"] == "flaky")
    response = _submit(graph, [_indicator("flaky")])
    assert response.status == 206
    assert response.body["value"][0]["Error"] == {
        "code": "InternalServerError",
        "message": "Simulated provider failure for this indicator.",
    }


def test_an_injected_item_failure_can_be_a_permanent_bad_request_on_submit_and_update(graph: GraphService) -> None:
    indicator_id = _created_id(graph, "kept")
    graph.fail_items(lambda item: True, code="BadRequest", message="The indicator content is not acceptable.")
    submitted = _submit(graph, [_indicator("refused")]).body["value"][0]
    updated = _update(graph, [{"id": indicator_id, "confidence": 1}]).body["value"][0]
    expected = {"code": "BadRequest", "message": "The indicator content is not acceptable."}
    assert (submitted["id"], submitted["Error"]) == (FAILED_CREATE_ID, expected)
    assert (updated["id"], updated["Error"]) == (FAILED_UPDATE_ID, expected)
    assert graph.indicators[indicator_id]["confidence"] == 60


# --------------------------------------------------------------------- drop_acknowledged


def test_a_dropped_submit_item_is_answered_exactly_like_a_stored_one_but_nothing_is_stored(
    graph: GraphService,
) -> None:
    graph.drop_acknowledged(lambda item: item["externalId"] == "lost")
    response = _submit(graph, [_indicator("kept"), _indicator("lost")])
    assert response.status == 200
    kept, lost = response.body["value"]
    assert set(lost) == set(kept)
    assert lost["@odata.type"] == "#microsoft.graph.tiIndicator"
    assert lost["id"] != kept["id"]
    uuid.UUID(lost["id"])  # a Graph-looking id, not a failure marker
    assert {k: v for k, v in lost.items() if k not in ("id", "externalId", "ingestedDateTime")} == {
        k: v for k, v in kept.items() if k not in ("id", "externalId", "ingestedDateTime")
    }
    assert list(graph.indicators) == [kept["id"]]
    assert _call(graph, "GET", f"/{lost['id']}").status == 404
    assert [i["externalId"] for i in _call(graph, "GET").body["value"]] == ["kept"]


def test_a_dropped_update_is_answered_with_the_change_but_the_stored_indicator_is_unchanged(
    graph: GraphService,
) -> None:
    indicator_id = _created_id(graph, "u")
    graph.drop_acknowledged(lambda item: item.get("isActive") is False)
    response = _update(graph, [{"id": indicator_id, "isActive": False, "confidence": 10}])
    assert response.status == 200
    [answer] = response.body["value"]
    assert (answer["id"], answer["isActive"], answer["confidence"]) == (indicator_id, False, 10)
    stored = _call(graph, "GET", f"/{indicator_id}").body
    assert (stored["isActive"], stored["confidence"]) == (True, 60)


def test_a_drop_count_is_spent_over_items_across_batches_then_items_are_stored_again(graph: GraphService) -> None:
    graph.drop_acknowledged(lambda item: item["externalId"].startswith("d"), count=2)
    first = _submit(graph, [_indicator("d1"), _indicator("other"), _indicator("d2"), _indicator("d3")])
    second = _submit(graph, [_indicator("d4")])
    assert first.status == second.status == 200
    assert sorted(i["externalId"] for i in graph.owned_by(CLIENT)) == ["d3", "d4", "other"]


def test_only_items_that_pass_validation_and_injected_failures_are_dropped(graph: GraphService) -> None:
    graph.fail_items(lambda item: item["externalId"] == "failed", count=1)
    graph.drop_acknowledged(lambda item: True, count=1)
    response = _submit(
        graph,
        [_indicator("invalid", tlpLevel="purple"), _indicator("failed"), _indicator("dropped"), _indicator("stored")],
    )
    assert response.status == 206
    assert [item["id"] == FAILED_CREATE_ID for item in response.body["value"]] == [True, True, False, False]
    assert [i["externalId"] for i in graph.owned_by(CLIENT)] == ["stored"]


def test_clear_faults_also_stops_dropping(graph: GraphService) -> None:
    graph.drop_acknowledged(lambda item: True)
    graph.clear_faults()
    _submit(graph, [_indicator("kept")])
    assert [i["externalId"] for i in graph.owned_by(CLIENT)] == ["kept"]


# --------------------------------------------------------------------- remove


def test_remove_deletes_matching_indicators_of_every_app_and_says_how_many(graph: GraphService) -> None:
    ours = _created_id(graph, "a", url="https://bad.example/retire-me")
    _created_id(graph, "b")
    _submit(graph, [_indicator("c", url="https://bad.example/retire-me")], client_id=OTHER_CLIENT)
    assert graph.remove(lambda entity: entity["url"].endswith("/retire-me")) == 2
    assert [i["externalId"] for i in graph.owned_by(CLIENT)] == ["b"]
    assert graph.owned_by(OTHER_CLIENT) == []
    assert ours not in graph.owners
    assert _call(graph, "GET", f"/{ours}").status == 404
    gone = _call(graph, "POST", "/deleteTiIndicatorsByExternalId", {"value": ["a"]})
    assert gone.body["value"][0]["code"] == 404


def test_remove_sees_the_stored_entity_and_skips_ones_its_predicate_cannot_read(graph: GraphService) -> None:
    _created_id(graph, "with-url")
    _submit(graph, [_indicator("ip-only", url=None, threatType="C2", networkIPv4="192.0.2.1")])
    # The stored entity carries every property (null when unset): the predicate reads what Graph would return.
    assert graph.remove(lambda entity: entity["networkIPv4"] is None and entity["severity"] == 3) == 1
    assert graph.remove(lambda entity: entity["url"].startswith("https://")) == 0
    assert [i["externalId"] for i in graph.owned_by(CLIENT)] == ["ip-only"]

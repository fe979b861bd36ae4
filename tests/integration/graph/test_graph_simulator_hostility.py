"""The Graph simulator's hostile corners over loopback HTTPS, as a GraphClient meets them."""

from __future__ import annotations

import pytest

from include.microsoft.graph import GraphClient, item_error
from tests.integration.graph.conftest import GraphStack

pytestmark = pytest.mark.integration

# KB 208427: 2,083 characters is the longest URL Microsoft supports.
LONGEST_URL = "https://bad.example/" + "a" * (2083 - len("https://bad.example/"))


def _indicator(external_id: str, **overrides: object) -> dict[str, object]:
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


def test_an_overlong_url_comes_back_as_a_bad_request_item_in_a_206(stack: GraphStack, client: GraphClient) -> None:
    results = client.submit([_indicator("fits", url=LONGEST_URL), _indicator("long", url=LONGEST_URL + "b")])
    assert stack.graph.requests[-1].status == 206
    assert item_error(results[0]) is None
    assert "'url' must comply with RFC 1738" in (item_error(results[1]) or "")
    assert results[1]["Error"]["code"] == "BadRequest"
    assert set(client.find_by_external_ids(["fits", "long"])) == {"fits"}


def test_an_acknowledged_but_dropped_submit_looks_successful_and_is_nowhere_to_be_found(
    stack: GraphStack, client: GraphClient
) -> None:
    stack.graph.drop_acknowledged(lambda item: item["externalId"] == "lost")
    results = client.submit([_indicator("kept"), _indicator("lost")])
    assert stack.graph.requests[-1].status == 200
    assert [item_error(r) for r in results] == [None, None]
    assert set(client.find_by_external_ids(["kept", "lost"])) == {"kept"}


def test_an_acknowledged_but_dropped_update_leaves_the_indicator_as_it_was(
    stack: GraphStack, client: GraphClient
) -> None:
    [created] = client.submit([_indicator("u")])
    stack.graph.drop_acknowledged(lambda item: True, count=1)
    [answer] = client.update([{"id": created["id"], "isActive": False}])
    assert item_error(answer) is None
    assert answer["isActive"] is False
    assert client.find_by_external_ids(["u"])["u"][0]["isActive"] is True


def test_an_indicator_removed_behind_the_clients_back_is_gone_from_its_reads(
    stack: GraphStack, client: GraphClient
) -> None:
    client.submit([_indicator("a"), _indicator("b")])
    assert stack.graph.remove(lambda entity: entity["externalId"] == "a") == 1
    assert set(client.find_by_external_ids(["a", "b"])) == {"b"}
    assert [i["externalId"] for i in client.list_all()] == ["b"]

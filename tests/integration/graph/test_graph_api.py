"""GraphClient and TokenProvider against the login and Graph simulators over loopback HTTPS."""

from __future__ import annotations

import pytest
import requests

from include.microsoft.auth import TokenError
from include.microsoft.graph import GraphClient, GraphError, item_error
from tests.integration.graph.conftest import OTHER_CLIENT, OTHER_SECRET, SECRET, GraphStack

pytestmark = pytest.mark.integration


def _indicator(external_id: str, **overrides: object) -> dict[str, object]:
    body = {
        "externalId": external_id,
        "action": "alert",
        "description": "round trip",
        "tlpLevel": "green",
        "expirationDateTime": "2026-04-10T08:30:00Z",
        "targetProduct": "Azure Sentinel",
        "threatType": "C2",
        "networkIPv4": "192.0.2.10",
        "confidence": 60,
    }
    body.update(overrides)
    return body


def test_the_token_is_acquired_once_and_reused_across_calls(stack: GraphStack, client: GraphClient) -> None:
    client.submit([_indicator("a")])
    client.find_by_external_ids(["a"])
    list(client.list_all())
    assert client.requests_sent == 3
    assert stack.login.token_requests == 1


def test_a_bad_secret_is_a_token_error_that_does_not_repeat_the_secret(stack: GraphStack) -> None:
    wrong = "definitely-the-wrong-secret"
    client = stack.new_client(secret=wrong)
    with pytest.raises(TokenError) as raised:
        client.submit([_indicator("a")])
    assert "invalid_client" in str(raised.value)
    assert wrong not in str(raised.value)
    assert SECRET not in str(raised.value)
    assert stack.graph.requests == []


def test_an_expired_token_is_refreshed_once_on_401(stack: GraphStack, client: GraphClient) -> None:
    client.submit([_indicator("a")])
    stack.login.tokens.clear()  # the service forgets every token MSAL still holds in its cache
    assert set(client.find_by_external_ids(["a"])) == {"a"}
    assert stack.login.token_requests == 2
    assert [r.status for r in stack.graph.requests] == [200, 401, 200]


def test_submit_update_find_and_delete_round_trip(stack: GraphStack, client: GraphClient) -> None:
    created = client.submit([_indicator("ext-1"), _indicator("ext-2", networkIPv4="192.0.2.11")])
    assert [item_error(i) for i in created] == [None, None]
    assert [i["externalId"] for i in created] == ["ext-1", "ext-2"]

    updated = client.update([{"id": created[0]["id"], "confidence": 90, "isActive": False}])
    assert item_error(updated[0]) is None

    found = client.find_by_external_ids(["ext-1", "ext-2", "ext-3"])
    assert set(found) == {"ext-1", "ext-2"}
    assert found["ext-1"][0]["confidence"] == 90
    assert found["ext-1"][0]["isActive"] is False
    assert found["ext-2"][0]["confidence"] == 60

    results = client.delete_by_external_ids(["ext-1", "ext-3"])
    assert [r["code"] for r in results] == [0, 404]
    assert set(client.find_by_external_ids(["ext-1", "ext-2"])) == {"ext-2"}


def test_single_entity_create_get_patch_and_delete_answer_the_documented_codes(
    stack: GraphStack, client: GraphClient
) -> None:
    session, url = client.session, client.collection_url
    auth = client.transport.auth
    created = session.post(url, json=_indicator("single"), auth=auth)
    assert created.status_code == 201
    assert created.json()["@odata.context"].endswith("#Security/tiIndicators/$entity")
    item_url = f"{url}/{created.json()['id']}"
    assert session.patch(item_url, json={"severity": 1}, auth=auth).status_code == 204
    represented = session.patch(item_url, json={"severity": 2}, auth=auth, headers={"Prefer": "return=representation"})
    assert (represented.status_code, represented.json()["severity"]) == (200, 2)
    assert session.get(item_url, auth=auth).json()["severity"] == 2
    assert session.delete(item_url, auth=auth).status_code == 204
    missing = session.get(item_url, auth=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NotFound"


def test_the_simulator_rejects_a_description_over_100_characters(stack: GraphStack, client: GraphClient) -> None:
    results = client.submit([_indicator("long", description="d" * 101), _indicator("short")])
    assert "100 characters" in (item_error(results[0]) or "")
    assert item_error(results[1]) is None
    assert stack.graph.requests[-1].status == 206
    single = client.session.post(
        client.collection_url, json=_indicator("long", description="d" * 101), auth=client.transport.auth
    )
    assert single.status_code == 400
    assert "100 characters" in single.json()["error"]["message"]


def test_microsoft_sentinel_as_target_product_fails_the_item(client: GraphClient) -> None:
    results = client.submit([_indicator("x", targetProduct="Microsoft Sentinel")])
    assert "Azure Sentinel" in (item_error(results[0]) or "")


def test_resubmitting_an_external_id_creates_a_second_row_like_the_real_service(
    stack: GraphStack, client: GraphClient
) -> None:
    client.submit([_indicator("dup")])
    client.submit([_indicator("dup")])
    assert len(client.find_by_external_ids(["dup"])["dup"]) == 2


def test_a_batch_over_100_is_a_bad_request_at_the_service(client: GraphClient) -> None:
    response = client.session.post(
        f"{client.collection_url}/submitTiIndicators",
        auth=client.transport.auth,
        json={"value": [_indicator(str(i)) for i in range(101)]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


def test_listing_follows_next_links_across_pages(stack: GraphStack, client: GraphClient) -> None:
    for start in range(0, 250, 100):
        client.submit([_indicator(f"p{i}") for i in range(start, min(start + 100, 250))])
    listed = [i["externalId"] for i in client.list_all()]
    assert sorted(listed) == sorted(f"p{i}" for i in range(250))
    assert [r.method for r in stack.graph.requests].count("GET") == 3


def test_a_filter_with_top_pages_with_next_links(client: GraphClient) -> None:
    client.submit([_indicator(f"t{i}") for i in range(5)])
    page = client.session.get(
        client.collection_url,
        auth=client.transport.auth,
        params={"$filter": "threatType eq 'C2' and tlpLevel eq 'green'", "$top": "2"},
    ).json()
    assert len(page["value"]) == 2
    rest = client.session.get(page["@odata.nextLink"], auth=client.transport.auth).json()
    assert len(rest["value"]) == 2
    assert "@odata.nextLink" in rest


def test_a_top_over_1000_is_a_bad_request(client: GraphClient) -> None:
    response = client.session.get(client.collection_url, auth=client.transport.auth, params={"$top": "1001"})
    assert response.status_code == 400


def test_another_app_can_neither_see_nor_change_our_indicators(stack: GraphStack, client: GraphClient) -> None:
    ours = client.submit([_indicator("mine")])[0]
    other = stack.new_client(OTHER_CLIENT, OTHER_SECRET)
    assert other.find_by_external_ids(["mine"]) == {}
    assert list(other.list_all()) == []
    assert other.delete_by_external_ids(["mine"])[0]["code"] == 404
    assert "not found" in (item_error(other.update([{"id": ours["id"], "confidence": 1}])[0]) or "")
    item_url = f"{other.collection_url}/{ours['id']}"
    assert other.session.delete(item_url, auth=other.transport.auth).status_code == 404
    assert client.find_by_external_ids(["mine"])["mine"][0]["confidence"] == 60


def test_injected_429s_are_waited_out_with_retry_after(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.inject(429, count=2, retry_after=3)
    client.submit([_indicator("a")])
    assert stack.clock.sleeps == [3.0, 3.0]
    throttled = [r for r in stack.graph.requests if r.status == 429]
    assert len(throttled) == 2
    assert len(client.find_by_external_ids(["a"])["a"]) == 1


def test_the_429_body_is_the_documented_too_many_requests_error(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.inject(429, count=1, retry_after=5)
    response = client.session.get(client.collection_url, auth=client.transport.auth)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "TooManyRequests"


def test_the_per_app_rate_limit_throttles_and_the_client_waits_it_out(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.rate_limit_per_minute = 3
    for i in range(5):
        client.submit([_indicator(f"r{i}")])
    assert any(r.status == 429 for r in stack.graph.requests)
    assert sum(stack.clock.sleeps) >= 59
    assert len(client.find_by_external_ids([f"r{i}" for i in range(5)])) == 5


def test_persistent_503s_end_in_a_transient_error_after_bounded_retries(stack: GraphStack, client: GraphClient) -> None:
    stack.graph.inject(503, count=100)
    with pytest.raises(GraphError) as raised:
        client.find_by_external_ids(["a"])
    assert raised.value.status == 503
    assert raised.value.transient
    assert len(stack.graph.requests) == client.transport.policy.max_retries + 1


def test_an_unreachable_service_is_a_transient_error(stack: GraphStack, client: GraphClient) -> None:
    client.submit([_indicator("a")])  # the provider now holds a cached token
    stack.server.stop()
    # A fresh session: the old one may still hold a kept-alive connection to a live handler thread.
    fresh = GraphClient(stack.server.base_url, client.token_provider, max_retries=2, sleep=stack.clock.sleep)
    with pytest.raises(GraphError) as raised:
        fresh.find_by_external_ids(["a"])
    assert raised.value.status is None
    assert fresh.requests_sent == 3
    assert isinstance(raised.value.__cause__, requests.ConnectionError)

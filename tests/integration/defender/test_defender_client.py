"""DefenderClient against the Defender simulator over loopback HTTPS: MSAL tokens, import, paging, deletes, retries."""

from __future__ import annotations

from typing import Any

import pytest

from include.microsoft.defender import DefenderClient, DefenderError, DefenderPermanentError
from simulators.defender import DOCUMENTED_LIMITS
from tests.integration.defender.conftest import CLIENT, OTHER_CLIENT, OTHER_SECRET, DefenderStack, public_ip

pytestmark = pytest.mark.integration


def _indicator(index: int, **overrides: Any) -> dict[str, Any]:
    item = {
        "indicatorValue": public_ip(index),
        "indicatorType": "IpAddress",
        "action": "Alert",
        "title": f"ip {index}",
        "description": f"test {index}",
        "expirationTime": "2026-06-01T00:00:00Z",
    }
    item.update(overrides)
    return item


def test_an_import_of_500_is_one_call_with_one_result_per_indicator(
    stack: DefenderStack, client: DefenderClient
) -> None:
    results = client.import_indicators([_indicator(i) for i in range(1, 501)])
    assert len(results) == 500
    assert not any(r["isFailed"] for r in results)
    assert [r.items for r in stack.defender.writes("/import")] == [500]
    with pytest.raises(ValueError, match="at most 500"):
        client.import_indicators([_indicator(i) for i in range(501)])


def test_the_listing_follows_next_links_and_sees_every_indicator_once(
    stack: DefenderStack, client: DefenderClient
) -> None:
    client.import_indicators([_indicator(i) for i in range(1, 251)])
    stack.defender.page_size = 100
    listed = list(client.list_indicators())
    assert len(listed) == len({i["id"] for i in listed}) == 250
    assert [r.method for r in stack.defender.requests].count("GET") == 3


def test_a_full_page_without_a_next_link_is_followed_by_skip(stack: DefenderStack, client: DefenderClient) -> None:
    client.import_indicators([_indicator(i) for i in range(1, 251)])
    listed = list(client.list_indicators(top=100))  # the simulator caps at $top without linking on
    assert len({i["id"] for i in listed}) == 250


def test_list_own_filters_on_the_creating_app_even_with_readwrite_all(
    stack: DefenderStack, client: DefenderClient
) -> None:
    stack.new_client(OTHER_CLIENT, OTHER_SECRET).import_indicators([_indicator(1)])
    client.import_indicators([_indicator(2)])
    stack.defender.grant(CLIENT, "Ti.ReadWrite.All")
    assert len(list(client.list_indicators())) == 2
    assert [i["indicatorValue"] for i in client.list_own()] == [public_ip(2)]


def test_a_filter_value_with_a_quote_is_escaped(stack: DefenderStack, client: DefenderClient) -> None:
    client.import_indicators([_indicator(1, title="O'Brien")])
    assert len(list(client.list_indicators("title eq 'O''Brien'"))) == 1


def test_429_with_retry_after_is_waited_out_and_retried(stack: DefenderStack, client: DefenderClient) -> None:
    stack.defender.inject(429, count=2, retry_after=7, path_contains="/import")
    results = client.import_indicators([_indicator(1)])
    assert not results[0]["isFailed"]
    assert stack.clock.sleeps == [7.0, 7.0]
    assert client.throttled == 2


def test_the_documented_import_budget_is_respected_by_waiting(stack: DefenderStack, client: DefenderClient) -> None:
    stack.defender.rate_limits = DOCUMENTED_LIMITS
    for index in range(35):
        client.import_indicators([_indicator(index + 1)])
    assert len(stack.ours()) == 35
    assert 429 in {r.status for r in stack.defender.requests}
    assert sum(stack.clock.sleeps) <= 60


def test_5xx_backs_off_and_gives_up_after_the_bounded_retries(stack: DefenderStack) -> None:
    client = stack.new_client(max_retries=2)
    stack.defender.inject(503, count=3)
    with pytest.raises(DefenderError) as raised:
        client.import_indicators([_indicator(1)])
    assert raised.value.status == 503
    assert not isinstance(raised.value, DefenderPermanentError)
    assert stack.clock.sleeps == [1.0, 2.0]


def test_a_revoked_token_is_refreshed_once(stack: DefenderStack, client: DefenderClient) -> None:
    client.import_indicators([_indicator(1)])
    stack.login.tokens.clear()  # the service forgets the token MSAL still caches
    client.import_indicators([_indicator(2)])
    assert len(stack.ours()) == 2
    assert stack.login.token_requests == 2


def test_401_after_a_fresh_token_and_403_are_permanent(stack: DefenderStack, client: DefenderClient) -> None:
    stack.defender.inject(401, count=2)
    with pytest.raises(DefenderPermanentError) as raised:
        client.import_indicators([_indicator(1)])
    assert raised.value.status == 401
    stack.defender.grant(CLIENT, None)
    with pytest.raises(DefenderPermanentError) as raised:
        list(client.list_indicators())
    assert raised.value.status == 403


def test_a_wrong_base_path_is_permanent(stack: DefenderStack) -> None:
    client = DefenderClient(
        stack.server.base_url + "/nowhere", stack.provider(), client_id=CLIENT, sleep=stack.clock.sleep
    )
    with pytest.raises(DefenderPermanentError):
        client.import_indicators([_indicator(1)])


def test_batch_delete_reports_404_as_not_all_deleted(stack: DefenderStack, client: DefenderClient) -> None:
    ids = [r["id"] for r in client.import_indicators([_indicator(1), _indicator(2)])]
    assert client.batch_delete([ids[0], "999999"]) is False
    assert client.batch_delete(ids) is True
    assert stack.ours() == {}
    assert client.delete(ids[0]) is False

"""A ThreatConnect listing that changes while its pages are read loses no indicator and yields none twice.

ThreatConnect pages by offsets, and an indicator edited, deleted or added between two pages shifts every later one
by a place. The judge is the simulator's own store after the change: every indicator whose ``lastModified`` is
still inside the window must have been extracted (one edited out of the window may or may not be), none twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from include.threatconnect.client import ThreatConnectClient, ThreatConnectError
from simulators.server import HttpsServer
from simulators.threatconnect import ThreatConnectService

START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 5, 15, tzinfo=dt.UTC)
LATER = END + dt.timedelta(days=30)  # when the changes happen: after the window, as in a real run

pytestmark = pytest.mark.integration

Factory = Callable[..., ThreatConnectClient]
Sim = tuple[HttpsServer, ThreatConnectService]


def _page_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data")
    if isinstance(data, list):  # v3
        return data
    return next((value for value in (data or {}).values() if isinstance(value, list)), [])  # v2


def _after_pages(client: ThreatConnectClient, change: Callable[[int, list[dict[str, Any]]], None]) -> None:
    """Call ``change(pages_read, items_of_that_page)`` after every listing page the client reads."""
    original = client._get
    pages = 0

    def get(url: str) -> dict[str, Any]:
        nonlocal pages
        body = original(url)
        if parse_qs(urlsplit(url).query)["resultLimit"] != ["1"]:  # not the request for the count
            pages += 1
            change(pages, _page_items(body))
        return body

    client._get = get  # type: ignore[method-assign]


def _in_window(service: ThreatConnectService, kind: str) -> set[int]:
    records = [service.get(i) for i in list(service._records)]
    return {r["id"] for r in records if r and r["type"] == kind and START <= r["lastModified"] < END}


def _extract(client: ThreatConnectClient, kind: str) -> list[int]:
    return [i for batch in client.iter_pages(kind, START, END) for i in batch.column("tc_id").to_pylist()]


def _ids_as_they_come(batches: Any) -> Any:
    for batch in batches:
        yield from batch.column("tc_id").to_pylist()


def _edit(service: ThreatConnectService, indicator_id: int, **changes: Any) -> None:
    record = service.get(indicator_id)
    assert record is not None
    service.put({**record, **changes})


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_an_indicator_edited_after_the_first_page_costs_no_other_one(
    version: str, tc_client_factory: Factory, tc_simulator: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    _, service = tc_simulator
    client = tc_client_factory(version)
    before = _in_window(service, "Host")

    def change(pages: int, items: list[dict[str, Any]]) -> None:
        if pages == 1:  # an analyst edits an indicator the first page held: it leaves the window (or moves last)
            _edit(service, items[0]["id"], lastModified=LATER, rating=5)

    _after_pages(client, change)
    with caplog.at_level(logging.WARNING):
        ids = _extract(client, "Host")
    assert len(ids) == len(set(ids))
    after = _in_window(service, "Host")
    assert len(after) == len(before) - 1 > 300
    assert after <= set(ids)
    assert "changed while it was read" in caplog.text


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_an_indicator_deleted_after_the_first_page_costs_no_other_one(
    version: str, tc_client_factory: Factory, tc_simulator: Sim
) -> None:
    _, service = tc_simulator
    client = tc_client_factory(version)

    def change(pages: int, items: list[dict[str, Any]]) -> None:
        if pages == 1:
            service.delete(items[1]["id"], LATER)

    _after_pages(client, change)
    ids = _extract(client, "URL")
    assert len(ids) == len(set(ids))
    assert _in_window(service, "URL") <= set(ids)


def test_v2_newest_first_indicators_added_while_it_is_read_push_none_out(
    tc_client_factory: Factory, tc_simulator: Sim
) -> None:
    _, service = tc_simulator
    service.v2_order = "dateAdded desc"  # the one real v2 listing captured: newest first
    client = tc_client_factory("v2")
    template = service.get(next(iter(_in_window(service, "Host"))))
    assert template is not None

    def change(pages: int, items: list[dict[str, Any]]) -> None:
        if pages == 1:  # three indicators created now come first and push every other one three places
            for n in range(3):
                new_id = 900_000 + n
                service.put(
                    {
                        **template,
                        "id": new_id,
                        "hostName": f"new-{n}.example",
                        "dateAdded": LATER,
                        "lastModified": LATER,
                    }
                )

    _after_pages(client, change)
    ids = _extract(client, "Host")
    assert len(ids) == len(set(ids))
    assert _in_window(service, "Host") <= set(ids)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_listing_that_never_holds_still_fails_the_try_and_yields_nothing_twice(
    version: str, tc_client_factory: Factory, tc_simulator: Sim
) -> None:
    _, service = tc_simulator
    client = tc_client_factory(version)
    yielded: list[int] = []

    def change(pages: int, items: list[dict[str, Any]]) -> None:
        if items:  # an import that touches an indicator between every two pages
            _edit(service, items[-1]["id"], lastModified=LATER)

    _after_pages(client, change)
    with pytest.raises(ThreatConnectError, match="kept changing while it was read"):
        yielded.extend(_ids_as_they_come(client.iter_pages("EmailAddress", START, END)))
    assert yielded
    assert len(yielded) == len(set(yielded))


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_listing_that_holds_still_is_read_once_plus_one_count(version: str, tc_client_factory: Factory) -> None:
    client = tc_client_factory(version)
    ids = _extract(client, "File")
    assert len(ids) == len(set(ids)) > 300
    assert client.requests_sent == -(-len(ids) // 100) + 1

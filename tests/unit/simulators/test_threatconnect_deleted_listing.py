"""The ThreatConnect simulator's deleted-indicators listings: ``dateAdded`` is when the indicator was first added
(not its deletion), while ``deletedSince`` still filters on the deletion time."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from include.threatconnect.auth import signature
from simulators.server import Request
from simulators.threatconnect import ThreatConnectService

NOW = 1_710_000_000.0
ADDED = dt.datetime(2023, 6, 1, 12, 30, tzinfo=dt.UTC)
CHANGED = dt.datetime(2024, 1, 10, tzinfo=dt.UTC)
DELETED = dt.datetime(2024, 2, 1, 8, tzinfo=dt.UTC)
OWNER = "Example Organization"
LISTINGS = {
    "v2": "/api/v2/indicators/hosts/deleted",
    "v2 (all types)": "/api/v2/indicators/deleted",
    "v3": "/api/v3/indicators/deleted?type=Host",
}


def _host(indicator_id: int) -> dict[str, Any]:
    return {
        "id": indicator_id,
        "type": "Host",
        "owner": OWNER,
        "hostName": f"gone{indicator_id}.example",
        "dateAdded": ADDED,
        "lastModified": CHANGED,
    }


def _service(**options: Any) -> ThreatConnectService:
    service = ThreatConnectService([_host(1), _host(2)], "ID", "SECRET", owners=(OWNER,), clock=lambda: NOW, **options)
    service.delete(1, DELETED)
    return service


def _deleted(service: ThreatConnectService, listing: str, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    target = LISTINGS[listing]
    if since is not None:
        target += ("&" if "?" in target else "?") + "deletedSince=" + since.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "Host": "localhost",
        "Timestamp": str(int(NOW)),
        "Authorization": f"TC ID:{signature('SECRET', target, 'GET', int(NOW))}",
    }
    response = service(Request("GET", target, headers, b""))
    assert response is not None
    assert response.status == 200
    data = response.body["data"]
    return data["indicator"] if isinstance(data, dict) else data


@pytest.mark.parametrize("listing", list(LISTINGS))
def test_a_deleted_indicator_is_listed_with_the_date_it_was_first_added(listing: str) -> None:
    assert _deleted(_service(), listing) == [
        {"ownerName": OWNER, "dateAdded": "2023-06-01T12:30:00Z", "type": "Host", "summary": "gone1.example"}
    ]


@pytest.mark.parametrize("listing", list(LISTINGS))
def test_deleted_since_filters_on_the_deletion_time_not_on_date_added(listing: str) -> None:
    service = _service()
    # Added long before either bound: only the deletion time decides.
    assert len(_deleted(service, listing, since=DELETED - dt.timedelta(seconds=1))) == 1
    assert len(_deleted(service, listing, since=DELETED)) == 1
    assert _deleted(service, listing, since=DELETED + dt.timedelta(seconds=1)) == []


@pytest.mark.parametrize("listing", list(LISTINGS))
def test_the_old_deletion_time_reading_of_date_added_is_still_a_knob(listing: str) -> None:
    service = _service(deleted_date_added="deletion")
    assert [item["dateAdded"] for item in _deleted(service, listing)] == ["2024-02-01T08:00:00Z"]
    service.deleted_date_added = "added"
    assert [item["dateAdded"] for item in _deleted(service, listing)] == ["2023-06-01T12:30:00Z"]


def test_an_unknown_date_added_reading_is_refused() -> None:
    with pytest.raises(ValueError, match="deleted_date_added"):
        _service(deleted_date_added="modified")

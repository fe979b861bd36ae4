"""The ThreatConnect client against the simulator over HTTPS, for both API versions."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
import requests

from include.pipeline.schema import RAW_SCHEMA
from include.threatconnect.auth import HmacAuth
from include.threatconnect.client import ThreatConnectAuthError, ThreatConnectClient
from simulators.dataset import TYPES
from simulators.server import HttpsServer
from simulators.threatconnect import ThreatConnectService

START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 5, 15, tzinfo=dt.UTC)

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("version", ["v2", "v3"])]


@pytest.fixture(autouse=True)
def _window_matches_the_data(tc_window: tuple[dt.datetime, dt.datetime]) -> None:
    assert tc_window == (START, END)


Factory = Callable[..., ThreatConnectClient]
Sim = tuple[HttpsServer, ThreatConnectService]


def _fetch(client: ThreatConnectClient, kind: str, low: dt.datetime = START, high: dt.datetime = END) -> pa.Table:
    batches = list(client.iter_pages(kind, low, high))
    assert all(batch.schema.equals(RAW_SCHEMA) for batch in batches)
    return pa.Table.from_batches(batches, schema=RAW_SCHEMA)


def _expected(records: list[dict[str, Any]], kind: str, low: dt.datetime = START, high: dt.datetime = END) -> set:
    return {r["id"] for r in records if r["type"] == kind and low <= r["lastModified"] < high}


def test_paging_over_several_pages_returns_exactly_the_expected_indicators(
    version: str, tc_client_factory: Factory, tc_records: list[dict[str, Any]]
) -> None:
    client = tc_client_factory(version)
    table = _fetch(client, "Host")
    ids = table.column("tc_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == _expected(tc_records, "Host")
    assert max(table.column("page").to_pylist()) >= 4


def test_requests_sent_is_one_per_page_for_every_type_and_one_count_after_several(
    version: str, tc_client_factory: Factory, tc_records: list[dict[str, Any]]
) -> None:
    for kind in TYPES:
        client = tc_client_factory(version, page_size=37)
        expected = _expected(tc_records, kind)
        assert set(_fetch(client, kind).column("tc_id").to_pylist()) == expected
        pages = math.ceil(len(expected) / 37)
        assert client.requests_sent == pages + (pages > 1), kind


def test_rows_carry_the_indicator_details(
    version: str, tc_client_factory: Factory, tc_records: list[dict[str, Any]]
) -> None:
    rows = {row["tc_id"]: row for row in _fetch(tc_client_factory(version), "File").to_pylist()}
    records = {r["id"]: r for r in tc_records if r["type"] == "File"}
    for tc_id, row in rows.items():
        record = records[tc_id]
        assert row["summary"] == record["summary"]
        assert (row["md5"], row["sha1"], row["sha256"]) == tuple(record.get(h) for h in ("md5", "sha1", "sha256"))
        assert row["last_modified"] == record["lastModified"]
        assert row["date_added"] == record["dateAdded"]
        assert row["rating"] == record["rating"]
        assert row["confidence"] == record["confidence"]
        assert row["threat_assess_score"] == record["threatAssessScore"]
        assert row["active"] == record["active"]
        assert row["false_positive_count"] == record["falsePositives"]
        assert row["tags"] == record["tags"]
        assert row["security_labels"] == record["securityLabels"]
        assert row["description"] == record["description"]
        assert row["owner"] == record["owner"]
    if version == "v3":  # v2 has no external dates
        assert any(row["external_date_expires"] is not None for row in rows.values())
        assert all(row["external_date_expires"] == records[i]["externalDateExpires"] for i, row in rows.items())


def test_inactive_indicators_are_included(
    version: str, tc_client_factory: Factory, tc_records: list[dict[str, Any]]
) -> None:
    table = _fetch(tc_client_factory(version), "URL")
    inactive = {row["tc_id"] for row in table.to_pylist() if not row["active"]}
    expected = {r["id"] for r in tc_records if r["type"] == "URL" and not r["active"]}
    assert expected
    assert inactive == expected


def test_the_window_includes_its_start_and_excludes_its_end(
    version: str, tc_client_factory: Factory, tc_simulator: Sim, tc_records: list[dict[str, Any]]
) -> None:
    _, service = tc_simulator
    low, high = START + dt.timedelta(days=3), START + dt.timedelta(days=4)
    template = next(r for r in tc_records if r["type"] == "Address" and not r["_invalid"])
    service.put(template | {"id": 1, "ip": "203.0.113.1", "lastModified": low})
    service.put(template | {"id": 2, "ip": "203.0.113.2", "lastModified": high})
    service.put(template | {"id": 3, "ip": "203.0.113.3", "lastModified": high - dt.timedelta(seconds=1)})
    service.put(template | {"id": 4, "ip": "203.0.113.4", "lastModified": low - dt.timedelta(seconds=1)})
    ids = set(_fetch(tc_client_factory(version), "Address", low, high).column("tc_id").to_pylist())
    assert {1, 3} <= ids
    assert not {2, 4} & ids
    assert ids == _expected(tc_records, "Address", low, high) | {1, 3}


def test_a_wrong_secret_is_an_auth_error(version: str, tc_client_factory: Factory) -> None:
    client = tc_client_factory(version, secret_key="not-the-secret")
    with pytest.raises(ThreatConnectAuthError, match="Signature data did not match"):
        _fetch(client, "Host")
    assert client.requests_sent == 1


def test_clock_skew_beyond_five_minutes_is_an_auth_error(version: str, tc_client_factory: Factory) -> None:
    client = tc_client_factory(version, clock=lambda: time.time() + 600)
    with pytest.raises(ThreatConnectAuthError, match="Timestamp out of acceptable time range"):
        _fetch(client, "Host")


def test_an_unknown_owner_is_an_auth_error(version: str, tc_client_factory: Factory) -> None:
    with pytest.raises(ThreatConnectAuthError, match="owner was not found"):
        _fetch(tc_client_factory(version, owner="Nobody"), "Host")


def test_injected_503s_are_retried_and_the_result_is_complete(
    version: str, tc_client_factory: Factory, tc_simulator: Sim, tc_records: list[dict[str, Any]]
) -> None:
    _, service = tc_simulator
    sleeps: list[float] = []
    client = tc_client_factory(version, sleep=sleeps.append)
    service.fail_next(2, status=503, retry_after=0.25)
    table = _fetch(client, "EmailAddress")
    assert set(table.column("tc_id").to_pylist()) == _expected(tc_records, "EmailAddress")
    assert sleeps == [0.25, 0.25]
    pages = math.ceil(len(_expected(tc_records, "EmailAddress")) / 100)
    assert client.requests_sent == pages + 1 + 2  # the pages, the count after them, the two 503s


def test_deleted_indicators_are_listed(
    version: str, tc_client_factory: Factory, tc_simulator: Sim, tc_records: list[dict[str, Any]]
) -> None:
    _, service = tc_simulator
    hosts = [r for r in tc_records if r["type"] == "Host"][:3]
    service.delete(hosts[0]["id"], START + dt.timedelta(days=1))
    service.delete(hosts[1]["id"], START + dt.timedelta(days=5))
    service.delete(hosts[2]["id"], START + dt.timedelta(days=6))
    deleted = list(tc_client_factory(version).iter_deleted("Host", START + dt.timedelta(days=5)))
    # deletedSince filters on the deletion time; the entries carry no deletion time of their own.
    assert [(d["indicator_type"], d["summary"], d["owner"]) for d in deleted] == [
        ("Host", hosts[1]["summary"], hosts[1]["owner"]),
        ("Host", hosts[2]["summary"], hosts[2]["owner"]),
    ]
    remaining = set(_fetch(tc_client_factory(version), "Host").column("tc_id").to_pylist())
    assert not {h["id"] for h in hosts} & remaining


def test_a_tampered_query_fails_the_signature_check(
    version: str, tc_tls: Any, tc_simulator: Sim, tc_credentials: tuple[str, str]
) -> None:
    server, service = tc_simulator
    access_id, secret_key = tc_credentials
    path = "/api/v2/indicators/hosts" if version == "v2" else "/api/v3/indicators"
    with requests.Session() as session:
        prepared = session.prepare_request(
            requests.Request("GET", f"{server.base_url}{path}?resultLimit=10", auth=HmacAuth(access_id, secret_key))
        )
        untouched = session.send(prepared, verify=str(tc_tls.ca_file))
        assert untouched.status_code == 200
        prepared.url = prepared.url.replace("resultLimit=10", "resultLimit=10000")
        tampered = session.send(prepared, verify=str(tc_tls.ca_file))
    assert tampered.status_code == 401
    assert tampered.json() == {"status": "Failure", "message": "Signature data did not match expected result"}
    assert service.requests[-1] == ("GET", f"{path}?resultLimit=10000")

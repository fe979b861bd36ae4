"""SentinelSink over a fake client: batching, per-record retries, revocation, read-back for verify."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
import stix2

from include.microsoft.sentinel import SentinelError, SentinelSink
from include.microsoft.sentinel.stix import format_timestamp, parse_timestamp
from include.pipeline.ports import Sink
from tests.unit.microsoft.graph_rows import BASE_TIME, ip_rows, normalized_row, rows_frame

Rejector = Callable[[Mapping[str, Any], int], list[str]]


@dataclass
class FakeClient:
    """Keeps uploads; ``reject(obj, attempt)`` returns error messages for an object (empty: accepted)."""

    reject: Rejector = lambda obj, attempt: []
    fail_with: SentinelError | None = None
    poison: Callable[[Mapping[str, Any]], bool] = lambda obj: False  # any such object makes the request a 400
    uploads: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    queries: list[tuple[list[str], str | None]] = field(default_factory=list)
    requests_sent: int = 0

    def upload(self, sourcesystem: str, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.requests_sent += 1
        if self.fail_with is not None:
            raise self.fail_with
        if any(self.poison(obj) for obj in objects):
            self.uploads.append((sourcesystem, []))
            raise SentinelError("bad", status=400, body='{"message":"bad format"}')
        self.uploads.append((sourcesystem, [dict(o) for o in objects]))
        errors = []
        for index, obj in enumerate(objects):
            self.seen[obj["id"]] = self.seen.get(obj["id"], 0) + 1
            messages = self.reject(obj, self.seen[obj["id"]])
            if messages:
                errors.append({"recordIndex": index, "errorMessages": messages})
            else:
                self.stored[obj["id"]] = dict(obj)
        return errors

    def query(self, stix_ids: Sequence[str], sourcesystem: str | None = None) -> dict[str, dict[str, Any]]:
        self.queries.append((list(stix_ids), sourcesystem))
        return {i: self.stored[i] for i in stix_ids if i in self.stored}


def _sink(client: FakeClient, **kwargs: Any) -> SentinelSink:
    return SentinelSink(client, **kwargs)  # type: ignore[arg-type]


def test_the_sink_satisfies_the_sink_protocol() -> None:
    sink: Sink = _sink(FakeClient(), sourcesystem="src")
    assert sink.name == "sentinel"
    assert {"pattern", "revoked", "valid_until", "confidence", "object_marking_refs", "labels"} <= set(
        sink.verify_fields
    )


def test_the_payload_is_a_stix_object_stix2_accepts() -> None:
    payload = _sink(FakeClient(), sourcesystem="src").payload(normalized_row("sha1"))
    stix2.parse(payload, allow_custom=False)


def test_two_hundred_fifty_rows_go_in_three_uploads_of_at_most_one_hundred() -> None:
    client = FakeClient()
    results = _sink(client, sourcesystem="src").upsert(ip_rows(250))
    assert [len(objects) for _, objects in client.uploads] == [100, 100, 50]
    assert [r.status for r in results] == ["ok"] * 250
    assert all(r.attempts == 1 for r in results)


def test_every_result_names_the_row_and_its_stix_id() -> None:
    rows = ip_rows(3)
    results = _sink(FakeClient(), sourcesystem="src").upsert(rows)
    assert [r.external_id for r in results] == list(rows["external_id"])
    assert [r.target_id for r in results] == [f"indicator--{e}" for e in rows["external_id"]]


def test_a_smaller_batch_size_is_honoured() -> None:
    client = FakeClient()
    _sink(client, sourcesystem="src", batch_size=40).upsert(ip_rows(90))
    assert [len(objects) for _, objects in client.uploads] == [40, 40, 10]


def test_a_batch_size_over_the_api_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _sink(FakeClient(), batch_size=101)


def test_a_record_rejected_once_is_retried_and_succeeds() -> None:
    rows = ip_rows(5)
    flaky = f"indicator--{rows['external_id'][2]}"
    client = FakeClient(reject=lambda obj, attempt: ["transient"] if obj["id"] == flaky and attempt == 1 else [])
    results = _sink(client, sourcesystem="src").upsert(rows)
    assert [r.status for r in results] == ["ok"] * 5
    assert results[2].attempts == 2
    assert [len(objects) for _, objects in client.uploads] == [5, 1]  # only the rejected record goes again


def test_a_record_rejected_twice_is_reported_rejected_with_the_message() -> None:
    rows = ip_rows(4)
    bad = f"indicator--{rows['external_id'][1]}"
    message = "Error for Property=pattern: The STIX pattern is not valid."
    client = FakeClient(reject=lambda obj, attempt: [message, "second"] if obj["id"] == bad else [])
    results = _sink(client, sourcesystem="src").upsert(rows)
    assert [r.status for r in results] == ["ok", "rejected", "ok", "ok"]
    assert results[1].error == f"{message}; second"
    assert results[1].attempts == 2
    assert client.seen[bad] == 2


def test_max_item_attempts_of_one_means_no_retry() -> None:
    client = FakeClient(reject=lambda obj, attempt: ["no"])
    results = _sink(client, sourcesystem="src", max_item_attempts=1).upsert(ip_rows(2))
    assert [r.status for r in results] == ["rejected", "rejected"]
    assert len(client.uploads) == 1


def test_a_400_for_every_request_rejects_each_row_alone_without_stopping_the_load() -> None:
    client = FakeClient(fail_with=SentinelError("bad", status=400, body='{"message":"bad format"}'))
    results = _sink(client, sourcesystem="src").upsert(ip_rows(2))
    assert [r.status for r in results] == ["rejected", "rejected"]
    assert "bad format" in (results[0].error or "")
    assert client.requests_sent == 3  # the pair, then each alone


def test_one_object_that_makes_sentinel_refuse_a_whole_request_is_isolated_by_halving_the_batch() -> None:
    rows = ip_rows(64)
    bad = f"indicator--{rows['external_id'][37]}"
    client = FakeClient(poison=lambda obj: obj["id"] == bad)
    results = _sink(client, sourcesystem="src").upsert(rows)
    assert [r.external_id for r in results if r.status != "ok"] == [rows["external_id"][37]]
    assert results[37].status == "rejected"
    assert "bad format" in (results[37].error or "")
    assert len(client.stored) == 63
    assert client.requests_sent == 1 + 2 * 6  # log2(64) halvings, two requests each


@pytest.mark.parametrize("status", [None, 401, 404, 429, 503])
def test_other_request_failures_propagate_for_the_task_retry(status: int | None) -> None:
    client = FakeClient(fail_with=SentinelError("boom", status=status))
    with pytest.raises(SentinelError):
        _sink(client, sourcesystem="src").upsert(ip_rows(2))


def test_without_a_fixed_sourcesystem_each_owner_uploads_under_its_own() -> None:
    rows = rows_frame(
        [
            normalized_row("ipv4", 1, owner="Org A"),
            normalized_row("ipv4", 2, owner="Org B"),
            normalized_row("ipv4", 3, owner="Org A"),
        ]
    )
    client = FakeClient()
    _sink(client).upsert(rows)
    assert sorted((source, len(objects)) for source, objects in client.uploads) == [
        ("ThreatConnect-Org A", 2),
        ("ThreatConnect-Org B", 1),
    ]


def test_a_first_version_is_a_create_and_a_later_one_an_update() -> None:
    rows = rows_frame(
        [normalized_row("ipv4", 1, last_modified=BASE_TIME - dt.timedelta(days=30)), normalized_row("ipv4", 2)]
    )
    results = _sink(FakeClient(), sourcesystem="src").upsert(rows)
    assert [r.action for r in results] == ["create", "update"]


def test_an_action_column_from_the_lifecycle_stage_wins() -> None:
    rows = rows_frame([normalized_row("ipv4", 1)])
    rows["action"] = "create"
    assert _sink(FakeClient(), sourcesystem="src").upsert(rows)[0].action == "create"


def test_retract_re_uploads_the_objects_revoked_with_a_newer_modified() -> None:
    client = FakeClient()
    sink = _sink(client, sourcesystem="src")
    rows = ip_rows(2)
    sink.upsert(rows)
    results = sink.retract(rows)
    assert [(r.action, r.status) for r in results] == [("retract", "ok")] * 2
    _, revoked = client.uploads[-1]
    _, original = client.uploads[0]
    for before, after in zip(original, revoked, strict=True):
        assert after["revoked"] is True
        assert parse_timestamp(after["modified"]) > parse_timestamp(before["modified"])
        assert {k: v for k, v in after.items() if k not in ("revoked", "modified")} == {
            k: v for k, v in before.items() if k not in ("revoked", "modified")
        }


def test_retract_uses_the_lifecycle_stages_stix_modified() -> None:
    client = FakeClient()
    bumped = BASE_TIME + dt.timedelta(days=2)
    rows = pd.DataFrame([normalized_row("ipv4", 1, stix_modified=bumped)])
    _sink(client, sourcesystem="src").retract(rows)
    assert client.uploads[0][1][0]["modified"] == format_timestamp(bumped)


def test_fetch_answers_payload_shaped_objects_keyed_by_external_id() -> None:
    client = FakeClient()
    sink = _sink(client, sourcesystem="src")
    rows = ip_rows(3)
    sink.upsert(rows)
    ids = [*rows["external_id"], "00000000-0000-5000-8000-000000000000"]
    fetched = sink.fetch(ids)
    assert set(fetched) == set(rows["external_id"])
    for record in rows.to_dict("records"):
        sent = sink.payload(record)
        assert {f: fetched[record["external_id"]].get(f) for f in sink.verify_fields} == {
            f: sent.get(f) for f in sink.verify_fields
        }
    assert client.queries == [([f"indicator--{i}" for i in ids], "src")]


def test_fetch_normalizes_timestamps_and_label_order_the_store_may_change() -> None:
    client = FakeClient()
    sink = _sink(client, sourcesystem="src")
    row = normalized_row("ipv4", 1, tags=["a", "b"])
    sink.upsert(rows_frame([row]))
    stored = client.stored[f"indicator--{row['external_id']}"]
    sent = dict(stored)
    stored["labels"] = ["b", "a"]
    stored["valid_from"] = stored["valid_from"].replace(".000Z", "Z")
    assert sink.fetch([row["external_id"]])[row["external_id"]] == sent


def test_fetch_of_nothing_asks_nothing() -> None:
    client = FakeClient()
    assert _sink(client, sourcesystem="src").fetch([]) == {}
    assert client.queries == []


def test_retract_payload_is_exactly_what_retract_sends() -> None:
    client = FakeClient()
    sink = _sink(client, sourcesystem="src")
    rows = ip_rows(2)
    sink.retract(rows)
    assert client.uploads[0][1] == [sink.retract_payload(r) for r in rows.to_dict("records")]


def test_a_row_the_builder_refuses_is_rejected_alone_and_never_sent() -> None:
    client = FakeClient()
    rows = rows_frame([normalized_row("ipv4", 1), normalized_row("ipv4", 2, kind="asn"), normalized_row("ipv4", 3)])
    results = _sink(client, sourcesystem="src").upsert(rows)
    assert [r.status for r in results] == ["ok", "rejected", "ok"]
    assert results[1].attempts == 0
    assert "no STIX pattern" in (results[1].error or "")
    assert [len(objects) for _, objects in client.uploads] == [2]

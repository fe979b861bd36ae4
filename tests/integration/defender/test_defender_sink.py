"""DefenderSink upsert / retract / fetch against the Defender simulator: no duplicates, rejected vs failed, ownership,
read-back by the description tag, the tenant cap and acknowledged-but-lost writes."""

from __future__ import annotations

import pytest

from include.microsoft.defender import DefenderClient, DefenderError, DefenderSink
from include.microsoft.defender.payload import same_value
from tests.integration.defender.conftest import (
    CLIENT,
    OTHER_CLIENT,
    OTHER_SECRET,
    DefenderStack,
    ip_rows,
    public_ip,
)
from tests.unit.microsoft.graph_rows import normalized_row, rows_frame

pytestmark = pytest.mark.integration


def _statuses(results: list) -> list[tuple[str, str]]:
    return [(r.action, r.status) for r in results]


def test_600_rows_go_in_two_imports_and_a_rerun_creates_no_duplicates(stack: DefenderStack, sink: DefenderSink) -> None:
    rows = ip_rows(600)
    first = sink.upsert(rows)
    assert [r.external_id for r in first] == list(rows["external_id"])
    assert {r.status for r in first} == {"ok"}
    assert sorted(w.items for w in stack.defender.writes("/import")) == [100, 500]  # in flight together

    second = sink.upsert(rows)
    assert {r.status for r in second} == {"ok"}
    assert len(stack.defender.created_by(CLIENT)) == 600
    assert [r.target_id for r in second] == [r.target_id for r in first]


def test_a_changed_row_updates_the_same_indicator(stack: DefenderStack, sink: DefenderSink) -> None:
    sink.upsert(ip_rows(3, severity=1))
    sink.upsert(ip_rows(3, severity=5))
    assert {i["severity"] for i in stack.ours().values()} == {"High"}
    assert len(stack.ours()) == 3


def test_an_item_refused_for_its_content_is_rejected_and_not_resent(stack: DefenderStack, sink: DefenderSink) -> None:
    bad = public_ip(2)
    stack.defender.fail_items(lambda i: i["indicatorValue"] == bad, reason="InvalidIpAddress: refused by policy.")
    results = sink.upsert(ip_rows(3))
    assert [r.status for r in results] == ["ok", "rejected", "ok"]
    assert results[1].attempts == 1
    assert "InvalidIpAddress" in (results[1].error or "")
    assert len(stack.defender.writes("/import")) == 1


def test_a_transient_item_failure_is_resent_and_then_succeeds(stack: DefenderStack, sink: DefenderSink) -> None:
    flaky = public_ip(1)
    stack.defender.fail_items(lambda i: i["indicatorValue"] == flaky, count=1)
    results = sink.upsert(ip_rows(3))
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert [r.attempts for r in results] == [2, 1, 1]
    assert [w.items for w in stack.defender.writes("/import")] == [3, 1]


def test_an_item_that_keeps_failing_transiently_is_failed_after_the_bounded_attempts(
    stack: DefenderStack, client: DefenderClient
) -> None:
    sink = DefenderSink(client, max_item_attempts=3)
    stack.defender.fail_items(lambda i: i["indicatorValue"] == public_ip(1))
    results = sink.upsert(ip_rows(2))
    assert [(r.status, r.attempts) for r in results] == [("failed", 3), ("ok", 1)]


def test_429_with_retry_after_is_retried_and_every_row_lands(stack: DefenderStack, sink: DefenderSink) -> None:
    stack.defender.inject(429, count=2, retry_after=5, path_contains="/import")
    results = sink.upsert(ip_rows(10))
    assert {r.status for r in results} == {"ok"}
    assert stack.clock.sleeps == [5.0, 5.0]
    assert len(stack.ours()) == 10


def test_an_outage_beyond_the_retries_raises_for_the_task_retry(stack: DefenderStack) -> None:
    sink = DefenderSink(stack.new_client(max_retries=1))
    stack.defender.inject(503, count=2)
    with pytest.raises(DefenderError):
        sink.upsert(ip_rows(2))


def test_a_whole_import_refused_with_400_is_split_until_the_refused_item_stands_alone(
    stack: DefenderStack, client: DefenderClient
) -> None:
    # The simulator refuses the next three requests, whatever they carry: one import at a time, so that "the next
    # three" are the whole batch, its first half and that half's first item.
    sink = DefenderSink(client, in_flight=1)
    stack.defender.inject(400, count=3, path_contains="/import")
    results = sink.upsert(ip_rows(4))
    assert [r.status for r in results] == ["rejected", "ok", "ok", "ok"]
    assert [w.items for w in stack.defender.writes("/import")] == [4, 2, 1, 1, 2]


def test_rows_defender_cannot_hold_are_rejected_without_a_request(stack: DefenderStack, sink: DefenderSink) -> None:
    rows = rows_frame(
        [
            normalized_row("email"),
            normalized_row("ipv4", 1, value="10.0.0.1"),
            normalized_row("ipv4", 2, value=public_ip(2)),
        ]
    )
    results = sink.upsert(rows)
    assert [(r.status, r.attempts) for r in results] == [("rejected", 0), ("rejected", 0), ("ok", 1)]
    assert results[0].error == "payload: not supported by defender: EmailAddress"
    assert results[1].error == "payload: not supported by defender: internal address"
    assert [w.items for w in stack.defender.writes("/import")] == [1]


def test_the_tenant_cap_is_reported_as_rejected(stack: DefenderStack, sink: DefenderSink) -> None:
    stack.defender.capacity = 5
    results = sink.upsert(ip_rows(7))
    assert [r.status for r in results] == ["ok"] * 5 + ["rejected"] * 2
    assert all(r.attempts == 1 for r in results)
    assert "limit" in (results[-1].error or "")


def test_fetch_finds_our_indicators_by_their_tag_from_a_fresh_process(
    stack: DefenderStack, client: DefenderClient
) -> None:
    rows = rows_frame(
        [
            normalized_row("ipv4", 1, value=public_ip(1)),
            normalized_row("host"),
            normalized_row("ipv6", value="2a02:c7f::1"),
            normalized_row("sha256"),
            normalized_row("url"),
        ]
    )
    DefenderSink(client).upsert(rows)
    fresh = DefenderSink(stack.new_client())  # nothing remembered: only the description tags can tell
    found = fresh.fetch([*rows["external_id"], "not-ours"])
    assert set(found) == set(rows["external_id"])
    for row in rows.to_dict("records"):
        sent, held = fresh.payload(row), found[row["external_id"]]
        assert all(same_value(f, sent.get(f), held.get(f)) for f in fresh.verify_fields), (sent, held)
    assert found[rows["external_id"][2]]["indicatorValue"] == "2a02:c7f:0:0:0:0:0:1"


def test_fetch_falls_back_to_the_remembered_key_when_a_tag_was_edited_away(
    stack: DefenderStack, sink: DefenderSink
) -> None:
    rows = ip_rows(2)
    sink.upsert(rows)
    for indicator in stack.defender.indicators.values():
        indicator["description"] = "edited by an analyst"
    assert set(sink.fetch(list(rows["external_id"]))) == set(rows["external_id"])
    assert DefenderSink(stack.new_client()).fetch(list(rows["external_id"])) == {}


def test_fetch_does_not_return_another_apps_indicator_even_with_readwrite_all(
    stack: DefenderStack, client: DefenderClient
) -> None:
    rows = ip_rows(1)
    DefenderSink(stack.new_client(OTHER_CLIENT, OTHER_SECRET)).upsert(rows)  # same tag, other app
    stack.defender.grant(CLIENT, "Ti.ReadWrite.All")
    assert DefenderSink(client).fetch(list(rows["external_id"])) == {}


def test_a_dropped_acknowledged_write_is_missing_from_fetch(stack: DefenderStack, sink: DefenderSink) -> None:
    lost = public_ip(2)
    stack.defender.drop_acknowledged(lambda i: i["indicatorValue"] == lost)
    rows = ip_rows(3)
    assert {r.status for r in sink.upsert(rows)} == {"ok"}
    found = sink.fetch(list(rows["external_id"]))
    assert set(found) == {rows["external_id"][0], rows["external_id"][2]}


def test_an_expired_indicator_is_gone_from_fetch(stack: DefenderStack, sink: DefenderSink) -> None:
    rows = ip_rows(2)
    sink.upsert(rows)
    stack.clock.now = rows["expiration"].max().timestamp() + 1
    assert sink.fetch(list(rows["external_id"])) == {}


def test_retract_deletes_ours_and_leaves_another_apps_indicator_with_the_same_value(
    stack: DefenderStack, sink: DefenderSink
) -> None:
    shared = ip_rows(1)
    other = DefenderSink(stack.new_client(OTHER_CLIENT, OTHER_SECRET))
    other.upsert(shared)
    rows = ip_rows(3)  # the first row has the other app's value
    upserted = sink.upsert(rows)
    assert [r.status for r in upserted] == ["rejected", "ok", "ok"]  # Ti.ReadWrite cannot touch theirs

    results = sink.retract(rows)
    assert _statuses(results) == [("retract", "ok")] * 3
    assert [r.attempts for r in results] == [0, 1, 1]
    assert stack.ours() == {}
    assert [i["indicatorValue"] for i in stack.defender.created_by(OTHER_CLIENT)] == [public_ip(1)]
    assert [w.items for w in stack.defender.writes("BatchDelete")] == [2]


def test_retract_with_readwrite_all_still_leaves_an_indicator_another_app_created(
    stack: DefenderStack, sink: DefenderSink
) -> None:
    shared = ip_rows(1)
    DefenderSink(stack.new_client(OTHER_CLIENT, OTHER_SECRET)).upsert(shared)
    stack.defender.grant(CLIENT, "Ti.ReadWrite.All")
    assert [r.status for r in sink.upsert(shared)] == ["ok"]  # updates theirs in place
    assert [r.attempts for r in sink.retract(shared)] == [0]
    assert len(stack.defender.created_by(OTHER_CLIENT)) == 1


def test_retract_of_rows_never_delivered_sends_nothing(stack: DefenderStack, sink: DefenderSink) -> None:
    results = sink.retract(rows_frame([normalized_row("email"), normalized_row("ipv4", 1, value=public_ip(1))]))
    assert [(r.status, r.attempts) for r in results] == [("ok", 0), ("ok", 0)]
    assert stack.defender.writes("BatchDelete") == []


def test_retract_after_a_404_lists_again_and_deletes_what_is_left(stack: DefenderStack, sink: DefenderSink) -> None:
    rows = ip_rows(3)
    sink.upsert(rows)
    stack.defender.inject(404, count=1, path_contains="BatchDelete")
    results = sink.retract(rows)
    assert [(r.status, r.attempts) for r in results] == [("ok", 2)] * 3
    assert stack.ours() == {}


def test_retract_is_done_when_batch_delete_answered_404_after_deleting_the_rest(
    stack: DefenderStack, sink: DefenderSink
) -> None:
    rows = ip_rows(3)
    sink.upsert(rows)
    stack.defender.batch_delete_partial = True
    stack.defender.inject(404, count=1, path_contains="BatchDelete", processed=True)
    results = sink.retract(rows)
    assert {r.status for r in results} == {"ok"}
    assert stack.ours() == {}
    assert len(stack.defender.writes("BatchDelete")) == 1


def test_retract_survives_an_indicator_deleted_between_listing_and_batch_delete(
    stack: DefenderStack, sink: DefenderSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = ip_rows(3)
    sink.upsert(rows)
    stale = sink.client.list_own()
    stack.defender.remove(lambda i: i["indicatorValue"] == public_ip(2))  # an analyst, or its expiry
    listings = [stale]
    real = sink.client.list_own
    monkeypatch.setattr(sink.client, "list_own", lambda: listings.pop() if listings else real())
    results = sink.retract(rows)
    assert {r.status for r in results} == {"ok"}
    assert stack.ours() == {}
    assert [(w.items, w.status) for w in stack.defender.writes("BatchDelete")] == [(3, 404), (2, 204)]

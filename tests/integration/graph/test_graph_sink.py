"""GraphSink upsert / retract / fetch against the Graph simulator: no duplicates, bounded retries, ownership."""

from __future__ import annotations

import pytest

from include.microsoft.graph import GraphClient, GraphError, GraphSink
from tests.integration.graph.conftest import CLIENT, OTHER_CLIENT, OTHER_SECRET, GraphStack
from tests.unit.microsoft.graph_rows import SAMPLES, ip_rows, normalized_row, rows_frame

pytestmark = pytest.mark.integration


def _store_by_external_id(stack: GraphStack) -> dict[str, list[dict[str, object]]]:
    grouped: dict[str, list[dict[str, object]]] = {}
    for item in stack.graph.owned_by(CLIENT):
        grouped.setdefault(str(item["externalId"]), []).append(item)
    return grouped


def _final_state(stack: GraphStack) -> dict[str, tuple[object, ...]]:
    keep = ("networkIPv4", "confidence", "severity", "tlpLevel", "isActive", "expirationDateTime", "description")
    return {e: tuple(items[0][k] for k in keep) for e, items in _store_by_external_id(stack).items()}


def test_a_rerun_of_250_rows_updates_them_all_and_creates_nothing_new(stack: GraphStack, sink: GraphSink) -> None:
    # The batches of one call are in flight together: they may reach Graph in any order.
    rows = ip_rows(250)
    first = sink.upsert(rows)
    assert [r.external_id for r in first] == list(rows["external_id"])
    assert {(r.action, r.status) for r in first} == {("create", "ok")}
    assert sorted(w.items for w in stack.graph.writes("submitTiIndicators")) == [50, 100, 100]

    second = sink.upsert(rows)
    assert {(r.action, r.status) for r in second} == {("update", "ok")}
    assert sorted(w.items for w in stack.graph.writes("submitTiIndicators")) == [50, 100, 100]
    assert sorted(w.items for w in stack.graph.writes("updateTiIndicators")) == [50, 100, 100]
    stored = _store_by_external_id(stack)
    assert len(stored) == 250
    assert all(len(items) == 1 for items in stored.values())
    assert {r.target_id for r in second} == {r.target_id for r in first}


def test_an_update_changes_the_editable_fields(stack: GraphStack, sink: GraphSink) -> None:
    sink.upsert(ip_rows(3))
    sink.upsert(ip_rows(3, confidence=10, tlp="red", false_positive=True))
    assert {items[0]["confidence"] for items in _store_by_external_id(stack).values()} == {10}
    assert {items[0]["tlpLevel"] for items in _store_by_external_id(stack).values()} == {"red"}
    assert {items[0]["isActive"] for items in _store_by_external_id(stack).values()} == {False}


def test_injected_429s_and_503s_end_in_the_same_final_state(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(120)
    sink.upsert(rows)
    sink.upsert(ip_rows(120, severity=2))
    clean = _final_state(stack)

    stack.graph.indicators.clear()
    stack.graph.owners.clear()
    stack.graph.inject(429, count=2, retry_after=2, path_contains="submitTiIndicators")
    stack.graph.inject(503, count=2, path_contains="updateTiIndicators")
    stack.graph.inject(503, count=1)
    results = sink.upsert(rows) + sink.upsert(ip_rows(120, severity=2))
    assert {r.status for r in results} == {"ok"}
    assert _final_state(stack) == clean
    assert {429, 503} <= {r.status for r in stack.graph.requests}
    assert 2.0 in stack.clock.sleeps


def test_a_submit_that_timed_out_after_committing_is_reconciled_not_duplicated(
    stack: GraphStack, sink: GraphSink
) -> None:
    stack.graph.inject(504, count=1, path_contains="submitTiIndicators", processed=True)
    results = sink.upsert(ip_rows(30))
    assert {(r.action, r.status) for r in results} == {("create", "ok")}
    assert len(stack.graph.writes("submitTiIndicators")) == 1
    stored = _store_by_external_id(stack)
    assert len(stored) == 30
    assert all(len(items) == 1 for items in stored.values())
    assert {r.target_id for r in results} == {items[0]["id"] for items in stored.values()}


def test_a_206_with_two_failing_items_retries_only_those_two(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(10)
    failing = set(rows["external_id"][[3, 7]])
    stack.graph.fail_items(lambda item: item["externalId"] in failing, count=2)
    results = sink.upsert(rows)
    assert {r.status for r in results} == {"ok"}
    assert [w.items for w in stack.graph.writes("submitTiIndicators")] == [10, 2]
    assert [w.status for w in stack.graph.writes("submitTiIndicators")] == [206, 200]
    assert {r.external_id: r.attempts for r in results if r.attempts > 1} == dict.fromkeys(failing, 2)
    assert len(_store_by_external_id(stack)) == 10


def test_an_item_failing_every_time_ends_failed_with_the_message(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(5)
    doomed = rows["external_id"][2]
    stack.graph.fail_items(lambda item: item["externalId"] == doomed, message="Provider rejected the indicator.")
    results = {r.external_id: r for r in sink.upsert(rows)}
    assert results[doomed].status == "failed"
    assert results[doomed].attempts == sink.max_item_attempts
    assert "Provider rejected the indicator." in (results[doomed].error or "")
    assert {r.status for e, r in results.items() if e != doomed} == {"ok"}
    assert len(stack.graph.writes("submitTiIndicators")) == sink.max_item_attempts
    assert doomed not in _store_by_external_id(stack)


def test_failing_updates_are_retried_by_item_too(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(4)
    sink.upsert(rows)
    target = rows["external_id"][0]
    stack.graph.fail_items(lambda item: item.get("externalId") == target, count=1)
    results = {r.external_id: r for r in sink.upsert(rows)}
    assert (results[target].action, results[target].status, results[target].attempts) == ("update", "ok", 2)
    assert [w.items for w in stack.graph.writes("updateTiIndicators")] == [4, 1]


def test_a_row_graph_cannot_take_is_rejected_alone(stack: GraphStack, sink: GraphSink) -> None:
    rows = rows_frame([normalized_row("ipv4", 1), normalized_row("ipv4", 2, expiration=None)])
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok", "rejected"]
    assert "expiration" in (results[1].error or "")


def test_duplicates_left_by_an_earlier_run_are_reported_and_only_the_oldest_updated(
    stack: GraphStack, sink: GraphSink, client: GraphClient
) -> None:
    rows = ip_rows(2)
    dup = rows["external_id"][0]
    client.submit([sink.payload(rows.to_dict("records")[0])])
    client.submit([sink.payload(rows.to_dict("records")[0])])
    oldest = client.find_by_external_ids([dup])[dup][0]["id"]
    results = {r.external_id: r for r in sink.upsert(rows)}
    assert (results[dup].action, results[dup].status, results[dup].target_id) == ("update", "ok", oldest)
    assert "1 duplicate(s)" in (results[dup].error or "")
    assert len(_store_by_external_id(stack)[dup]) == 2


def test_fetch_returns_what_was_sent_for_every_verify_field(stack: GraphStack, sink: GraphSink) -> None:
    rows = rows_frame([normalized_row(sample, 1) for sample in sorted(SAMPLES)])
    assert {r.status for r in sink.upsert(rows)} == {"ok"}
    fetched = sink.fetch([*rows["external_id"], "not-there"])
    assert "not-there" not in fetched
    for row in rows.to_dict("records"):
        sent = sink.payload(row)
        held = fetched[row["external_id"]]
        mismatched = [f for f in sink.verify_fields if not sink.same_value(f, sent.get(f), held.get(f))]
        assert mismatched == [], row["indicator_type"]


def test_fetch_notices_a_change_made_behind_our_back(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(1)
    sink.upsert(rows)
    next(iter(stack.graph.indicators.values()))["confidence"] = 1
    sent = sink.payload(rows.to_dict("records")[0])
    held = sink.fetch([rows["external_id"][0]])[rows["external_id"][0]]
    assert not sink.same_value("confidence", sent["confidence"], held["confidence"])


def test_retract_deletes_our_indicators_in_batches_of_100(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(150)
    sink.upsert(rows)
    results = sink.retract(rows)
    assert {(r.action, r.status) for r in results} == {("retract", "ok")}
    assert sorted(w.items for w in stack.graph.writes("deleteTiIndicatorsByExternalId")) == [50, 100]
    assert _store_by_external_id(stack) == {}


@pytest.mark.parametrize("processed", [False, True])
def test_a_delete_answer_that_does_not_say_what_it_deleted_is_settled_by_what_graph_still_holds(
    stack: GraphStack, sink: GraphSink, processed: bool
) -> None:
    rows = ip_rows(3)
    sink.upsert(rows)
    # a 2xx without one resultInfo per id: before or after Graph deleted them
    stack.graph.inject(204, count=1, path_contains="deleteTiIndicatorsByExternalId", processed=processed)
    results = sink.retract(rows)
    assert {(r.action, r.status) for r in results} == {("retract", "ok")}
    assert [r.attempts for r in results] == [1 if processed else 2] * 3
    assert _store_by_external_id(stack) == {}
    assert len(stack.graph.writes("deleteTiIndicatorsByExternalId")) == (1 if processed else 2)


def test_retracting_ids_we_never_loaded_sends_no_delete(stack: GraphStack, sink: GraphSink) -> None:
    results = sink.retract(ip_rows(3))
    assert [(r.status, r.attempts) for r in results] == [("ok", 0)] * 3
    assert stack.graph.writes("deleteTiIndicatorsByExternalId") == []


def test_another_app_can_neither_see_nor_retract_our_indicators(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(5)
    sink.upsert(rows)
    intruder = GraphSink(stack.new_client(OTHER_CLIENT, OTHER_SECRET))
    assert intruder.fetch(list(rows["external_id"])) == {}
    assert [r.attempts for r in intruder.retract(rows)] == [0] * 5
    assert len(_store_by_external_id(stack)) == 5
    assert stack.graph.owned_by(OTHER_CLIENT) == []


def test_graph_staying_down_raises_for_the_task_to_retry_and_the_rerun_is_clean(
    stack: GraphStack, sink: GraphSink
) -> None:
    rows = ip_rows(20)
    stack.graph.inject(503, count=100, path_contains="submitTiIndicators")
    with pytest.raises(GraphError) as raised:
        sink.upsert(rows)
    assert raised.value.transient
    stack.graph.clear_faults()
    assert {r.status for r in sink.upsert(rows)} == {"ok"}
    assert len(_store_by_external_id(stack)) == 20


def test_updates_with_a_remembered_graph_id_skip_the_lookup(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(150)
    created = {r.external_id: r.target_id for r in sink.upsert(rows)}
    before = len(stack.graph.requests)
    changed = rows.copy()
    changed["confidence"] = 11
    changed["action"] = "update"
    changed["target_id"] = [created[e] for e in changed["external_id"]]
    results = sink.upsert(changed)
    sent = stack.graph.requests[before:]
    assert all(r.status == "ok" and r.action == "update" for r in results)
    assert [r.method for r in sent] == ["POST", "POST"]
    assert all(r.path.endswith("updateTiIndicators") for r in sent)
    assert {i["confidence"] for i in stack.graph.owned_by(CLIENT)} == {11}


def test_a_remembered_id_deleted_out_of_band_is_recreated_not_lost(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(3)
    created = {r.external_id: r.target_id for r in sink.upsert(rows)}
    gone = rows.loc[0, "external_id"]
    stack.graph.indicators.pop(created[gone])
    changed = rows.copy()
    changed["action"] = "update"
    changed["target_id"] = [created[e] for e in changed["external_id"]]
    results = {r.external_id: r for r in sink.upsert(changed)}
    assert all(r.status == "ok" for r in results.values())
    assert sorted(i["externalId"] for i in stack.graph.owned_by(CLIENT)) == sorted(rows["external_id"])


def test_a_url_graph_refuses_for_its_content_is_rejected_at_once_and_the_rest_of_the_batch_loads(
    stack: GraphStack, sink: GraphSink
) -> None:
    long_url = "http://example.com/" + "a" * 2_100
    rows = rows_frame([normalized_row("url", 1), normalized_row("url", 2, value=long_url), normalized_row("url", 3)])
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok", "rejected", "ok"]
    assert "RFC 1738" in (results[1].error or "")
    assert results[1].attempts == 1  # a refusal of the content is never resent in the same run
    assert len(stack.graph.writes("submitTiIndicators")) == 1
    assert sorted(_store_by_external_id(stack)) == sorted([rows["external_id"][0], rows["external_id"][2]])


def test_a_per_item_server_error_is_retried_and_then_reported_failed_not_rejected(
    stack: GraphStack, sink: GraphSink
) -> None:
    rows = ip_rows(3)
    victim = rows["external_id"][1]
    stack.graph.fail_items(lambda item: item.get("externalId") == victim, count=None)
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].attempts == sink.max_item_attempts


def test_a_per_item_bad_request_is_rejected_without_a_retry(stack: GraphStack, sink: GraphSink) -> None:
    rows = ip_rows(3)
    victim = rows["external_id"][2]
    stack.graph.fail_items(
        lambda item: item.get("externalId") == victim,
        count=None,
        code="BadRequest",
        message="Invalid value for 'networkIPv4'.",
    )
    results = sink.upsert(rows)
    assert [(r.status, r.attempts) for r in results] == [("ok", 1), ("ok", 1), ("rejected", 1)]
    assert "Invalid value" in (results[2].error or "")


def test_a_per_item_refusal_without_an_error_element_is_rejected_without_a_retry(
    stack: GraphStack, sink: GraphSink
) -> None:
    rows = ip_rows(3)
    victim = rows["external_id"][0]
    stack.graph.fail_items(lambda item: item.get("externalId") == victim, count=None, code="")
    results = sink.upsert(rows)
    assert [(r.status, r.attempts) for r in results] == [("rejected", 1), ("ok", 1), ("ok", 1)]
    assert "Failed to create" in (results[0].error or "")
    assert len(stack.graph.writes("submitTiIndicators")) == 1


def test_a_forbidden_answer_fails_at_once_as_a_permanent_error(stack: GraphStack, sink: GraphSink) -> None:
    from include.pipeline.errors import PermanentError

    stack.graph.inject(403, count=10)
    with pytest.raises(PermanentError, match="403"):
        sink.upsert(ip_rows(2))
    assert len(stack.graph.requests) <= 2  # no retry loop on a refusal no retry can change


def _gets(stack: GraphStack) -> int:
    return sum(1 for r in stack.graph.requests if r.method == "GET")


def test_reading_back_many_ids_lists_owned_pages_when_that_costs_fewer_requests(
    stack: GraphStack, sink: GraphSink
) -> None:
    rows = ip_rows(450)
    sink.upsert(rows)
    before = _gets(stack)
    found = sink.fetch(list(rows["external_id"]))
    assert set(found) == set(rows["external_id"])
    # 450 ids by look-up would be ~23 GETs (~20 ids a URL); one page of up to 1,000 holds all of them.
    assert _gets(stack) - before == 1


def test_an_empty_target_is_proven_by_one_listing_request(stack: GraphStack, sink: GraphSink) -> None:
    before = _gets(stack)
    assert sink.fetch(list(ip_rows(300)["external_id"])) == {}
    assert _gets(stack) - before == 1


def test_reading_back_a_few_ids_in_a_large_target_falls_back_to_look_ups(
    stack: GraphStack, sink: GraphSink, client: GraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import include.microsoft.graph.client as graph_module

    monkeypatch.setattr(graph_module, "MAX_PAGE", 10)  # a large target, scaled down: 60 owned = 6 pages
    rows = ip_rows(60)
    sink.upsert(rows)
    wanted = list(rows["external_id"][:45])
    lookups = sum(1 for _ in client._filter_urls(wanted))
    before = _gets(stack)
    found = client.find_many(wanted)
    assert set(found) == set(wanted)
    assert _gets(stack) - before <= 2 * lookups  # never more than twice the cheaper way


def test_writes_wait_for_their_answers_together_and_each_indicator_is_created_once(stack: GraphStack) -> None:
    # A real submit of 100 takes Graph a while: the next batches go while the first waits for its answer. The
    # simulator holds the first submit until a second is in progress (one at a time, it would wait 30 s for nothing).
    slowness = stack.server.slow(30, lambda request: request.path.endswith("submitTiIndicators"), together=2)
    sink = GraphSink(stack.new_client(), in_flight=4)
    rows = ip_rows(1000)
    results = sink.upsert(rows, never_sent=frozenset(rows["external_id"]))
    assert 2 <= slowness.peak <= 4
    assert {(r.action, r.status) for r in results} == {("create", "ok")}
    assert sorted(w.items for w in stack.graph.writes("submitTiIndicators")) == [100] * 10
    stored = _store_by_external_id(stack)
    assert set(stored) == set(rows["external_id"])
    assert all(len(items) == 1 for items in stored.values())
    assert {r.external_id: r.target_id for r in results} == {e: items[0]["id"] for e, items in stored.items()}


def test_one_write_in_flight_sends_the_batches_one_after_another(stack: GraphStack) -> None:
    slowness = stack.server.slow(0.05, lambda request: request.path.endswith("submitTiIndicators"))
    sink = GraphSink(stack.new_client(), in_flight=1)
    rows = ip_rows(300)
    sink.upsert(rows, never_sent=frozenset(rows["external_id"]))
    assert slowness.peak == 1
    assert len(_store_by_external_id(stack)) == 300


def test_a_submit_that_fails_while_others_are_in_flight_leaves_no_duplicate_on_the_rerun(stack: GraphStack) -> None:
    # One batch meets an outage (no retries left) while others are being answered: the call raises for the task
    # retry, and the rerun, which looks every id up, adopts what the others created and duplicates nothing.
    stack.server.slow(0.2, lambda request: request.path.endswith("submitTiIndicators"))
    stack.graph.inject(503, count=1, path_contains="submitTiIndicators")
    sink = GraphSink(stack.new_client(max_retries=0), in_flight=4)
    rows = ip_rows(800)
    with pytest.raises(GraphError):
        sink.upsert(rows, never_sent=frozenset(rows["external_id"]))
    assert 0 < len(stack.graph.owned_by(CLIENT)) < 800
    results = sink.upsert(rows)
    assert {r.status for r in results} == {"ok"}
    stored = _store_by_external_id(stack)
    assert set(stored) == set(rows["external_id"])
    assert all(len(items) == 1 for items in stored.values())

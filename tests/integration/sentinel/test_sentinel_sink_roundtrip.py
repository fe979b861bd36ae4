"""SentinelSink against the simulated upload API and management plane over loopback HTTPS."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import stix2

from include.microsoft.sentinel import SentinelClient, SentinelError, SentinelSink
from include.microsoft.sentinel.stix import stix_id
from include.transport.limiter import SharedRateLimiter
from tests.integration.sentinel.sentinel_stack import (
    CLIENT,
    OTHER_CLIENT,
    OTHER_SECRET,
    SECRET,
    SOURCE,
    SentinelStack,
    make_rows,
)

pytestmark = pytest.mark.integration


def test_an_upload_round_trips_through_the_query_api(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = pd.concat([make_rows(3, kind=kind) for kind in ("ip", "host", "url", "email", "hash")], ignore_index=True)
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok"] * len(rows)
    fetched = sink.fetch(list(rows["external_id"]))
    assert set(fetched) == set(rows["external_id"])
    for record in rows.to_dict("records"):
        sent = sink.payload(record)
        stored = fetched[record["external_id"]]
        assert {f: stored.get(f) for f in sink.verify_fields} == {f: sent.get(f) for f in sink.verify_fields}


def test_every_stored_object_is_valid_stix_2_1(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = pd.concat([make_rows(2, kind=kind) for kind in ("ip", "host", "url", "email", "hash")], ignore_index=True)
    sink.upsert(rows)
    stored = stack.objects()
    assert len(stored) == len(rows)
    for obj in stored.values():
        stix2.parse(obj, allow_custom=False)


def test_two_hundred_fifty_rows_cost_three_requests(stack: SentinelStack, sink: SentinelSink) -> None:
    sink.upsert(make_rows(250))
    # Sent together (several in flight), so they may arrive in any order.
    assert sorted((r.status, r.object_count) for r in stack.sentinel.upload_requests) == [
        (200, 50),
        (200, 100),
        (200, 100),
    ]
    assert sink.client.requests_sent == 3


def test_a_rerun_of_the_same_rows_creates_no_new_objects(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = make_rows(120)
    sink.upsert(rows)
    before = dict(stack.objects())
    sink.upsert(rows)
    assert stack.objects() == before
    # Sentinel's tables are append-only: the rerun is not free, which is why the pipeline diffs before loading.
    assert len(stack.sentinel.rows) == 240


def test_an_older_version_never_replaces_a_newer_one(stack: SentinelStack, sink: SentinelSink) -> None:
    newer = make_rows(1, confidence=90, last_modified=pd.Timestamp("2026-03-05T00:00:00Z"))
    older = make_rows(1, confidence=10, last_modified=pd.Timestamp("2026-03-04T00:00:00Z"))
    sink.upsert(newer)
    sink.upsert(older)
    [stored] = stack.objects().values()
    assert stored["confidence"] == 90


@pytest.mark.parametrize("send_retry_after", [True, False], ids=["with-retry-after", "body-text-only"])
def test_throttled_uploads_end_in_the_same_state_with_or_without_retry_after(
    stack: SentinelStack, send_retry_after: bool
) -> None:
    stack.sentinel.rate_limit_per_minute = 2
    stack.sentinel.send_retry_after = send_retry_after
    client = stack.new_client(max_retries=10)
    sink = SentinelSink(client, SOURCE, batch_size=10)
    rows = make_rows(50)
    results = sink.upsert(rows)
    assert stack.sentinel.throttled > 0
    assert [r.status for r in results] == ["ok"] * 50
    assert stack.objects() == {stix_id(r["external_id"]): sink.payload(r) for r in rows.to_dict("records")}
    # Every wait came from the server's hint (whole seconds), not from a blind back-off.
    assert stack.clock.sleeps
    assert all(s >= 1 and s == int(s) for s in stack.clock.sleeps)


def test_a_record_rejected_once_is_retried_and_lands(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = make_rows(5)
    flaky = stix_id(rows["external_id"][3])
    stack.sentinel.fail_records(lambda obj: obj["id"] == flaky, count=1)
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok"] * 5
    assert results[3].attempts == 2
    assert flaky in stack.objects()


def test_a_record_rejected_twice_is_reported_rejected_with_sentinels_message(
    stack: SentinelStack, sink: SentinelSink
) -> None:
    rows = make_rows(5)
    bad = stix_id(rows["external_id"][1])
    stack.sentinel.fail_records(lambda obj: obj["id"] == bad, count=5, message="Error for Property=id: Nope.")
    results = sink.upsert(rows)
    assert [r.status for r in results] == ["ok", "rejected", "ok", "ok", "ok"]
    assert results[1].error == "Error for Property=id: Nope."
    assert results[1].attempts == 2
    assert bad not in stack.objects()
    assert len(stack.objects()) == 4
    assert [r.object_count for r in stack.sentinel.upload_requests] == [5, 1]


def test_retract_revokes_the_stored_objects(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = make_rows(3)
    sink.upsert(rows)
    results = sink.retract(rows.iloc[:2])
    assert [(r.action, r.status) for r in results] == [("retract", "ok")] * 2
    fetched = sink.fetch(list(rows["external_id"]))
    assert [fetched[e]["revoked"] for e in rows["external_id"]] == [True, True, False]


def test_server_errors_are_retried_until_they_clear(stack: SentinelStack, sink: SentinelSink) -> None:
    stack.sentinel.inject(503, 2)
    results = sink.upsert(make_rows(3))
    assert [r.status for r in results] == ["ok"] * 3
    assert [r.status for r in stack.sentinel.upload_requests] == [503, 503, 200]
    assert stack.clock.sleeps == [1.0, 2.0]


def test_an_outage_longer_than_the_retries_fails_the_task(stack: SentinelStack) -> None:
    stack.sentinel.inject(500, 10)
    sink = SentinelSink(stack.new_client(max_retries=2), SOURCE)
    with pytest.raises(SentinelError) as caught:
        sink.upsert(make_rows(2))
    assert caught.value.status == 500
    assert stack.objects() == {}


def test_an_unknown_workspace_fails_loudly(stack: SentinelStack) -> None:
    sink = SentinelSink(stack.new_client(workspace="00000000-0000-0000-0000-000000000000"), SOURCE)
    with pytest.raises(SentinelError) as caught:
        sink.upsert(make_rows(1))
    assert caught.value.status == 404


def test_a_graph_token_is_refused_by_the_upload_api(stack: SentinelStack) -> None:
    from include.microsoft.auth import GRAPH_SCOPE

    client = stack.new_client(token_provider=stack.provider(scope=GRAPH_SCOPE))
    with pytest.raises(SentinelError) as caught:
        client.upload(SOURCE, [SentinelSink(client, SOURCE).payload(make_rows(1).iloc[0])])
    assert caught.value.status == 401


class RenewingProvider:
    """A token source that can drop its cached token (what ``invalidate`` means to the client)."""

    def __init__(self, stack: SentinelStack) -> None:
        self.stack = stack
        self.inner = stack.provider()
        self.renewals = 0

    def token(self) -> str:
        return self.inner.token()

    def invalidate(self) -> None:
        self.renewals += 1
        self.inner = self.stack.provider()


def test_a_revoked_token_is_renewed_once_and_the_upload_goes_through(stack: SentinelStack) -> None:
    provider = RenewingProvider(stack)
    client = stack.new_client(token_provider=provider)
    sink = SentinelSink(client, SOURCE)
    sink.upsert(make_rows(1))
    stack.login.tokens.clear()  # every issued token is now unknown to the service
    results = sink.upsert(make_rows(1, start=1))
    assert results[0].status == "ok"
    assert provider.renewals == 1
    assert len(stack.objects()) == 2


def test_a_query_pages_through_next_links(stack: SentinelStack, sink: SentinelSink) -> None:
    rows = make_rows(23)
    sink.upsert(rows)
    client = stack.new_client(management=stack.management(page_size=5))
    found = client.query([stix_id(e) for e in rows["external_id"]], SOURCE)
    assert len(found) == 23
    queries = [r for r in stack.sentinel.requests if r.path.endswith("/query")]
    assert [r.method for r in queries] == ["POST", "GET", "GET", "GET", "GET"]


def test_fetch_only_sees_its_own_sourcesystem(stack: SentinelStack, client: SentinelClient) -> None:
    rows = make_rows(2)
    SentinelSink(client, "ThreatConnect-Someone Else").upsert(rows)
    assert SentinelSink(client, SOURCE).fetch(list(rows["external_id"])) == {}


def test_two_concurrent_uploaders_sharing_one_limiter_file_stay_within_one_budget(stack: SentinelStack) -> None:
    # Real time: both uploaders share one identity and one limiter file, as two mapped load tasks on one worker
    # would. What is checked is the limiter's own admissions (the times it decided on, read from its clock), so a
    # slow machine cannot make the test fail; the simulator's 429s are absorbed by the client's retries.
    stack.sentinel.clock = time.monotonic
    stack.sentinel.rate_limit_per_minute = 20
    stack.sentinel.rate_window_seconds = 2.0
    admitted: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def clock() -> float:
        local.last = time.time()
        return local.last

    def uploader() -> SentinelSink:
        limiter = SharedRateLimiter(stack.tmp_path / "shared.json", 18, 2.0, clock=clock)
        acquire = limiter.acquire

        def recording_acquire() -> float:
            waited = acquire()
            with lock:
                admitted.append(local.last)  # acquire() returns right after the admitting clock read
            return waited

        limiter.acquire = recording_acquire  # type: ignore[method-assign]
        return SentinelSink(stack.new_client(limiter=limiter, sleep=time.sleep), SOURCE, batch_size=1)

    sinks = [uploader(), uploader()]
    batches = [make_rows(20, start=0), make_rows(20, start=100)]
    errors: list[BaseException] = []

    def run(sink: SentinelSink, rows: pd.DataFrame) -> None:
        try:
            sink.upsert(rows)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(sinks, batches, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(stack.objects()) == 40
    times = sorted(admitted)
    assert len(times) >= 40
    assert max(sum(1 for u in times if t - 2.0 < u <= t) for t in times) <= 18
    # 40 admissions at 18 per 2 s need at least two full windows after the first: the budget was binding.
    assert times[-1] - times[0] >= 4.0


def test_different_identities_have_separate_server_budgets(stack: SentinelStack) -> None:
    stack.sentinel.rate_limit_per_minute = 1
    first = SentinelSink(stack.new_client(CLIENT, SECRET, max_retries=0), SOURCE)
    second = SentinelSink(stack.new_client(OTHER_CLIENT, OTHER_SECRET, max_retries=0), SOURCE)
    first.upsert(make_rows(1))
    second.upsert(make_rows(1, start=1))
    with pytest.raises(SentinelError) as caught:
        first.upsert(make_rows(1, start=2))
    assert caught.value.status == 429

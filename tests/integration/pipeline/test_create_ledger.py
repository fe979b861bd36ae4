"""Against the Graph simulator, which (like Graph) creates a duplicate on a second submit of an ``externalId``: a
first load into an empty Graph looks nothing up beyond one listing request, yet an attempt killed after sending, or
a new snapshot store beside a Graph that already holds our indicators, never leads to a duplicate. Duplicates and
request counts are judged by the simulator's own store and log."""

from __future__ import annotations

from collections import Counter

import pytest

from include.microsoft.auth import GRAPH_SCOPE, TokenProvider
from include.microsoft.graph import GraphClient, GraphSink
from include.microsoft.graph.payload import build_payload
from include.pipeline import delivery, intents
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from simulators.dataset import generate
from simulators.stack import CLIENT_ID, OWNER, TC_ACCESS_ID, TENANT_ID, start_stack
from tests.integration.pipeline.delivery_world import END, START, graph_gets, policy, prepare

pytestmark = pytest.mark.integration

TYPES = ("Host", "URL")
RUN = "scheduled__2026-06-02"


@pytest.fixture
def world(tmp_path, monkeypatch):
    indicators = generate(seed=21, count=1200, owner=OWNER, start=START, end=END, types=TYPES)
    stack = start_stack(tmp_path, indicators)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.tls.ca_file))
    tc = ThreatConnectClient(f"{stack.tc_server.base_url}/api", TC_ACCESS_ID, stack.tc_secret, owner=OWNER)
    tokens = TokenProvider(
        TENANT_ID, CLIENT_ID, stack.client_secret, GRAPH_SCOPE, authority_host=stack.ms_server.base_url
    )
    sink = GraphSink(GraphClient(stack.ms_server.base_url, tokens))
    yield stack, tc, sink, tmp_path
    stack.stop()


def _prepared(tc: ThreatConnectClient, root) -> SnapshotStore:
    store = SnapshotStore(str(root))
    prepare(store, tc, RUN, TYPES)
    return store


def _has_no_ledger(store: SnapshotStore) -> bool:
    return store.read_part(intents.INTENT, intents.LEDGER_TYPE, intents.LEDGER_RUN, "graph") is None


def _held(stack) -> Counter[str]:
    return Counter(i["externalId"] for i in stack.graph.owned_by(CLIENT_ID))


def test_a_first_load_into_an_empty_graph_costs_one_listing_request_and_creates_each_indicator_once(world) -> None:
    stack, tc, sink, root = world
    store = _prepared(tc, root / "data")
    reports = {kind: delivery.load(sink, store, RUN, kind, policy(kind)) for kind in TYPES}
    assert graph_gets(stack) == 1  # the ledger's first listing: Graph holds nothing of ours
    held = _held(stack)
    assert sum(r["created"] for r in reports.values()) == len(held) > 1000
    assert set(held.values()) == {1}


def test_ids_sent_by_an_attempt_killed_before_it_recorded_anything_are_looked_up_and_not_duplicated(world) -> None:
    stack, tc, sink, root = world
    store = _prepared(tc, root / "data")
    rows = store.read("deduped", "Host", RUN).to_pandas().head(150)
    rows["indicator_type"] = "Host"
    # The killed attempt: it wrote its ids down, submitted the first 100, and died before writing `loaded`.
    guard = intents.CreateGuard.open(store, "Host", "graph", RUN, sink.listing)
    guard.record(list(rows["external_id"]))
    killed = list(rows.head(100)["external_id"])
    sink.client.submit([build_payload(r) for r in rows.head(100).to_dict("records")])
    delivery.load(sink, store, RUN, "Host", policy("Host"))
    held = _held(stack)
    assert set(held.values()) == {1}  # the 100 were found by look-up and updated, not submitted again
    loaded = store.read("loaded", "Host", RUN).to_pandas()
    assert set(held) == set(loaded[loaded["status"] == "ok"]["external_id"]) | set(killed)


def test_a_new_snapshot_store_beside_a_graph_holding_our_indicators_creates_no_duplicate(world) -> None:
    stack, tc, sink, root = world
    first = _prepared(tc, root / "data")
    for kind in TYPES:
        delivery.load(sink, first, RUN, kind, policy(kind))
    before = _held(stack)
    lost = _prepared(tc, root / "new-data")  # the old store is gone; the same app, the same Graph
    reports = {kind: delivery.load(sink, lost, RUN, kind, policy(kind)) for kind in TYPES}
    after = _held(stack)
    assert after == before
    assert set(after.values()) == {1}
    assert all(r["failed"] == 0 for r in reports.values())
    assert _has_no_ledger(lost)


def test_a_rerun_that_creates_nothing_lists_nothing_to_start_a_ledger(world) -> None:
    stack, tc, sink, root = world
    store = _prepared(tc, root / "data")
    for kind in TYPES:
        delivery.load(sink, store, RUN, kind, policy(kind))
    store.fs.rm(store.partition_dir(intents.INTENT, intents.LEDGER_TYPE, intents.LEDGER_RUN), recursive=True)
    rerun = "manual__2026-06-02-rerun"
    prepare(store, tc, rerun, TYPES)
    before = graph_gets(stack)
    reports = [delivery.load(sink, store, rerun, kind, policy(kind)) for kind in TYPES]
    assert [r["sent"] for r in reports] == [0, 0]
    # what the target holds, read once for both types to plan; no listing to prove the store complete
    assert graph_gets(stack) - before == -(-len(_held(stack)) // 1000)
    assert _has_no_ledger(store)

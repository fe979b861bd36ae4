"""Against the Graph simulator: the types of one run verify against one listing of what the app owns, a rerun of
the interval plans every type against one listing and still repairs what was removed, and nothing is duplicated.
Request counts are judged by the simulator's own log and store, not by the client."""

from __future__ import annotations

import math

import pytest

from include.microsoft.auth import GRAPH_SCOPE, TokenProvider
from include.microsoft.defender import DEFENDER_SCOPE, DefenderClient, DefenderSink
from include.microsoft.graph import GraphClient, GraphSink
from include.pipeline import delivery
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from simulators.dataset import generate
from simulators.stack import CLIENT_ID, OWNER, TC_ACCESS_ID, TENANT_ID, start_stack
from tests.integration.pipeline.delivery_world import END, START, graph_gets, policy, prepare

pytestmark = pytest.mark.integration

TYPES = ("Host", "URL")
FIRST, RERUN = "scheduled__2026-06-02", "manual__2026-06-02-rerun"


@pytest.fixture
def world(tmp_path, monkeypatch):
    indicators = generate(seed=12, count=3000, owner=OWNER, start=START, end=END, types=TYPES)
    stack = start_stack(tmp_path, indicators)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.tls.ca_file))
    store = SnapshotStore(str(tmp_path / "data"))
    tc = ThreatConnectClient(f"{stack.tc_server.base_url}/api", TC_ACCESS_ID, stack.tc_secret, owner=OWNER)
    tokens = TokenProvider(
        TENANT_ID, CLIENT_ID, stack.client_secret, GRAPH_SCOPE, authority_host=stack.ms_server.base_url
    )
    sink = GraphSink(GraphClient(stack.ms_server.base_url, tokens))
    yield stack, store, tc, sink
    stack.stop()


def test_a_run_verifies_every_type_against_one_listing_and_a_rerun_plans_against_one_and_heals(world) -> None:
    stack, store, tc, sink = world
    prepare(store, tc, FIRST, TYPES)
    loads = {kind: delivery.load(sink, store, FIRST, kind, policy(kind)) for kind in TYPES}
    owned = len(stack.graph.owned_by(CLIENT_ID))
    assert owned == sum(r["created"] for r in loads.values())
    assert owned > 2000  # enough that look-ups (about 20 ids a GET) would cost far more than a listing

    before = graph_gets(stack)
    verified = {kind: delivery.verify(sink, store, FIRST, kind, previous_watermark=None) for kind in TYPES}
    assert graph_gets(stack) - before == math.ceil(owned / 1000)  # one listing for both types
    for kind in TYPES:
        assert verified[kind]["verified"] == loads[kind]["created"]
        assert verified[kind]["missing"] == verified[kind]["different"] == 0

    # An analyst removes three Host indicators; the interval runs again under a new run id.
    removed = {i["externalId"] for i in stack.graph.owned_by(CLIENT_ID) if i.get("domainName")}
    removed = set(sorted(removed)[:3])
    assert stack.graph.remove(lambda i: i.get("externalId") in removed) == 3
    prepare(store, tc, RERUN, TYPES)
    before = graph_gets(stack)
    reloads = {kind: delivery.load(sink, store, RERUN, kind, policy(kind)) for kind in TYPES}
    planning_reads = graph_gets(stack) - before
    # one listing to plan both types, and the look-up before re-creating the three (a single GET)
    assert planning_reads == math.ceil((owned - 3) / 1000) + 1
    assert reloads["Host"]["healed"] == 3
    assert reloads["URL"]["sent"] == 0
    held = [i["externalId"] for i in stack.graph.owned_by(CLIENT_ID)]
    assert len(held) == owned
    assert len(set(held)) == owned  # nothing duplicated


def test_defender_verifies_every_type_against_one_listing_of_its_own_indicators(world) -> None:
    stack, store, tc, _ = world
    tokens = TokenProvider(
        TENANT_ID, CLIENT_ID, stack.client_secret, DEFENDER_SCOPE, authority_host=stack.ms_server.base_url
    )
    sink = DefenderSink(DefenderClient(stack.ms_server.base_url, tokens, client_id=CLIENT_ID))
    stack.defender.clock = START.timestamp  # Defender refuses an expiration in its past: its clock is the interval's
    prepare(store, tc, FIRST, TYPES)
    loads = {kind: delivery.load(sink, store, FIRST, kind, policy(kind)) for kind in TYPES}
    assert sum(r["created"] for r in loads.values()) == len(stack.defender.created_by(CLIENT_ID)) > 2000
    before = sum(1 for r in stack.defender.requests if r.method == "GET")
    verified = {kind: delivery.verify(sink, store, FIRST, kind, previous_watermark=None) for kind in TYPES}
    assert sum(1 for r in stack.defender.requests if r.method == "GET") - before == 1  # at most 10,000 a page
    for kind in TYPES:
        assert verified[kind]["verified"] == loads[kind]["created"]
        assert verified[kind]["missing"] == verified[kind]["different"] == 0

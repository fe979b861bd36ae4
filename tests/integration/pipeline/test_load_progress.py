"""A load against the Graph simulator says what its plan costs before writing, and how far it is while writing."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re

import pytest

from include.microsoft.auth import GRAPH_SCOPE, TokenProvider
from include.microsoft.graph import GraphClient, GraphSink
from include.pipeline import delivery, lifecycle, stages, watermarks
from include.pipeline.dedupe import winners
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from include.transport.limiter import SharedRateLimiter
from simulators.dataset import generate
from simulators.stack import CLIENT_ID, OWNER, TC_ACCESS_ID, TENANT_ID, start_stack

pytestmark = pytest.mark.integration

END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
START = END - dt.timedelta(days=1)
RUN = "scheduled__2026-06-02"


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    stack = start_stack(tmp_path, generate(seed=4, count=700, owner=OWNER, start=START, end=END, types=("Host",)))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.tls.ca_file))
    store = SnapshotStore(str(tmp_path / "data"))
    mapping = load_mapping("Host")
    client = ThreatConnectClient(f"{stack.tc_server.base_url}/api", TC_ACCESS_ID, stack.tc_secret, owner=OWNER)
    stages.extract(client, store, RUN, "Host", watermarks.Window(START, END, "test"))
    stages.normalize(store, RUN, "Host", lambda batch: normalize(batch, mapping))
    stages.dedupe(store, RUN, "Host", winners)
    yield stack, store, mapping, tmp_path
    stack.stop()


def test_the_load_logs_its_plan_cost_first_and_a_progress_line_per_ten_seconds(prepared, caplog) -> None:
    stack, store, mapping, tmp_path = prepared
    tokens = TokenProvider(
        TENANT_ID, CLIENT_ID, stack.client_secret, GRAPH_SCOPE, authority_host=stack.ms_server.base_url
    )
    # A budget of 12 requests a minute: a load step is 2 writes of 100 rows (10 s of the budget). The limiter's own
    # clock is the wall clock (it admits at once: 12 is more than the writes); the messages' clock is a fake one
    # that moves 10 s per reading, so every step is due a line whatever the machine's speed.
    # Not spread: spreading 120 over 600 s would make each write wait 5 s of real time for nothing this test checks.
    limiter = SharedRateLimiter(tmp_path / "budget.json", max_requests=120, per_seconds=600, spread=False)
    sink = GraphSink(GraphClient(stack.ms_server.base_url, tokens, limiter=limiter))
    policy = lifecycle.Policy(
        interval_start=START, interval_end=END, expiry_days=mapping.expiration.days_for, expiration=mapping.expiration
    )
    ticks = itertools.count(0, 10)
    with caplog.at_level(logging.INFO, logger=delivery.log.name):
        report = delivery.load(sink, store, RUN, "Host", policy, time_limit=30, clock=lambda: float(next(ticks)))
    created = report["created"]
    assert created > 300
    lines = [r.getMessage() for r in caplog.records if r.name == delivery.log.name]
    plan = [(i, r) for i, r in enumerate(caplog.records) if "plan cost" in r.getMessage()]
    assert len(plan) == 1
    index, record = plan[0]
    requests = -(-created // 100)
    assert f"graph: {created:,} writes = {requests:,} requests at 12/min" in record.getMessage()
    assert record.levelno == logging.WARNING
    assert "does NOT fit" in record.getMessage()
    progress = [m for m in lines if re.search(r"Host graph: [\d,]+ / [\d,]+ \(", m)]
    assert len(progress) == -(-created // 200)  # one per step of 200 rows
    assert progress[-1].startswith(f"Host graph: {created:,} / {created:,} (100%)")
    assert progress[-1].endswith("done")
    progressing = [i for i, r in enumerate(caplog.records) if re.search(r"Host graph: [\d,]+ / ", r.getMessage())]
    first_progress = progressing[0]
    assert index < first_progress  # the cost is said before the first write

"""The stages end to end (no Airflow) with the snapshot root as an fsspec URL, as multi-worker deployments use."""

from __future__ import annotations

import datetime as dt

import fsspec
import pytest

from include.microsoft.auth import GRAPH_SCOPE, TokenProvider
from include.microsoft.graph import GraphClient, GraphSink
from include.pipeline import lifecycle, stages, watermarks
from include.pipeline.dedupe import winners
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from simulators.dataset import generate
from simulators.stack import CLIENT_ID, OWNER, TC_ACCESS_ID, TENANT_ID, start_stack

pytestmark = pytest.mark.integration

END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
START = END - dt.timedelta(days=1)


@pytest.fixture
def stack(tmp_path, monkeypatch):
    started = start_stack(tmp_path, generate(seed=9, count=300, owner=OWNER, start=START, end=END, types=("Host",)))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(started.tls.ca_file))
    yield started
    started.stop()


def run_once(stack, root: str, run_id: str) -> dict:
    store = SnapshotStore(root)
    mapping = load_mapping("Host")
    client = ThreatConnectClient(f"{stack.tc_server.base_url}/api", TC_ACCESS_ID, stack.tc_secret, owner=OWNER)
    tokens = TokenProvider(
        TENANT_ID, CLIENT_ID, stack.client_secret, GRAPH_SCOPE, authority_host=stack.ms_server.base_url
    )
    sink = GraphSink(GraphClient(stack.ms_server.base_url, tokens))
    window = watermarks.Window(START, END, "test")
    stages.extract(client, store, run_id, "Host", window)
    stages.normalize(store, run_id, "Host", lambda batch: normalize(batch, mapping))
    stages.dedupe(store, run_id, "Host", winners)
    policy = lifecycle.Policy(
        interval_start=START, interval_end=END, expiry_days=mapping.expiration.days_for, expiration=mapping.expiration
    )
    loaded = stages.load(sink, store, run_id, "Host", policy)
    verified = stages.verify(sink, store, run_id, "Host", None)
    return {"load": loaded, "verify": verified}


def test_every_stage_reads_and_writes_its_snapshots_through_an_fsspec_url(stack) -> None:
    root = "memory://tc-sentinel-fsspec-test"
    first = run_once(stack, root, "scheduled__2026-06-02")
    fs = fsspec.filesystem("memory")
    stages_written = {p.rsplit("/", 1)[-1] for p in fs.ls("/tc-sentinel-fsspec-test", detail=False)}
    assert {"raw", "normalized", "rejected", "deduped", "plan", "loaded"} <= stages_written
    assert first["load"]["created"] == first["verify"]["verified"] > 200
    assert first["load"]["loaded_path"].startswith("memory://")
    second = run_once(stack, root, "scheduled__2026-06-02-rerun")
    assert second["load"]["sent"] == 0
    assert len(stack.target_external_ids("graph")) == first["load"]["created"]

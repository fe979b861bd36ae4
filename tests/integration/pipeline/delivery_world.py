"""What the delivery integration tests share: preparing a run's types from the ThreatConnect simulator, the load
policy of the interval, and counting the Graph simulator's reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from include.pipeline import lifecycle, stages, watermarks
from include.pipeline.dedupe import winners
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from simulators.stack import CLIENT_ID

END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
START = END - dt.timedelta(days=1)


def prepare(store: SnapshotStore, tc: ThreatConnectClient, run_id: str, types: Sequence[str]) -> None:
    """Extract, normalize and dedupe every type of the interval into ``store`` under ``run_id``."""
    for kind in types:
        mapping = load_mapping(kind)
        stages.extract(tc, store, run_id, kind, watermarks.Window(START, END, "test"))
        stages.normalize(store, run_id, kind, lambda batch, m=mapping: normalize(batch, m))
        stages.dedupe(store, run_id, kind, winners)


def policy(kind: str) -> lifecycle.Policy:
    """The interval's lifecycle policy with the type's expiration rules."""
    mapping = load_mapping(kind)
    return lifecycle.Policy(
        interval_start=START, interval_end=END, expiry_days=mapping.expiration.days_for, expiration=mapping.expiration
    )


def graph_gets(stack: Any) -> int:
    """Reads our app sent to the Graph simulator so far."""
    return sum(1 for r in stack.graph.requests if r.method == "GET" and r.client_id == CLIENT_ID)

"""Reconciliation's inventory is what ThreatConnect holds now, whatever the run's window (judged on the simulator)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc
import pytest

from include.pipeline import stages, watermarks
from include.pipeline.config import RunConfig, reconcile_due
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.client import ThreatConnectClient
from simulators.server import HttpsServer
from simulators.threatconnect import ThreatConnectService

START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 5, 15, tzinfo=dt.UTC)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_an_indicator_changed_after_the_window_is_in_the_inventory_and_so_no_orphan(
    version: str,
    tc_client_factory: Callable[..., ThreatConnectClient],
    tc_simulator: tuple[HttpsServer, ThreatConnectService],
    tmp_path: Any,
) -> None:
    _, service = tc_simulator
    hosts = sorted((r for r in service._records.values() if r["type"] == "Host" and r["active"]), key=lambda r: r["id"])
    changed = hosts[0]
    service.put({**changed, "confidence": 42, "lastModified": END + dt.timedelta(days=40)})  # changed since
    store = SnapshotStore(str(tmp_path))
    mapping = load_mapping("Host")
    # an old-dated run: its window ends long before the change
    window = watermarks.Window(START, START + dt.timedelta(days=1), "test")
    report = stages.extract(
        tc_client_factory(version), store, "run", "Host", window, lambda b: normalize(b, mapping), reconcile=True
    )
    inventory = store.read("inventory", "Host", "run")
    listed = dict(zip(inventory["external_id"].to_pylist(), inventory["live"].to_pylist(), strict=True))
    normalized, _ = normalize(
        next(tc_client_factory(version).iter_pages("Host", END, END + dt.timedelta(days=41))), mapping
    )
    changed_id = normalized.filter(pc.equal(normalized["tc_id"], changed["id"]))["external_id"][0].as_py()
    assert listed.get(changed_id) is True
    assert report["inventory"]["listed"] >= len(listed) > 400  # every valid Host, not only the window's


def test_a_backfill_never_reconciles_even_when_asked() -> None:
    config = RunConfig(data_root="/tmp", sink="graph", indicator_types=("Host",), reconcile=True)
    assert reconcile_due(config, 700_000, live=True)
    assert not reconcile_due(config, 700_000, live=False)

"""One expiry rule at normalize and at refresh: the mapping's days by rating, or ThreatConnect's own expiry."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from include.microsoft.graph import GraphSink
from include.pipeline import lifecycle
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.schema import LOADED_SCHEMA
from include.pipeline.snapshots import SnapshotStore
from tests.unit.pipeline.pipeline_rows import T0, raw_row, raw_table

ADDRESS = load_mapping("Address")  # include/mappings/address.yaml: 30 days, rating 4 -> 60, 5 -> 90
GRAPH = GraphSink(client=None)
THREATCONNECT_EXPIRES = T0 + dt.timedelta(days=3, hours=5)  # ThreatConnect's externalDateExpires
INTERVAL_END = T0 + dt.timedelta(days=2)  # the refresh run: both rows expire within its 3 days


def with_tc_expiry(use: bool):
    policy = dataclasses.replace(ADDRESS.expiration, use_threatconnect_expiry=use)
    return dataclasses.replace(ADDRESS, expiration=policy)


def delivered(tmp_path, mapping) -> pd.DataFrame:
    """Normalize two raw rows (one with ThreatConnect's expiry, one rated 4 without), deliver them, read back."""
    raw = raw_table(
        [
            raw_row(
                tc_id=1,
                summary="192.0.2.1",
                external_date_expires=THREATCONNECT_EXPIRES,
                last_modified=T0 - dt.timedelta(days=28),
            ),
            raw_row(tc_id=2, summary="192.0.2.2", rating=4.0, last_modified=T0 - dt.timedelta(days=58, hours=-1)),
        ]
    )
    rows = normalize(raw, mapping)[0].to_pandas()
    first = lifecycle.Policy(interval_start=T0 - dt.timedelta(days=60), interval_end=T0 - dt.timedelta(days=59))
    planned = lifecycle.plan(rows, pd.DataFrame(), GRAPH.payload, "graph", first, GRAPH.volatile_fields)
    writes = planned[planned["action"].isin(lifecycle.WRITE_ACTIONS)].copy()
    writes["status"], writes["target_id"], writes["attempts"], writes["error"] = "ok", None, 1, None
    store = SnapshotStore(str(tmp_path))
    store.write_table(
        "loaded", "Address", "run-1", pa.Table.from_pandas(writes, schema=LOADED_SCHEMA, preserve_index=False)
    )
    return lifecycle.delivered_state(store, "Address", "graph")


def refresh_plan(state: pd.DataFrame, mapping) -> dict[int, pd.Timestamp]:
    policy = lifecycle.Policy(
        interval_start=INTERVAL_END - dt.timedelta(days=1),
        interval_end=INTERVAL_END,
        refresh_within=dt.timedelta(days=3),
        expiry_days=mapping.expiration.days_for,
        expiration=mapping.expiration,
    )
    planned = lifecycle.plan(state.iloc[:0], state, GRAPH.payload, "graph", policy, GRAPH.volatile_fields)
    assert set(planned["action"]) <= {"refresh"}
    return dict(zip(planned["tc_id"], planned["expiration"], strict=True))


def test_refresh_leaves_a_threatconnect_expiry_standing_when_the_mapping_uses_it(tmp_path) -> None:
    mapping = with_tc_expiry(True)
    state = delivered(tmp_path, mapping)
    assert state.set_index("tc_id").loc[1, "expiration"] == pd.Timestamp(THREATCONNECT_EXPIRES)
    refreshed = refresh_plan(state, mapping)
    # ThreatConnect's date stands as it did at normalize; the rated row gets the 60 days of rating 4 again.
    assert refreshed == {2: pd.Timestamp(INTERVAL_END + dt.timedelta(days=60))}


def test_refresh_grants_the_mapping_days_when_threatconnect_expiry_is_not_used(tmp_path) -> None:
    mapping = with_tc_expiry(False)
    state = delivered(tmp_path, mapping)
    refreshed = refresh_plan(state, mapping)
    assert refreshed == {
        1: pd.Timestamp(INTERVAL_END + dt.timedelta(days=30)),
        2: pd.Timestamp(INTERVAL_END + dt.timedelta(days=60)),
    }


def test_an_explicit_expiration_policy_wins_over_the_days_callable(tmp_path) -> None:
    state = delivered(tmp_path, with_tc_expiry(True))
    policy = lifecycle.Policy(
        interval_start=INTERVAL_END - dt.timedelta(days=1),
        interval_end=INTERVAL_END,
        expiry_days=lambda severity: 7,
        expiration=with_tc_expiry(True).expiration,
    )
    planned = lifecycle.plan(state.iloc[:0], state, GRAPH.payload, "graph", policy, GRAPH.volatile_fields)
    assert planned["tc_id"].tolist() == [2]


@pytest.mark.parametrize("use", [True, False])
def test_a_refreshed_row_is_refreshed_again_by_the_days_of_its_severity(tmp_path, use) -> None:
    mapping = with_tc_expiry(use)
    state = delivered(tmp_path, mapping)
    state = state[state["tc_id"] == 2].copy()
    state["action"] = "refresh"
    state["expiration"] = pd.Timestamp(INTERVAL_END + dt.timedelta(days=1))
    assert refresh_plan(state, mapping) == {2: pd.Timestamp(INTERVAL_END + dt.timedelta(days=60))}

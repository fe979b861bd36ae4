"""Delivered state: what earlier runs left in one target for one type, read from their ``loaded`` partitions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.schema import NORMALIZED_SCHEMA, PLAN_SCHEMA
from include.pipeline.snapshots import SnapshotStore

#: The smallest version step: every write is sent with a version after the one the target holds.
ONE_MS = pd.Timedelta(milliseconds=1)
#: verify statuses that mean "the target does not hold what was written": such a write is not delivered
UNDELIVERED = ("missing", "different")
NORMALIZED_COLUMNS = [f.name for f in NORMALIZED_SCHEMA]


@dataclass
class Delivered:
    """What earlier runs left in one target for one type.

    Attributes:
        state: the latest delivered write per external id (see :func:`delivered_state`), indexed by external id.
        quarantine: ``(external id, content hash) -> the target's message`` for writes the target refused for
            their content; the same content is not sent again.
        unverified: external id -> why the latest write of it is not delivered (verify found it missing or
            different), for the plan's reason.
    """

    state: pd.DataFrame
    quarantine: dict[tuple[str, str], str] = field(default_factory=dict)
    unverified: dict[str, str] = field(default_factory=dict)


def _empty_state() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in [f.name for f in PLAN_SCHEMA]})


def delivered(store: SnapshotStore, indicator_type: str, sink: str, exclude_run: str | None = None) -> Delivered:
    """Read every earlier run's ``loaded`` (and ``verified``) partition of one type and sink once.

    A re-run of the same run id ignores its own earlier partition (``exclude_run``), so a retried load plans the
    same work again instead of believing it already happened. A successful write that the same run's verify found
    missing or different is not delivered: the state falls back to the earlier write, or to nothing.
    """
    runs = [r for r in store.runs("loaded", indicator_type) if r != exclude_run]
    frames = []
    quarantine: dict[tuple[str, str], str] = {}
    unverified: dict[str, str] = {}
    for run_id in runs:
        table = store.read("loaded", indicator_type, run_id)
        table = table.filter(pc.equal(table["sink"], sink))
        rejected = table.filter(pc.equal(table["status"], "rejected"))
        for external_id, digest, error in zip(
            rejected["external_id"].to_pylist(),
            rejected["content_hash"].to_pylist(),
            rejected["error"].to_pylist(),
            strict=True,
        ):
            if digest:
                quarantine[(external_id, digest)] = error or "rejected by the target"
        table = table.filter(pc.equal(table["status"], "ok"))
        bad = _undelivered(store, indicator_type, run_id, sink)
        if bad:
            keep = pc.invert(pc.is_in(table["external_id"], value_set=pa.array(list(bad), pa.string())))
            table = table.filter(keep)
            unverified.update({e: f"{why} in the target (verify of {run_id})" for e, why in bad.items()})
        if table.num_rows:
            frame = table.to_pandas()
            frame["indicator_type"] = indicator_type  # a partition column: only in the path
            frames.append(frame)
    if not frames:
        return Delivered(_empty_state(), quarantine, unverified)
    state = pd.concat(frames, ignore_index=True)
    state = state.sort_values(["external_id", "stix_modified"], kind="stable")
    state = state.drop_duplicates("external_id", keep="last").set_index("external_id", drop=False)
    return Delivered(state, quarantine, unverified)


def _undelivered(store: SnapshotStore, indicator_type: str, run_id: str, sink: str) -> dict[str, str]:
    """External ids whose write to ``sink`` in ``run_id`` verify found missing or different, with that finding."""
    if not store.exists("verified", indicator_type, run_id):
        return {}
    table = store.read("verified", indicator_type, run_id)
    if "sink" in table.column_names:
        table = table.filter(pc.equal(table["sink"], sink))
    bad = table.filter(pc.is_in(table["status"], value_set=pa.array(UNDELIVERED)))
    return dict(zip(bad["external_id"].to_pylist(), bad["status"].to_pylist(), strict=True))


def delivered_state(
    store: SnapshotStore, indicator_type: str, sink: str, exclude_run: str | None = None
) -> pd.DataFrame:
    """The latest successful (and not disproved by verify) write per external id, over earlier ``loaded`` partitions.

    See :func:`delivered` for the rules; this is its ``state``.
    """
    return delivered(store, indicator_type, sink, exclude_run).state


def is_live(state_row: pd.Series | dict[str, Any]) -> bool:
    """True when the target holds this indicator as live (its latest write was not a retraction)."""
    return state_row["action"] != "retract"


def expired(state_row: pd.Series | dict[str, Any], before: dt.datetime | pd.Timestamp | None) -> bool:
    """True when the indicator's expiration is at or before ``before`` (a target that removes expired indicators
    by itself, Defender, no longer holds it); never without ``before`` or an expiration."""
    expiration = state_row.get("expiration")
    if before is None or expiration is None or pd.isna(expiration):
        return False
    return bool(pd.Timestamp(expiration) <= pd.Timestamp(before))


def expiring(state: pd.DataFrame, written: pd.DataFrame, at: dt.datetime, within: dt.timedelta) -> int:
    """How many indicators are live after this run's successful writes and expire within ``within`` of ``at``."""
    untouched = state[~state["external_id"].isin(set(written["external_id"]))] if not state.empty else state
    frames = [f for f in (untouched, written) if not f.empty]
    if not frames:
        return 0
    after = pd.concat(frames, ignore_index=True)
    live = after[after["action"] != "retract"]
    horizon = pd.Timestamp(at + within)
    return int((pd.to_datetime(live["expiration"], utc=True) < horizon).sum())

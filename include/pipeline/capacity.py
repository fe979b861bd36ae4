"""Capacity of a target that holds a bounded number of indicators (Defender): what stays, by priority."""

from __future__ import annotations

from typing import Any

import pandas as pd

from include.pipeline import frames
from include.pipeline.delivered import NORMALIZED_COLUMNS, ONE_MS, expired, is_live


def _priority(row: dict[str, Any]) -> tuple[int, int, int, str]:
    """Sort key, best first: severity, then confidence, then the most recently modified (ids break ties)."""

    def number(value: Any) -> int:
        return -1 if value is None or pd.isna(value) else int(value)

    modified = row.get("last_modified")
    stamp = -1 if modified is None or pd.isna(modified) else int(pd.Timestamp(modified).value)
    return (-number(row.get("severity")), -number(row.get("confidence")), -stamp, str(row["external_id"]))


def held_count(state: pd.DataFrame, expired_before: Any = None) -> int:
    """How many of a type's delivered indicators the target holds: live, and (Defender deletes an indicator when
    its expiration passes) not expired at ``expired_before``, the run's notion of now (its interval's end)."""
    if state.empty:
        return 0
    live = state["action"] != "retract"
    if expired_before is not None:
        expiration = pd.to_datetime(state["expiration"], utc=True)
        live &= expiration.isna() | (expiration > pd.Timestamp(expired_before))
    return int(live.sum())


def apply_capacity(
    planned: pd.DataFrame,
    state: pd.DataFrame,
    capacity: int,
    others_live: int,
    sink: str,
    expired_before: Any = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep what the target holds of ours within ``capacity`` (every type together), by priority.

    When this type's live set after the plan does not fit in what the other types leave (``capacity -
    others_live``), the indicators are ranked by :func:`_priority` (severity, confidence, most recently modified):
    the best ones stay or are loaded, planned creates below the cut become ``skip: over <sink> capacity``, and live
    ones below the cut are retracted to make room (the retraction guard still applies to them).

    A delivered indicator whose expiration is at or before ``expired_before`` takes no room: the target removed it
    by itself (Defender deletes an indicator when its expiration passes).

    Returns:
        The adjusted plan and ``{"capacity", "used", "over_capacity"}`` (``used``: live after this run, all types).
    """
    retracting = set(planned.loc[planned["action"] == "retract", "external_id"])
    held_live = (
        []
        if state.empty
        else [
            r
            for r in frames.records(state)
            if is_live(r) and not expired(r, expired_before) and r["external_id"] not in retracting
        ]
    )
    rows_by_id = {r["external_id"]: r for r in held_live}
    for row in frames.records(planned):
        if row["action"] in ("create", "update", "refresh") or (
            row["action"] == "skip" and row["external_id"] in rows_by_id
        ):
            rows_by_id[row["external_id"]] = row
    room = max(capacity - others_live, 0)
    info = {"capacity": capacity, "used": others_live + len(rows_by_id), "over_capacity": 0}
    if len(rows_by_id) <= room:
        return planned, info
    ranked = sorted(rows_by_id.values(), key=_priority)
    cut = {r["external_id"] for r in ranked[room:]}
    reason = f"over {sink} capacity ({capacity:,} live, every type together): lower priority than those held"
    frame = planned.copy()
    held_ids = set(state.index) if not state.empty else set()
    extra: list[dict[str, Any]] = []
    for index, row in frame.iterrows():
        external_id = row["external_id"]
        if external_id not in cut:
            continue
        live_now = external_id in held_ids and is_live(state.loc[external_id])
        if row["action"] == "create" and not live_now:
            frame.at[index, "action"], frame.at[index, "reason"] = "skip", reason
        elif row["action"] in ("create", "update", "refresh", "skip"):
            held = state.loc[external_id]
            frame.at[index, "action"], frame.at[index, "reason"] = "retract", f"making room: {reason}"
            frame.at[index, "stix_modified"] = pd.Timestamp(held["stix_modified"]) + ONE_MS
            frame.at[index, "target_id"] = held["target_id"]
        cut.discard(external_id)
    for external_id in cut:  # live, and not in this run's plan at all
        held = state.loc[external_id]
        extra.append(
            {
                **{k: held[k] for k in NORMALIZED_COLUMNS},
                "target_id": held["target_id"],
                "action": "retract",
                "reason": f"making room: {reason}",
                "content_hash": held["content_hash"],
                "stix_modified": pd.Timestamp(held["stix_modified"]) + ONE_MS,
                "sink": sink,
            }
        )
    if extra:
        frame = pd.concat([frame, pd.DataFrame(extra, columns=frame.columns)], ignore_index=True)
    info["over_capacity"] = len(ranked) - room
    info["used"] = others_live + room
    return frame, info

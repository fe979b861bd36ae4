"""Indicator lifecycle: what to send this run (delta), what to retract, what to refresh, and the guard against
retracting half the world because ThreatConnect answered with nothing.

The delivered state is the log of every earlier ``loaded`` partition of one type and sink: for each external id the
latest successful write (by ``stix_modified``, the version). A run's plan compares its deduplicated indicators with
that state:

| ThreatConnect says                   | delivered state        | plan                                  |
|--------------------------------------|------------------------|---------------------------------------|
| active, content differs or new       | absent / retracted     | ``create``                            |
| active, content differs              | live                   | ``update``                            |
| active, same content                 | live                   | ``skip`` (unchanged: zero writes)     |
| older version than delivered         | any                    | ``skip`` (stale: a backfill of old data) |
| deleted, added before the delivered one | live                | ``skip`` (stale: an earlier indicator) |
| active, same content as a rejection  | quarantined            | ``skip`` (quarantined until it changes) |
| active, the target refuses the value | any                    | ``reject`` (never sent; the reason)   |
| active, verify found it missing      | not delivered          | ``create``/``update`` (heal)          |
| inactive, false positive or deleted  | live                   | ``retract``                           |
| inactive, false positive or deleted  | absent / retracted     | ``skip`` (nothing of ours to retract) |
| not in the full active set (reconcile) | live                 | ``retract`` (orphan)                  |
| (not in this run) expiring soon      | live                   | ``refresh`` (new expiration)          |

A deletion (ThreatConnect's deleted listing) is never stale by time: it is versioned by the window that reported
it, and every entry of that listing is a deletion that holds now, unless it deleted an earlier indicator with the
value: the listing's ``dateAdded`` (when the deleted one was added, or deleted: the docs do not say) is never before
the delivered one's when the delivered one is what was deleted, so one before it means the value was created again
since, and a backfill over the deletion must not retract the indicator that lives now (``skip``). Writes that
verify found missing or different in the target do not count as delivered, so the next run sends them again (it
heals). A write the target refused for its content (status ``rejected``) is quarantined: it is not sent again until
its content (the payload's hash) changes.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from include.pipeline import expiry, frames
from include.pipeline.capacity import apply_capacity as apply_capacity  # the stages' one entry point
from include.pipeline.delivered import NORMALIZED_COLUMNS, ONE_MS, Delivered, is_live
from include.pipeline.delivered import UNDELIVERED as UNDELIVERED
from include.pipeline.delivered import delivered as delivered
from include.pipeline.delivered import delivered_state as delivered_state
from include.pipeline.delivered import expiring as expiring
from include.pipeline.errors import NotSupported
from include.pipeline.mappings import ExpirationPolicy
from include.pipeline.ports import content_hash
from include.pipeline.schema import PLAN_SCHEMA

WRITE_ACTIONS = ("create", "update", "refresh", "retract")
PLAN_ACTIONS = (*WRITE_ACTIONS, "reject", "skip")
VERIFIED_SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string()),
        pa.field("action", pa.string()),
        pa.field("status", pa.string()),  # read back, acknowledged, missing, different
        pa.field("detail", pa.string()),  # what differed, or why the write counts as delivered
        pa.field("sink", pa.string()),  # the target
    ]
)


@dataclass(frozen=True)
class Policy:
    """Lifecycle settings of one run.

    Attributes:
        interval_start: the run's data interval start (retractions found now are versioned no earlier).
        interval_end: the run's data interval end: the run's notion of "now" (never the wall clock).
        refresh_within: delivered live indicators expiring before ``interval_end + refresh_within`` are re-sent.
        expiry_days: days of validity a refresh grants, by severity (the rounded threat rating), when the
            mapping's rule cannot tell (see :func:`include.pipeline.expiry.refreshed`).
        retraction_guard: the largest share of the delivered live set one run may retract.
        retraction_guard_min: below this many retractions the guard does not apply (small sets).
        allow_mass_retraction: let this run pass the guard (an explicit run param).
        expiration: the mapping's expiration policy, so that a refresh follows the rule normalize followed
            (``use_threatconnect_expiry``); None: refresh grants ``expiry_days`` alone.
    """

    interval_start: dt.datetime
    interval_end: dt.datetime
    refresh_within: dt.timedelta = dt.timedelta(days=3)
    expiry_days: Callable[[int | None], int] = lambda severity: 30
    retraction_guard: float = 0.2
    retraction_guard_min: int = 10
    allow_mass_retraction: bool = False
    expiration: ExpirationPolicy | None = None


@dataclass
class TargetView:
    """What the target holds for the delivered live ids that were read back, and how to compare.

    Attributes:
        read: the external ids that were looked for (ids outside it are not judged).
        compare: ``compare(held row, stored object or None)`` -> None when the target holds what the row says,
            else ``("missing", why)`` or ``("different", field, sent, held)`` (the verify stage's comparison).
        found: the stored objects by external id.
    """

    read: set[str]
    compare: Callable[[dict[str, Any], dict[str, Any] | None], tuple[Any, ...] | None]
    found: dict[str, dict[str, Any]] = field(default_factory=dict)

    def drift(self, held: pd.Series | dict[str, Any]) -> tuple[str, str] | None:
        """None when in sync (or not read); else ``("missing", why)`` or ``("different", why)``."""
        external_id = held["external_id"]
        if external_id not in self.read:
            return None
        finding = self.compare(dict(held), self.found.get(external_id))
        if finding is None:
            return None
        if finding[0] == "missing":
            return ("missing", "missing in the target")
        return ("different", f"different in the target ({finding[1]})")


def _retraction_reason(row: dict[str, Any]) -> str | None:
    if row.get("deleted"):
        return "deleted in ThreatConnect"
    if row.get("false_positive"):
        return "reported as a false positive"
    if not row.get("active", True):
        return "inactive in ThreatConnect"
    return None


def _earlier_incarnation(deletion: dict[str, Any], held: dict[str, Any]) -> bool:
    """A deletion of an indicator added before the delivered one (see the module's notes)? Without both dates, no."""
    deleted_added, held_added = deletion.get("date_added"), held.get("date_added")
    if deleted_added is None or held_added is None or pd.isna(deleted_added) or pd.isna(held_added):
        return False
    return bool(pd.Timestamp(deleted_added) < pd.Timestamp(held_added))


def _version(candidate: pd.Timestamp, previous: Any) -> pd.Timestamp:
    """The version to send: the change's own time, but always after the version the target already has."""
    if previous is None or pd.isna(previous):
        return candidate
    return max(candidate, pd.Timestamp(previous) + ONE_MS)


def plan(
    candidates: pd.DataFrame,
    state: pd.DataFrame | Delivered,
    payload: Callable[[dict[str, Any]], dict[str, Any]],
    sink: str,
    policy: Policy,
    volatile: Iterable[str] = (),
    inventory: set[str] | None = None,
    target: TargetView | None = None,
    expired_before: dt.datetime | None = None,
) -> pd.DataFrame:
    """Decide, per indicator, what this run does; returns rows in ``PLAN_SCHEMA`` column order.

    Args:
        candidates: the run's deduplicated rows (``NORMALIZED_SCHEMA`` columns).
        state: :func:`delivered` (or just its ``state``: :func:`delivered_state`).
        payload: the sink's payload builder (content hashes are computed over its output); a ``ValueError`` from
            it means the target cannot take the row (its documented limits), and the row is planned ``reject``.
        sink: the sink name.
        policy: the run's lifecycle settings.
        volatile: payload fields left out of the content hash (they change without a real change).
        inventory: when reconciling, the external ids ThreatConnect holds as live (active, not a false positive,
            not deleted); delivered live ids outside it are orphans and get retracted.
        target: what the target really holds for the delivered live ids that were read back: an indicator the
            log calls live but the target does not hold is created again, one it holds with other content is
            updated. Ids it did not read are planned from the log alone.
        expired_before: for a target that refuses past expirations (Defender), the run's notion of now: a row
            that expires before it is planned ``skip`` (the target would reject it, and removes it by itself).
    """
    history = state if isinstance(state, Delivered) else Delivered(state)
    state = history.state
    volatile = tuple(volatile)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    # The delivered state's rows as dicts, once: a pandas row per candidate (``state.loc``) cost a millisecond each.
    delivered_rows = dict(zip(state.index, frames.records(state), strict=True))
    for row in frames.records(candidates):
        seen.add(row["external_id"])
        held = delivered_rows.get(row["external_id"])
        why_retract = _retraction_reason(row)
        last_modified = pd.Timestamp(row["last_modified"])
        # A deletion is versioned by the listing that reported it; it always holds now (never stale by time).
        if held is not None and not row.get("deleted") and last_modified < pd.Timestamp(held["last_modified"]):
            rows.append({**row, "action": "skip", "reason": "stale: older than the delivered version"})
            continue
        if held is not None and row.get("deleted") and _earlier_incarnation(row, held):
            rows.append({**row, "action": "skip", "reason": "stale: deletion of an earlier indicator with this value"})
            continue
        if why_retract is not None:
            if held is not None and is_live(held):
                # Retract the object the target holds (same fields), not the retraction signal's sparse copy.
                version = _version(last_modified, held["stix_modified"])
                retracted = {
                    **{k: held[k] for k in NORMALIZED_COLUMNS},
                    "active": False,
                    "deleted": bool(row.get("deleted")),
                    "false_positive": bool(row.get("false_positive")),
                    "last_modified": last_modified,
                }
                rows.append(
                    {
                        **retracted,
                        "action": "retract",
                        "reason": why_retract,
                        "stix_modified": version,
                        "target_id": held["target_id"],
                    }
                )
            else:
                rows.append({**row, "action": "skip", "reason": f"{why_retract}; nothing live to retract"})
            continue
        version = _version(last_modified, None if held is None else held["stix_modified"])
        expiration = row.get("expiration")
        if (
            expired_before is not None
            and expiration is not None
            and not pd.isna(expiration)
            and (pd.Timestamp(expiration) <= pd.Timestamp(expired_before))
        ):
            rows.append(
                {
                    **row,
                    "action": "skip",
                    "reason": f"expired: {sink} refuses an expiration in the past (it removes expired ones)",
                }
            )
            continue
        try:
            digest = content_hash(payload({**row, "stix_modified": version}), volatile)
        except NotSupported as exc:
            # Never sent, never an error; something of ours already live there is withdrawn.
            if held is not None and is_live(held):
                rows.append(
                    {
                        **{k: held[k] for k in NORMALIZED_COLUMNS},
                        "action": "retract",
                        "reason": str(exc),
                        "stix_modified": version,
                        "target_id": held["target_id"],
                        "last_modified": last_modified,
                    }
                )
            else:
                rows.append({**row, "action": "skip", "reason": str(exc)})
            continue
        except (ValueError, TypeError, KeyError) as exc:
            rows.append({**row, "action": "reject", "reason": f"refused before sending: {sink}: {exc}"[:500]})
            continue
        drift = target.drift(held) if target is not None and held is not None and is_live(held) else None
        if drift is not None and drift[0] == "missing":
            rows.append(
                {
                    **row,
                    "action": "create",
                    "reason": f"heal: {drift[1]}",
                    "content_hash": digest,
                    "stix_modified": version,
                }
            )
            continue
        if held is not None and is_live(held) and held["content_hash"] == digest:
            if drift is not None:
                rows.append(
                    {
                        **row,
                        "action": "update",
                        "reason": f"heal: {drift[1]}",
                        "content_hash": digest,
                        "stix_modified": version,
                        "target_id": held["target_id"],
                    }
                )
                continue
            rows.append(
                {
                    **row,
                    "action": "skip",
                    "reason": "unchanged",
                    "content_hash": digest,
                    "stix_modified": held["stix_modified"],
                }
            )
            continue
        refused = history.quarantine.get((row["external_id"], digest))
        if refused is not None:
            rows.append(
                {
                    **row,
                    "action": "skip",
                    "content_hash": digest,
                    "reason": f"quarantined: rejected by {sink} until it changes: {refused}"[:500],
                }
            )
            continue
        heal = history.unverified.get(row["external_id"])
        if held is None or not is_live(held):
            reason = "new" if held is None else "re-activated in ThreatConnect"
            reason = f"heal: {heal}" if heal else reason
            rows.append({**row, "action": "create", "reason": reason, "content_hash": digest, "stix_modified": version})
        else:
            rows.append(
                {
                    **row,
                    "action": "update",
                    "reason": f"heal: {heal}" if heal else "changed",
                    "content_hash": digest,
                    "stix_modified": version,
                    "target_id": held["target_id"],
                }
            )
    rows.extend(_held_rows(state, seen, payload, policy, volatile, inventory, target))
    frame = pd.DataFrame(rows, columns=[f.name for f in PLAN_SCHEMA])
    frame["sink"] = sink
    return frame


def _held_rows(
    state: pd.DataFrame,
    seen: set[str],
    payload: Callable[[dict[str, Any]], dict[str, Any]],
    policy: Policy,
    volatile: tuple[str, ...],
    inventory: set[str] | None,
    target: TargetView | None = None,
) -> list[dict[str, Any]]:
    """Plans for delivered indicators this run did not see: orphans (when reconciling), drift the target shows
    (when it was read back: reconciliation reads the whole delivered live set) and refreshes."""
    rows: list[dict[str, Any]] = []
    floor = pd.Timestamp(policy.interval_start)
    horizon = pd.Timestamp(policy.interval_end + policy.refresh_within)
    for held in frames.records(state):
        if held["external_id"] in seen or not is_live(held):
            continue
        base = {**{k: held[k] for k in NORMALIZED_COLUMNS}, "target_id": held["target_id"]}
        version = max(pd.Timestamp(held["stix_modified"]) + ONE_MS, floor)
        drift = target.drift(held) if target is not None else None
        if inventory is not None and held["external_id"] not in inventory:
            rows.append(
                {
                    **base,
                    "active": False,
                    "action": "retract",
                    "stix_modified": version,
                    "reason": "orphan: no longer live in ThreatConnect (reconciliation)",
                }
            )
        elif drift is not None and pd.Timestamp(held["expiration"]) >= horizon:
            resent = {**base, "stix_modified": version}
            try:
                digest = content_hash(payload(resent), volatile)
            except (ValueError, TypeError, KeyError) as exc:
                rows.append({**resent, "action": "reject", "reason": f"refused before sending: {exc}"[:500]})
                continue
            rows.append(
                {
                    **resent,
                    "action": "create" if drift[0] == "missing" else "update",
                    "reason": f"heal: {drift[1]}",
                    "content_hash": digest,
                }
            )
        elif pd.Timestamp(held["expiration"]) < horizon:
            expiration = expiry.refreshed(held, policy.interval_end, policy.expiration, policy.expiry_days)
            if expiration is None:
                continue  # ThreatConnect's own expiry stands: nothing to refresh
            refreshed = {**base, "expiration": expiration, "stix_modified": version}
            try:
                digest = content_hash(payload(refreshed), volatile)
            except (ValueError, TypeError, KeyError) as exc:
                rows.append({**refreshed, "action": "reject", "reason": f"refused before sending: {exc}"[:500]})
                continue
            rows.append(
                {**refreshed, "action": "refresh", "reason": "still live, expiring soon", "content_hash": digest}
            )
    return rows


@dataclass(frozen=True)
class GuardTrip:
    """A run's retractions exceed the guard: how many, of how many delivered live, and how many were allowed."""

    retractions: int
    live: int
    allowed: int
    guard: float

    def describe(self, label: str) -> str:
        return (
            f"{label}: this run would retract {self.retractions} of {self.live} delivered live indicators, more than "
            f"the guard allows ({self.guard:.0%} = {self.allowed})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {"retractions": self.retractions, "live": self.live, "allowed": self.allowed, "guard": self.guard}


#: The plan reason of a retraction held back for a person's approval (the retraction guard tripped).
HELD = "held for approval"


def retraction_guard(planned: pd.DataFrame, state: pd.DataFrame, policy: Policy) -> GuardTrip | None:
    """Whether the run would retract more than the configured share of what is delivered and live.

    An outage, an expired API key answered as an empty list, or a wrong owner all look like mass deletion; a
    person confirms it (the run's approval gate, or the run param ``allow_mass_retraction``) before the target
    loses its indicators. Returns None when the retractions are within the guard (or explicitly allowed).
    """
    retractions = int((planned["action"] == "retract").sum())
    live = int((state["action"] != "retract").sum()) if not state.empty else 0
    if retractions < policy.retraction_guard_min or policy.allow_mass_retraction:
        return None
    allowed = math.floor(policy.retraction_guard * live)
    if retractions <= allowed:
        return None
    return GuardTrip(retractions, live, allowed, policy.retraction_guard)


def hold_retractions(planned: pd.DataFrame) -> pd.DataFrame:
    """The plan with every retraction marked held for approval (its reason says why it was planned)."""
    held = planned.copy()
    retract = held["action"] == "retract"
    held.loc[retract, "reason"] = HELD + ": " + held.loc[retract, "reason"].fillna("").astype(str)
    return held


def is_held(reasons: pd.Series) -> pd.Series:
    """Which plan rows' reasons say "held for approval"."""
    return reasons.fillna("").astype(str).str.startswith(HELD)


def plan_table(planned: pd.DataFrame) -> pa.Table:
    """The plan as an Arrow table with ``PLAN_SCHEMA`` types."""
    frame = planned.copy()
    for column in PLAN_SCHEMA:
        # A column no row of this plan set (all skips: no version) is float NaN to pandas, not a timestamp.
        if pa.types.is_timestamp(column.type) and not pd.api.types.is_datetime64_any_dtype(frame[column.name]):
            frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
    return pa.Table.from_pandas(frame, schema=PLAN_SCHEMA, preserve_index=False)

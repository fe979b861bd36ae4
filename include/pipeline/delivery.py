"""The delivery stages, run once per (type, target): ``load`` (plan, then send only the plan's changes) and
``verify`` (read every write back), with the errors that fail them."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline import frames, intents, lifecycle, progress, readback, watermarks
from include.pipeline.capacity import held_count
from include.pipeline.errors import PermanentError
from include.pipeline.jobs import LoadReport, VerifyReport
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.ports import FAILED, OK, REJECTED, Sink, SinkResult
from include.pipeline.schema import LOADED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class LoadFailed(RuntimeError):
    """More indicators failed to load than the configured threshold allows (transient: a task retry may pass)."""


class TooManyRejections(PermanentError):
    """The target refused more of the type's writes for their content than the threshold allows: a mapping bug
    or a changed contract, which no retry fixes."""


#: The window outcome of a retraction held for approval (not sent by load).
HELD_STATUS = "held"

#: Below this many rejections by the target, a type's load never fails on rejections alone (small runs).
MIN_REJECTIONS_TO_FAIL = 5


class VerifyFailed(RuntimeError):
    """Indicators that were loaded are missing from (or different in) the target."""


def _outcomes(chunk: pd.DataFrame, results: list[SinkResult], sink: Sink) -> pd.DataFrame:
    by_id = {r.external_id: r for r in results}
    missing = [eid for eid in chunk["external_id"] if eid not in by_id]
    if missing:  # a sink that forgets a row must not make it vanish from the record
        raise RuntimeError(f"sink {sink.name} returned no result for {len(missing)} indicators, e.g. {missing[:3]}")
    frame = chunk.copy()
    frame["status"] = [by_id[e].status for e in frame["external_id"]]
    frame["target_id"] = [by_id[e].target_id for e in frame["external_id"]]
    frame["attempts"] = [by_id[e].attempts for e in frame["external_id"]]
    frame["error"] = [by_id[e].error for e in frame["external_id"]]
    return frame


def _read_inventory(store: SnapshotStore, run_id: str, indicator_type: str) -> set[str] | None:
    if not store.exists("inventory", indicator_type, run_id):
        return None
    table = store.read("inventory", indicator_type, run_id)
    return set(table.filter(table["live"])["external_id"].to_pylist())


def _target_view(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    target: str,
    state: pd.DataFrame,
    deduped: pd.DataFrame,
    reconcile: bool,
) -> lifecycle.TargetView | None:
    """Read back what the target holds for the delivered live indicators this run plans (all of them when
    reconciling), so the plan repairs drift instead of trusting the log: None when the sink cannot read back."""
    if not sink.read_back or state.empty:
        return None
    live = state[state["action"] != "retract"]["external_id"]
    if not reconcile:
        live = live[live.isin(set(deduped["external_id"]))]
    ids = list(live)
    if not ids:
        return None
    found = readback.read_back(sink, store, run_id, indicator_type, target, ids, after_load=False)
    view = lifecycle.TargetView(set(ids), lambda row, stored: _compare(sink, row, stored), found)
    log.info(
        "read back %s delivered live %s indicators before planning; the target holds %s of them",
        len(ids),
        indicator_type,
        len(found),
    )
    return view


def _log_plan(indicator_type: str, planned: pd.DataFrame, samples: int = 3) -> dict[str, int]:
    counts = {a: int((planned["action"] == a).sum()) for a in lifecycle.PLAN_ACTIONS}
    counts["quarantined"] = int(planned["reason"].fillna("").str.startswith("quarantined").sum())
    counts["healed"] = int(planned["reason"].fillna("").str.startswith("heal").sum())
    counts["held"] = int(lifecycle.is_held(planned["reason"]).sum())
    log.info("plan for %s: %s", indicator_type, counts)
    for action in ("create", "update", "refresh", "retract", "reject"):
        chosen = planned[planned["action"] == action].head(samples)
        for row in chosen.itertuples():
            log.info("  %s %s %s (%s)", action, row.external_id, row.value, row.reason)
    return counts


def load(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    policy: lifecycle.Policy,
    failure_threshold: float = 0.0,
    dry_run: bool = False,
    chunk_rows: int = 10_000,
    rejection_threshold: float = 0.01,
    target: str | None = None,
    time_limit: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoadReport:
    """Plan against the delivered state, then send only what the plan says, and record every write in ``loaded``.

    The plan (creates, updates, refreshes, retractions, rejections, skips with their reasons) is written to the
    ``plan`` snapshot every run; a dry run stops there. The retraction guard runs before anything is sent.

    Every write ends ``ok``, ``rejected`` (the target refused its content: quarantined, recorded with the target's
    message, not sent again until it changes, and it does not hold the watermark back) or ``failed`` (still failing
    after the retries for a reason that may pass). The task fails when the failed share exceeds
    ``failure_threshold`` (an Airflow retry may pass), or when the rejected share exceeds ``rejection_threshold``
    and :data:`MIN_REJECTIONS_TO_FAIL` (a mapping bug: fails at once, and the rejections are recorded as failed so
    that they are sent again once the mapping is fixed, instead of being quarantined).

    Before the first write it logs what the plan costs against the target's budget (and warns when that cannot end
    inside ``time_limit``, the task's timeout in seconds); while sending, a progress line at most every 10 seconds
    (``clock`` only times these messages).
    """
    name = target or sink.name  # a target is a sink through one Connection: "sentinel@sentinel_emea"
    deduped = store.read("deduped", indicator_type, run_id).to_pandas()
    deduped["indicator_type"] = indicator_type
    history = lifecycle.delivered(store, indicator_type, name, exclude_run=run_id)
    state = history.state
    inventory = _read_inventory(store, run_id, indicator_type)
    target = _target_view(sink, store, run_id, indicator_type, name, state, deduped, reconcile=inventory is not None)
    planned = lifecycle.plan(
        deduped,
        history,
        sink.payload,
        name,
        policy,
        sink.volatile_fields,
        inventory,
        target,
        expired_before=policy.interval_end if sink.refuses_expired else None,
    )
    capacity: dict[str, Any] | None = None
    if sink.capacity is not None:
        now = policy.interval_end  # Defender deletes expired indicators: they take no room (capacity.held_count)
        states = [lifecycle.delivered_state(store, other, name) for other in SUPPORTED_TYPES if other != indicator_type]
        others = sum(held_count(other, now) for other in states)
        planned, capacity = lifecycle.apply_capacity(planned, state, sink.capacity, others, name, now)
        if capacity["over_capacity"]:
            log.warning(
                "%s holds at most %s of our indicators: %s %s indicators are left out or retracted by "
                "priority (plan reasons say which)",
                name,
                f"{sink.capacity:,}",
                capacity["over_capacity"],
                indicator_type,
            )
    trip = lifecycle.retraction_guard(planned, state, policy)
    if trip is not None:
        planned = lifecycle.hold_retractions(planned)
        log.warning(
            "%s: the retractions are held for a person's approval (task approve_retractions); everything else is "
            "sent now",
            trip.describe(f"{indicator_type} -> {name}"),
        )
    plan_path = store.write_table("plan", indicator_type, run_id, lifecycle.plan_table(planned), part=name)
    counts = _log_plan(indicator_type, planned)
    summary: LoadReport = {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "sink": name,
        "dry_run": dry_run,
        "planned": counts,
        "plan_path": plan_path,
        "reconciled": inventory is not None,
        "read_back_before_planning": 0 if target is None else len(target.read),
        "capacity": capacity,
        "held_retractions": None if trip is None else trip.as_dict(),
    }
    if dry_run:
        log.info("dry run: nothing sent; the plan is in %s", plan_path)
        return summary
    # Held retractions wait for the approval gate (include/pipeline/approval.py); creates and updates go now.
    sendable = planned["action"].isin(lifecycle.WRITE_ACTIONS) & ~lifecycle.is_held(planned["reason"])
    writes = planned[sendable].reset_index(drop=True)
    rate = sink.write_rate()
    cost, fits = progress.plan_line(name, len(writes), rate.batch_size, rate.requests_per_minute, time_limit)
    (log.info if fits else log.warning)("%s plan cost: %s", indicator_type, cost)
    step = progress.chunk_for(rate.batch_size, rate.requests_per_minute, chunk_rows)
    meter = progress.Progress(len(writes), clock())
    outcomes = []
    columns = ["external_id", "action", "status", "expiration", "last_modified", "reason", "value", "error"]
    # Only a create can duplicate: a run that creates nothing needs no ledger (and lists nothing to start one).
    creates = bool((writes["action"] == "create").any())
    guard = (
        intents.CreateGuard.open(store, indicator_type, name, run_id, sink.listing)
        if creates and sink.guards_creates
        else None
    )
    with store.writer("loaded", indicator_type, run_id, LOADED_SCHEMA, part=name) as writer:
        for offset in range(0, len(writes), step):
            chunk = writes.iloc[offset : offset + step]
            upserts, retracts = chunk[chunk["action"] != "retract"], chunk[chunk["action"] == "retract"]
            results = (intents.upsert(sink, upserts, guard) if len(upserts) else []) + (
                sink.retract(retracts) if len(retracts) else []
            )
            frame = _outcomes(chunk, results, sink)
            writer.write(pa.Table.from_pandas(frame, schema=LOADED_SCHEMA, preserve_index=False))
            outcomes.append(frame[columns])
            line = meter.update(offset + len(chunk), clock())
            if line is not None:
                log.info("%s %s: %s", indicator_type, name, line)
    done = pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame(columns=columns)
    rejected = int((done["status"] == REJECTED).sum())
    tolerated = max(math.floor(rejection_threshold * len(done)), MIN_REJECTIONS_TO_FAIL)
    too_many_rejections = rejected > tolerated
    if too_many_rejections:
        # Not quarantined: the next run (after the mapping is fixed, or not) must send them again.
        done.loc[done["status"] == REJECTED, "status"] = FAILED
        loaded = store.read("loaded", indicator_type, run_id)
        loaded = loaded.filter(pc.equal(loaded["sink"], name))
        status = pc.if_else(pc.equal(loaded["status"], REJECTED), FAILED, loaded["status"])
        store.write_table(
            "loaded",
            indicator_type,
            run_id,
            loaded.set_column(loaded.schema.get_field_index("status"), "status", status),
            part=name,
        )
    ok = done[done["status"] == OK]
    failed = int((done["status"] == FAILED).sum())
    summary.update(
        {
            "sent": len(done),
            "created": int((ok["action"] == "create").sum()),
            "updated": int((ok["action"] == "update").sum()),
            "refreshed": int((ok["action"] == "refresh").sum()),
            "retracted": int((ok["action"] == "retract").sum()),
            "unchanged": int((planned["reason"] == "unchanged").sum()),
            "healed": int(ok["reason"].fillna("").str.startswith("heal").sum()),
            "rejected_before_sending": counts["reject"],
            "rejected_by_target": rejected,
            "quarantined": counts["quarantined"],
            "failed": failed,
            "expiring_7d": lifecycle.expiring(state, ok, policy.interval_end, dt.timedelta(days=7)),
            "loaded_path": store.partition_url("loaded", indicator_type, run_id),
        }
    )
    log.info("load summary: %s", summary)
    if rejected:
        sample = done[done["error"].notna() & (done["action"] != "retract")].head(3)
        log.warning(
            "%s rejected %s %s indicators for their content (quarantined until they change), e.g. %s",
            name,
            rejected,
            indicator_type,
            list(zip(sample["value"], sample["error"], strict=True)),
        )
    if too_many_rejections:
        raise TooManyRejections(
            f"{name} rejected {rejected} of {len(done)} {indicator_type} writes for their content, more than "
            f"the rejection threshold allows ({rejection_threshold:.2%}, at least {MIN_REJECTIONS_TO_FAIL + 1} to "
            f"fail): this looks like a mapping bug or a changed contract, not bad data. The target's messages are "
            f"in {summary['loaded_path']} (column error); fix the mapping, or raise rejection_threshold."
        )
    allowed = math.floor(failure_threshold * len(done))
    if failed > allowed:
        raise LoadFailed(
            f"{failed} of {len(done)} {indicator_type} writes failed in {name} "
            f"(threshold {failure_threshold:.2%}); details in {summary['loaded_path']}"
        )
    return summary


def verify(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    previous_watermark: str | None,
    dry_run: bool = False,
    target: str | None = None,
) -> VerifyReport:
    """Read back every successful write and compare it with what was sent; fail when anything is missing.

    Retracted indicators must be gone or marked retracted. Each write's finding goes to the ``verified`` snapshot
    (``read back``, ``missing``, ``different`` or ``acknowledged``): a write found missing or different is not
    delivered, so the next run sends it again. A sink that cannot read back (Sentinel without its management-plane
    coordinates) is verified by its per-item acknowledgements, said once at WARNING.

    The new watermark covers this run's window rows: the plan's skips and rejections count as done (nothing more
    to send), failed writes hold the mark back, and a failed verify moves nothing.
    """
    if dry_run:
        return {
            "indicator_type": indicator_type,
            "run_id": run_id,
            "dry_run": True,
            "expected": 0,
            "verified": 0,
            "missing": 0,
            "different": 0,
            "watermark": previous_watermark,
            "verified_by": None,
        }
    name = target or sink.name
    loaded = store.read("loaded", indicator_type, run_id).to_pandas()
    loaded = loaded[loaded["sink"] == name].reset_index(drop=True)
    loaded["indicator_type"] = indicator_type  # a partition column: only in the path, but payloads use it
    ok = loaded[loaded["status"] == OK]
    records = frames.records(ok)
    findings: list[tuple[str, str, str, str | None]] = []
    missing, different = [], []
    if sink.read_back:
        verified_by = "read back"
        actual = readback.read_back(
            sink, store, run_id, indicator_type, name, [r["external_id"] for r in records], after_load=True
        )
        for row in records:
            finding = _compare(sink, row, actual.get(row["external_id"]))
            if finding is None:
                findings.append((row["external_id"], row["action"], "read back", None))
            elif finding[0] == "missing":
                missing.append(row["external_id"])
                findings.append((row["external_id"], row["action"], "missing", finding[1]))
            else:
                different.append((row["external_id"], *finding[1:]))
                findings.append(
                    (
                        row["external_id"],
                        row["action"],
                        "different",
                        f"{finding[1]}: sent {finding[2]!r}, target holds {finding[3]!r}"[:500],
                    )
                )
    else:
        verified_by = "acknowledged"
        if records:
            log.warning(
                "%s cannot read objects back with this connection: verify relies on the target's per-item "
                "acknowledgements of the %s %s writes (see the README for the coordinates that turn on "
                "read-back)",
                sink.name,
                len(records),
                indicator_type,
            )
        findings = [(r["external_id"], r["action"], "acknowledged", None) for r in records]
    columns = {
        column: [f[i] for f in findings] for i, column in enumerate(("external_id", "action", "status", "detail"))
    }
    store.write_table(
        "verified",
        indicator_type,
        run_id,
        pa.table({**columns, "sink": [name] * len(findings)}, schema=lifecycle.VERIFIED_SCHEMA),
        part=name,
    )
    window_rows = _window_outcomes(store, run_id, indicator_type, loaded, name)
    # A retraction held for approval is not done: the mark stops before it, so a later run plans it again. The
    # mark it would reach once the retractions are approved and done is kept for commit_watermarks.
    held = window_rows["status"] == HELD_STATUS
    new_mark = watermarks.advance(
        previous_watermark, window_rows.assign(status=window_rows["status"].mask(held, FAILED))
    )
    summary: VerifyReport = {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "expected": len(records),
        "verified": len(records) - len(missing) - len(different),
        "missing": len(missing),
        "different": len(different),
        "watermark": new_mark,
        "verified_by": verified_by,
    }
    if held.any():
        done = window_rows.assign(status=window_rows["status"].mask(held, OK))
        summary["watermark_after_retractions"] = watermarks.advance(previous_watermark, done)
    log.info("verify summary: %s", summary)
    if missing or different:
        raise VerifyFailed(
            f"{len(missing)} {indicator_type} indicators missing from {sink.name} (e.g. {missing[:3]}) and "
            f"{len(different)} different (e.g. {different[:2]}); they are recorded as not delivered in "
            f"{store.partition_url('verified', indicator_type, run_id)} and the next run sends them again"
        )
    return summary


def _compare(sink: Sink, row: dict[str, Any], stored: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """None when the target holds what this write meant; else ``("missing", why)`` or
    ``("different", field, sent, held)``."""
    if row["action"] == "retract":
        if stored is not None and not _retracted(stored):
            return ("different", "retracted", False, True)
        return None
    if stored is None:
        return ("missing", "acknowledged, but the target does not hold it")
    sent = sink.payload(row)
    for name in sink.verify_fields:
        if not sink.same_value(name, sent.get(name), stored.get(name)):
            return ("different", name, sent.get(name), stored.get(name))
    return None


def _retracted(stored: dict[str, Any]) -> bool:
    return stored.get("isActive") is False or stored.get("revoked") is True


def _window_outcomes(
    store: SnapshotStore, run_id: str, indicator_type: str, loaded: pd.DataFrame, target: str
) -> pd.DataFrame:
    """(last_modified, status) of the run's own window rows: written ones with their status, the rest ok.

    Refreshes and orphan retractions concern indicators outside the window, so they never move the watermark.
    """
    window_ids = set(store.read("deduped", indicator_type, run_id, columns=["external_id"])["external_id"].to_pylist())
    planned = store.read(
        "plan", indicator_type, run_id, columns=["external_id", "action", "reason", "last_modified", "sink"]
    ).to_pandas()
    planned = planned[planned["sink"] == target]
    planned = planned[planned["external_id"].isin(window_ids)]
    # A rejection by the target is done with (quarantined, not retried): only failures hold the mark back.
    status = {e: FAILED if s == FAILED else OK for e, s in zip(loaded["external_id"], loaded["status"], strict=False)}
    planned["status"] = [
        status.get(e, OK) if a in lifecycle.WRITE_ACTIONS else OK
        for e, a in zip(planned["external_id"], planned["action"], strict=True)
    ]
    planned.loc[lifecycle.is_held(planned["reason"]) & ~planned["external_id"].isin(set(status)), "status"] = (
        HELD_STATUS
    )
    return planned[["last_modified", "status"]]

"""The ``runs`` dataset: one row per (indicator type, target) per run, counted from the run's own snapshots.

Layout, hive-partitioned like the stages: ``<data_root>/runs/indicator_type=<type>/run_id=<quoted>/part-00000.parquet``
(one file per (type, run), a row per target; a rerun of the report replaces it). Counts come from the snapshots, not
from XCom, so a task that failed half-way still has its rows counted; XCom adds what only the tasks know (window,
watermarks, capacity, requests and durations when the stages report them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from include.pipeline.snapshots import SnapshotStore, quote_partition_value

RUNS = "runs"
PLAN_ACTIONS = ("create", "update", "refresh", "retract", "reject", "skip")
TS = pa.timestamp("us", tz="UTC")

#: Column, type, meaning (the README's table is generated from the same words).
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("target", pa.string(), "the target (`graph`, `sentinel`, `defender`, `kind@conn_id`)"),
    ("run_type", pa.string(), "`scheduled`, `manual`, `backfill` (Airflow's run type)"),
    ("status", pa.string(), "`ok` (verified), `failed` (did not get through verify), `dry_run`"),
    ("data_interval_start", TS, "the run's data interval"),
    ("data_interval_end", TS, ""),
    ("window_start", TS, "the window read from ThreatConnect (a live run resumes from the watermark)"),
    ("window_end", TS, ""),
    ("window_reason", pa.string(), "why the window starts where it does"),
    ("extracted", pa.int64(), "indicators read (`raw` rows, deletions left out)"),
    ("deleted", pa.int64(), "entries of ThreatConnect's deleted-indicators listing"),
    ("rejected", pa.int64(), "values normalize refused (`rejected` rows)"),
    ("rejected_by_reason", pa.string(), "JSON object: reason class -> count (the reason up to its first colon)"),
    ("deduplicated", pa.int64(), "rows after dedupe (`deduped`)"),
    *((f"planned_{a}", pa.int64(), f"plan rows with action `{a}` for this target") for a in PLAN_ACTIONS),
    ("quarantined", pa.int64(), "plan rows left unsent because the target refused the same content earlier"),
    ("sent", pa.int64(), "writes sent (`loaded` rows of the target)"),
    ("loaded", pa.int64(), "writes the target accepted (status ok)"),
    ("retracted", pa.int64(), "accepted retractions"),
    ("rejected_by_target", pa.int64(), "writes refused for their content (status rejected: quarantined)"),
    ("failed", pa.int64(), "writes that still failed after the retries"),
    ("verified", pa.int64(), "writes read back or acknowledged by verify"),
    ("verify_missing", pa.int64(), "writes verify found missing in the target"),
    ("verify_different", pa.int64(), "writes verify found different in the target"),
    ("expiring_7d", pa.int64(), "live indicators expiring within 7 days of the interval end (from load)"),
    ("watermark_before", pa.string(), "the target's watermark the run started from"),
    ("watermark_after", pa.string(), "the watermark verify reached (null: held)"),
    ("capacity", pa.int64(), "the target's capacity for our indicators, where it has one (Defender)"),
    ("capacity_used", pa.int64(), "our live indicators in the target after this type's load"),
    ("requests", pa.string(), "JSON object: service -> requests sent (when the stages report them)"),
    ("throttled", pa.string(), "JSON object: service -> 429 answers (when the stages report them)"),
    ("durations", pa.string(), "JSON object: task -> seconds (when the stages report them)"),
)
RUNS_SCHEMA = pa.schema([pa.field(name, kind) for name, kind, _ in COLUMNS])
#: What the hive partitioning adds back when the dataset is read.
PARTITION_COLUMNS = ("indicator_type", "run_id")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\d[\d,.]*")


def reason_class(reason: str | None) -> str:
    """The class of a reject reason: the text before its first colon, without quoted values and numbers."""
    head = (reason or "unknown").split(":", 1)[0]
    head = " ".join(_QUOTED.sub("", head).split())
    return head[:80] or "unknown"


@dataclass(frozen=True)
class RunInfo:
    """The run the rows describe (from the report task's context)."""

    run_id: str
    run_type: str
    data_interval_start: Any
    data_interval_end: Any


def _label(indicator_type: str, target: str, targets: Sequence[str]) -> str:
    return f"{indicator_type} → {target}" if len(targets) > 1 else indicator_type


def _read(store: SnapshotStore, stage: str, indicator_type: str, run_id: str, columns: list[str]) -> pa.Table | None:
    if not store.exists(stage, indicator_type, run_id):
        return None
    table = store.read(stage, indicator_type, run_id)
    return table.select([c for c in columns if c in table.column_names])


def _read_target(
    store: SnapshotStore, stage: str, indicator_type: str, run_id: str, target: str, columns: list[str]
) -> pa.Table | None:
    """A per-target stage (plan, loaded, verified): only the target's own file, None when its task wrote none."""
    name = re.sub(r"[^A-Za-z0-9_.@-]", "_", target)  # as the snapshot store names a target's file
    path = f"{store.partition_dir(stage, indicator_type, run_id)}/part-{name}.parquet"
    if not store.fs.exists(path):
        return None
    table = pq.read_table(path, filesystem=store._pa_filesystem())
    table = table.filter(pc.equal(table["sink"], target)) if "sink" in table.column_names else table
    return table.select([c for c in columns if c in table.column_names])


def _count(table: pa.Table | None, column: str | None = None, value: Any = None) -> int | None:
    if table is None:
        return None
    if column is None:
        return table.num_rows
    return int(pc.sum(pc.equal(table[column], value)).as_py() or 0)


def _stage_counts(store: SnapshotStore, indicator_type: str, run_id: str, target: str) -> dict[str, Any]:
    raw = _read(store, "raw", indicator_type, run_id, ["deleted"])
    rejected = _read(store, "rejected", indicator_type, run_id, ["reason"])
    deduped = _read(store, "deduped", indicator_type, run_id, ["external_id"])
    plan = _read_target(store, "plan", indicator_type, run_id, target, ["action", "reason"])
    loaded = _read_target(store, "loaded", indicator_type, run_id, target, ["action", "status"])
    verified = _read_target(store, "verified", indicator_type, run_id, target, ["status"])
    row: dict[str, Any] = {}
    deleted = _count(raw, "deleted", True)
    row["extracted"] = None if raw is None else raw.num_rows - (deleted or 0)
    row["deleted"] = deleted
    row["rejected"] = _count(rejected)
    row["rejected_by_reason"] = (
        None
        if rejected is None
        else json.dumps(dict(sorted(Counter(reason_class(r) for r in rejected["reason"].to_pylist()).items())))
    )
    row["deduplicated"] = _count(deduped)
    for action in PLAN_ACTIONS:
        row[f"planned_{action}"] = _count(plan, "action", action)
    row["quarantined"] = (
        None
        if plan is None
        else int(pc.sum(pc.starts_with(pc.fill_null(plan["reason"], ""), "quarantined")).as_py() or 0)
    )
    row["sent"] = _count(loaded)
    row["loaded"] = _count(loaded, "status", "ok")
    row["retracted"] = (
        None
        if loaded is None
        else int(pc.sum(pc.and_(pc.equal(loaded["status"], "ok"), pc.equal(loaded["action"], "retract"))).as_py() or 0)
    )
    row["rejected_by_target"] = _count(loaded, "status", "rejected")
    row["failed"] = _count(loaded, "status", "failed")
    if verified is None:
        row["verified"] = row["verify_missing"] = row["verify_different"] = None
    else:
        good = pc.is_in(verified["status"], value_set=pa.array(["read back", "acknowledged"]))
        row["verified"] = int(pc.sum(good).as_py() or 0)
        row["verify_missing"] = _count(verified, "status", "missing")
        row["verify_different"] = _count(verified, "status", "different")
    return row


def _json(value: Any) -> str | None:
    return None if not value else json.dumps(value, sort_keys=True)


def _merged(job: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """A per-stage figure (``requests``, ``throttled``, ``seconds``) the stages put in their summaries, merged."""
    merged: dict[str, Any] = {}
    for stage in ("extract", "normalize", "dedupe", "load", "verify"):
        value = ((job or {}).get(stage) or {}).get(key)
        if isinstance(value, Mapping):
            for name, n in value.items():
                merged[name] = merged.get(name, 0) + n
        elif value is not None:
            merged[stage] = value
    return merged


def rows(
    store: SnapshotStore,
    run: RunInfo,
    planned: Sequence[Mapping[str, Any]],
    finished: Sequence[Mapping[str, Any] | None],
    failed_labels: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per (type, target) the run's plan promised.

    Args:
        store: the snapshot root.
        run: the run's identity.
        planned: ``plan_run``'s jobs (one per type: window, targets, marks).
        finished: ``verify``'s jobs (one per (type, target) that got that far; None for a failed one).
        failed_labels: labels the summary counts as failed.
    """
    by_pair = {(j["indicator_type"], j.get("target")): j for j in finished if j}
    out = []
    for job in planned:
        targets = list((job.get("config") or {}).get("targets") or [])
        dry_run = bool((job.get("config") or {}).get("dry_run"))
        for target in targets:
            done = by_pair.get((job["indicator_type"], target))
            load = (done or {}).get("load") or {}
            verify = (done or {}).get("verify") or {}
            capacity = load.get("capacity") or {}
            failed = (
                _label(job["indicator_type"], target, targets) in failed_labels
                or not verify
                or verify.get("verified") is None
            )
            window = job.get("window") or {}
            row = {
                "indicator_type": job["indicator_type"],
                "run_id": run.run_id,
                "target": target,
                "run_type": run.run_type,
                "status": "failed" if failed else ("dry_run" if dry_run else "ok"),
                "data_interval_start": run.data_interval_start,
                "data_interval_end": run.data_interval_end,
                "window_start": window.get("start"),
                "window_end": window.get("end"),
                "window_reason": window.get("reason"),
                **_stage_counts(store, job["indicator_type"], run.run_id, target),
                "expiring_7d": load.get("expiring_7d"),
                "watermark_before": (job.get("target_marks") or {}).get(target),
                "watermark_after": verify.get("watermark") if not failed else None,
                "capacity": capacity.get("capacity"),
                "capacity_used": capacity.get("used"),
                "requests": _json(_merged(done, "requests")),
                "throttled": _json(_merged(done, "throttled")),
                "durations": _json(_merged(done, "seconds")),
            }
            out.append(row)
    return out


def _table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    columns = {}
    for name, kind, _ in COLUMNS:
        values = [r.get(name) for r in records]
        if pa.types.is_timestamp(kind):
            values = [None if v is None else _timestamp(v) for v in values]
        columns[name] = pa.array(values, kind)
    return pa.table(columns, schema=RUNS_SCHEMA)


def _timestamp(value: Any) -> Any:
    import pandas as pd

    return pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tzinfo else pd.Timestamp(value, tz="UTC")


def write(store: SnapshotStore, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Write the rows, one partition per (type, run), atomically (a temporary file renamed into place)."""
    paths = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["indicator_type"], record["run_id"]), []).append(record)
    for (indicator_type, run_id), group in groups.items():
        directory = (
            f"{store._base}/{RUNS}/indicator_type={quote_partition_value(indicator_type)}"
            f"/run_id={quote_partition_value(run_id)}"
        )
        store.fs.makedirs(directory, exist_ok=True)
        tmp = f"{directory}/_tmp-{uuid.uuid4().hex}.parquet"  # '_'-prefixed: dataset discovery skips it
        with store.fs.open(tmp, "wb") as handle:
            pq.write_table(_table(group), handle, compression="zstd")
        store.fs.mv(tmp, f"{directory}/part-00000.parquet")
        paths.append(directory)
    return paths


def read(store: SnapshotStore) -> pa.Table:
    """The whole ``runs`` dataset (with ``indicator_type`` and ``run_id``), or an empty table."""
    directory = f"{store._base}/{RUNS}"
    if not store.fs.exists(directory):
        schema = pa.schema([*RUNS_SCHEMA, pa.field("indicator_type", pa.string()), pa.field("run_id", pa.string())])
        return schema.empty_table()
    return ds.dataset(directory, format="parquet", partitioning="hive", filesystem=store._pa_filesystem()).to_table()

"""The pipeline's stages as plain functions: the DAG's tasks call these with clients built by the hooks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.microsoft.sink import Sink, SinkResult, content_hash
from include.pipeline import watermarks
from include.pipeline.schema import LOADED_SCHEMA, NORMALIZED_SCHEMA, RAW_SCHEMA, REJECTED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class LoadFailed(RuntimeError):
    """More indicators failed to load than the configured threshold allows."""


class VerifyFailed(RuntimeError):
    """Indicators that were loaded are missing from (or different in) the target."""


class PageSource(Protocol):
    def iter_pages(self, indicator_type: str, modified_from: Any, modified_to: Any) -> Iterable[pa.RecordBatch]: ...


def extract(
    client: PageSource, store: SnapshotStore, run_id: str, indicator_type: str, window: watermarks.Window
) -> dict[str, Any]:
    """Stream every page of one type's changes in the window into the ``raw`` snapshot; memory stays one page."""
    pages = 0
    latest = None
    with store.writer("raw", indicator_type, run_id, RAW_SCHEMA) as writer:
        for batch in client.iter_pages(indicator_type, window.start, window.end):
            writer.write(batch)
            pages += 1
            if batch.num_rows:
                batch_max = pc.max(batch.column("last_modified")).as_py()
                latest = batch_max if latest is None or batch_max > latest else latest
        rows = writer.rows
    log.info("extracted %s %s indicators in %s pages for %s", rows, indicator_type, pages, window.as_dict())
    return {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "window": window.as_dict(),
        "extracted": rows,
        "pages": pages,
        "max_last_modified": watermarks.iso(latest) if latest else None,
        "raw": store.partition_url("raw", indicator_type, run_id),
    }


def normalize(
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    normalize_batch: Callable[[pa.RecordBatch], tuple[pa.Table, pa.Table]],
) -> dict[str, Any]:
    """Canonicalise and validate the raw snapshot batch by batch into ``normalized`` and ``rejected``."""
    with (
        store.writer("normalized", indicator_type, run_id, NORMALIZED_SCHEMA) as good,
        store.writer("rejected", indicator_type, run_id, REJECTED_SCHEMA) as bad,
    ):
        raw_rows = 0
        for batch in store.iter_batches("raw", indicator_type, run_id):
            raw_rows += batch.num_rows
            batch = batch.append_column("indicator_type", pa.array([indicator_type] * batch.num_rows, pa.string()))
            normalized, rejected = normalize_batch(batch)
            good.write(normalized)
            bad.write(rejected)
        counts = {"raw": raw_rows, "normalized": good.rows, "rejected": bad.rows}
    if counts["rejected"]:
        log.warning("%s %s values were rejected; see %s", counts["rejected"], indicator_type,
                    store.partition_url("rejected", indicator_type, run_id))
    return {"indicator_type": indicator_type, "run_id": run_id, **counts,
            "normalized_path": store.partition_url("normalized", indicator_type, run_id),
            "rejected_path": store.partition_url("rejected", indicator_type, run_id)}


def dedupe(
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    winners: Callable[[pa.Table], pa.Array],
) -> dict[str, Any]:
    """Keep one row per external id (the most recent) across all pages, in two streaming passes.

    Pass one reads only the key columns and decides the winners; pass two streams the full rows and keeps them.
    """
    keys = store.read("normalized", indicator_type, run_id, columns=["external_id", "last_modified", "tc_id"])
    mask = winners(keys)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    offset = 0
    with store.writer("deduped", indicator_type, run_id, NORMALIZED_SCHEMA) as writer:
        for batch in store.iter_batches("normalized", indicator_type, run_id):
            writer.write(batch.filter(mask.slice(offset, batch.num_rows)))
            offset += batch.num_rows
        kept = writer.rows
    dropped = keys.num_rows - kept
    log.info("dedupe kept %s of %s %s rows (%s duplicates)", kept, keys.num_rows, indicator_type, dropped)
    return {"indicator_type": indicator_type, "run_id": run_id, "normalized": keys.num_rows,
            "deduplicated": kept, "duplicates": dropped,
            "deduped_path": store.partition_url("deduped", indicator_type, run_id)}


def _results_frame(rows: pd.DataFrame, results: list[SinkResult], sink: Sink, hashes: dict[str, str]) -> pd.DataFrame:
    by_id = {r.external_id: r for r in results}
    missing = [eid for eid in rows["external_id"] if eid not in by_id]
    if missing:  # a sink that forgets a row must not make it vanish from the record
        raise RuntimeError(f"sink {sink.name} returned no result for {len(missing)} indicators, e.g. {missing[:3]}")
    frame = pd.DataFrame(
        {
            "external_id": rows["external_id"].to_numpy(),
            "indicator_type": rows["indicator_type"].to_numpy(),
            "value": rows["value"].to_numpy(),
            "last_modified": rows["last_modified"].to_numpy(),
        }
    )
    frame["sink"] = sink.name
    frame["action"] = [by_id[e].action for e in frame["external_id"]]
    frame["status"] = [by_id[e].status for e in frame["external_id"]]
    frame["target_id"] = [by_id[e].target_id for e in frame["external_id"]]
    frame["content_hash"] = [hashes.get(e) for e in frame["external_id"]]
    frame["attempts"] = [by_id[e].attempts for e in frame["external_id"]]
    frame["error"] = [by_id[e].error for e in frame["external_id"]]
    return frame


def load(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    failure_threshold: float,
    chunk_rows: int = 10_000,
) -> dict[str, Any]:
    """Upsert the deduplicated indicators into the target and record every outcome in ``loaded``.

    Chunks of ``chunk_rows`` bound memory; the sink batches further (100 per request). Failures are recorded with
    the target's message; the task fails when their share exceeds ``failure_threshold``.
    """
    counts = {"create": 0, "update": 0, "failed": 0}
    with store.writer("loaded", indicator_type, run_id, LOADED_SCHEMA) as writer:
        for batch in store.iter_batches("deduped", indicator_type, run_id, batch_size=chunk_rows):
            rows = batch.to_pandas()
            if rows.empty:
                continue
            rows["indicator_type"] = indicator_type
            hashes = {r["external_id"]: content_hash(sink.payload(r)) for r in rows.to_dict("records")}
            results = sink.upsert(rows)
            frame = _results_frame(rows, results, sink, hashes)
            writer.write(pa.Table.from_pandas(frame, preserve_index=False))
            for result in results:
                if result.status == "ok":
                    counts[result.action] = counts.get(result.action, 0) + 1
                else:
                    counts["failed"] += 1
        total = writer.rows
    summary = {"indicator_type": indicator_type, "run_id": run_id, "sink": sink.name, "sent": total,
               "created": counts["create"], "updated": counts["update"], "failed": counts["failed"],
               "loaded_path": store.partition_url("loaded", indicator_type, run_id)}
    log.info("load summary: %s", summary)
    allowed = math.floor(failure_threshold * total)
    if counts["failed"] > allowed:
        raise LoadFailed(
            f"{counts['failed']} of {total} {indicator_type} indicators failed to load into {sink.name} "
            f"(threshold {failure_threshold:.2%}); details in {summary['loaded_path']}"
        )
    return summary


def verify(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    previous_watermark: str | None,
) -> dict[str, Any]:
    """Read back what was loaded and compare it with what should be there; fail when anything is missing."""
    loaded = store.read("loaded", indicator_type, run_id).to_pandas()
    deduped = store.read("deduped", indicator_type, run_id).to_pandas()
    deduped["indicator_type"] = indicator_type
    ok = loaded[loaded["status"] == "ok"]
    expected_rows = deduped[deduped["external_id"].isin(set(ok["external_id"]))]
    expected = {r["external_id"]: sink.payload(r) for r in expected_rows.to_dict("records")}
    actual = sink.fetch(list(expected))
    missing = sorted(set(expected) - set(actual))
    different = []
    for external_id, sent in expected.items():
        stored = actual.get(external_id)
        if stored is None:
            continue
        for field in sink.verify_fields:
            if not _same(sink, field, sent.get(field), stored.get(field)):
                different.append((external_id, field, sent.get(field), stored.get(field)))
                break
    new_mark = watermarks.advance(previous_watermark, loaded)
    summary = {"indicator_type": indicator_type, "run_id": run_id, "expected": len(expected),
               "verified": len(expected) - len(missing) - len(different), "missing": len(missing),
               "different": len(different), "watermark": new_mark}
    log.info("verify summary: %s", summary)
    if missing or different:
        raise VerifyFailed(
            f"{len(missing)} {indicator_type} indicators missing from {sink.name} (e.g. {missing[:3]}) and "
            f"{len(different)} different (e.g. {different[:2]})"
        )
    return summary


def _same(sink: Sink, field: str, sent: Any, stored: Any) -> bool:
    same_value = getattr(sink, "same_value", None)
    if same_value is not None:
        return bool(same_value(field, sent, stored))
    return sent == stored

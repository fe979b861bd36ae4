"""The pipeline's stages as plain functions: the DAG's tasks call these with clients built by the hooks.

This module holds the per-type stages (extract, normalize, dedupe); the per-target ones (load, verify) live in
:mod:`include.pipeline.delivery` and are re-exported here for callers that run the whole pipeline without Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline import watermarks
from include.pipeline.dedupe import KEY_COLUMNS
from include.pipeline.delivery import (
    MIN_REJECTIONS_TO_FAIL,
    LoadFailed,
    TooManyRejections,
    VerifyFailed,
    load,
    verify,
)
from include.pipeline.jobs import DedupeReport, ExtractReport, InventoryReport, NormalizeReport
from include.pipeline.ports import DeletedListing, PageSource
from include.pipeline.schema import NORMALIZED_SCHEMA, RAW_SCHEMA, REJECTED_SCHEMA
from include.pipeline.snapshots import ROW_GROUP_ROWS, SnapshotStore

__all__ = [
    "MIN_REJECTIONS_TO_FAIL",
    "LoadFailed",
    "TooManyRejections",
    "VerifyFailed",
    "dedupe",
    "extract",
    "load",
    "normalize",
    "verify",
]

log = logging.getLogger(__name__)

#: From this many normalized rows on, ``dedupe`` writes its partition as two files encoded side by side; below it
#: the encoding is short and one file is simpler for whoever reads the snapshots.
SPLIT_ROWS = 4 * ROW_GROUP_ROWS


def extract(
    client: PageSource,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    window: watermarks.Window,
    normalize_batch: Callable[[pa.RecordBatch], tuple[pa.Table, pa.Table]] | None = None,
    reconcile: bool = False,
    deletions: DeletedListing | None = None,
) -> ExtractReport:
    """Stream one type's changes in the window into the ``raw`` snapshot; memory stays one page.

    With ``deletions`` (the source's deleted-indicators listing), indicators deleted since the window's start join
    ``raw`` as rows flagged ``deleted`` (a retraction signal). A deletion is versioned by the window whose listing
    (``deletedSince`` = the window's start) reported it, never by a date inside the record: the listing's
    ``dateAdded`` is when the indicator was first added, which predates its last change, so taking it as the
    deletion's version made the plan skip real deletions as stale. Every entry the listing returns is a deletion
    that exists now, even one made after the window's end.

    With ``reconcile``, the type's whole current set is also listed into ``inventory`` (external id and whether it
    is live), which the load stage compares with what was delivered to find orphans.
    """
    pages = 0
    latest = None
    deleted = 0
    with store.writer("raw", indicator_type, run_id, RAW_SCHEMA) as writer:
        for batch in client.iter_pages(indicator_type, window.start, window.end):
            writer.write(batch)
            pages += 1
            if batch.num_rows:
                batch_max = pc.max(batch.column("last_modified")).as_py()
                latest = batch_max if latest is None or batch_max > latest else latest
        for batch in deletions(indicator_type, window.start, window.start) if deletions is not None else ():
            writer.write(batch)
            deleted += batch.num_rows
        rows = writer.rows
    result: ExtractReport = {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "window": window.as_dict(),
        "extracted": rows - deleted,
        "deleted": deleted,
        "pages": pages,
        "max_last_modified": watermarks.iso(latest) if latest else None,
        "raw": store.partition_url("raw", indicator_type, run_id),
    }
    if reconcile:
        if normalize_batch is None:
            raise ValueError("reconciliation needs the normalize function to derive external ids")
        result["inventory"] = _inventory(client, store, run_id, indicator_type, normalize_batch)
    log.info("extract summary: %s", result)
    return result


INVENTORY_SCHEMA = pa.schema([pa.field("external_id", pa.string()), pa.field("live", pa.bool_())])
#: The inventory's listing bounds: every ``lastModified`` there is (not the wall clock: no ``now()`` in a task).
INVENTORY_START = watermarks.parse_iso("1970-01-01T00:00:00Z")
INVENTORY_END = watermarks.parse_iso("9999-01-01T00:00:00Z")


def _inventory(
    client: PageSource,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    normalize_batch: Callable[[pa.RecordBatch], tuple[pa.Table, pa.Table]],
) -> InventoryReport:
    """List every indicator of the type as it is now (any ``lastModified``) as (external id, live).

    The inventory answers a question about the present (which delivered indicators no longer exist or are no
    longer live), so it has no upper bound: one bounded by the window's end missed every indicator changed since,
    and the plan retracted those as orphans (for good in an old-dated run, whose changes the live runs had passed).
    """
    live_count = 0
    with store.writer("inventory", indicator_type, run_id, INVENTORY_SCHEMA) as writer:
        for batch in client.iter_pages(indicator_type, INVENTORY_START, INVENTORY_END):
            normalized, _ = normalize_batch(batch)
            live = pc.and_(normalized["active"], pc.invert(normalized["false_positive"]))
            writer.write(pa.table({"external_id": normalized["external_id"], "live": live}))
            live_count += pc.sum(live).as_py() or 0
        total = writer.rows
    return {"listed": total, "live": live_count, "path": store.partition_url("inventory", indicator_type, run_id)}


def normalize(
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    normalize_batch: Callable[[pa.RecordBatch], tuple[pa.Table, pa.Table]],
) -> NormalizeReport:
    """Canonicalise and validate the raw snapshot batch by batch into ``normalized`` and ``rejected``."""
    with (
        store.writer("normalized", indicator_type, run_id, NORMALIZED_SCHEMA) as good,
        store.writer("rejected", indicator_type, run_id, REJECTED_SCHEMA) as bad,
    ):
        raw_rows = 0
        for batch in store.iter_batches("raw", indicator_type, run_id):
            raw_rows += batch.num_rows
            labels = pa.repeat(pa.scalar(indicator_type, pa.string()), batch.num_rows)
            batch = batch.append_column("indicator_type", labels)
            normalized, rejected = normalize_batch(batch)
            good.write(normalized)
            bad.write(rejected)
        kept, refused = good.rows, bad.rows
    if refused:
        log.warning(
            "%s %s values were rejected; see %s",
            refused,
            indicator_type,
            store.partition_url("rejected", indicator_type, run_id),
        )
    return {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "raw": raw_rows,
        "normalized": kept,
        "rejected": refused,
        "normalized_path": store.partition_url("normalized", indicator_type, run_id),
        "rejected_path": store.partition_url("rejected", indicator_type, run_id),
    }


def dedupe(
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    winners: Callable[[pa.Table], pa.Array],
) -> DedupeReport:
    """Keep one row per external id (the most recent) across all pages, in two streaming passes.

    Pass one reads only the key columns and decides the winners; pass two streams the full rows and keeps them.
    """
    keys = store.read("normalized", indicator_type, run_id, columns=list(KEY_COLUMNS))
    mask = winners(keys)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    # A large partition is written as two files fed side by side, each encoded by its own thread: pass two
    # only reads and filters, so one writing thread would be its bottleneck (most of the stage's time).
    spans = store.row_spans("normalized", indicator_type, run_id, 2 if keys.num_rows >= SPLIT_ROWS else 1)
    with store.writers("deduped", indicator_type, run_id, NORMALIZED_SCHEMA, files=len(spans)) as writers:
        streams = [
            (writer, start, store.iter_batches("normalized", indicator_type, run_id, rows=(start, stop)))
            for writer, (start, stop) in zip(writers, spans, strict=True)
        ]
        while streams:
            going = []
            for writer, offset, batches in streams:
                batch = next(batches, None)
                if batch is not None:
                    writer.write(batch.filter(mask.slice(offset, batch.num_rows)))
                    going.append((writer, offset + batch.num_rows, batches))
            streams = going
        kept = sum(writer.rows for writer in writers)
    dropped = keys.num_rows - kept
    log.info("dedupe kept %s of %s %s rows (%s duplicates)", kept, keys.num_rows, indicator_type, dropped)
    return {
        "indicator_type": indicator_type,
        "run_id": run_id,
        "normalized": keys.num_rows,
        "deduplicated": kept,
        "duplicates": dropped,
        "deduped_path": store.partition_url("deduped", indicator_type, run_id),
    }

"""Reading back what a target holds, at the lower of two costs, with one listing shared by every type of a run.

A target that can list everything this application owns (Graph: 1,000 objects a request; Defender: 10,000)
answers "what do you hold for these ids?" either by look-ups (Graph: about 20 ids a request) or by one listing.
The listing's cost is known before it starts: the delivered state says how many live objects of ours the target
should hold. The cheaper way is taken (the listing on a tie: it can be read again); a listing that turns out
longer than the look-ups would have cost is abandoned for them.

A listing is kept as the run's ``held`` snapshot (``held/indicator_type=all/run_id=<run>/part-<target>.parquet``),
so the other types of the run read it instead of listing again. It records the run's ``deduped`` and ``loaded``
files of every type as they were when the listing started, and is used again only where that still holds:

- before planning a type, when that type had written nothing to the target in this run, then or now, and its
  ``deduped`` file is the same (a cleared and re-run run rewrites it: a listing from an earlier attempt, which
  may predate changes made in the target since, is never used to plan);
- by verify, only when the type's ``loaded`` file was already written, unchanged since, when the listing began:
  the listing then started after every write it verifies.

Nothing here decides whether to create an indicator: a sink's own look-up before a create never trusts this.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.ports import Listed, Sink
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)

HELD = "held"
ALL_TYPES = "all"
#: schema metadata key: JSON of ``{"<stage>/<type>": stamp of the file or null}`` when the listing started
COVERS = b"tc_sentinel.covers"
HELD_SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string(), nullable=False),
        pa.field("order", pa.string()),
        pa.field("payload", pa.string(), nullable=False),  # JSON of the payload-shaped object
    ]
)


class _TooLong(Exception):
    """The listing cost more requests than the look-ups would have: abandoned (its partial file is discarded)."""


def live_held(store: SnapshotStore, target: str) -> int:
    """About how many live objects of ours the target holds across every type: ids whose latest successful write
    in the ``loaded`` snapshots is not a retraction (four columns read; what the choice of a listing needs)."""
    total = 0
    for indicator_type in SUPPORTED_TYPES:
        latest: dict[str, bool] = {}
        for run_id in store.runs("loaded", indicator_type):
            table = store.read("loaded", indicator_type, run_id, columns=["external_id", "action", "status", "sink"])
            table = table.filter(pc.and_(pc.equal(table["sink"], target), pc.equal(table["status"], "ok")))
            latest.update(
                zip(table["external_id"].to_pylist(), pc.not_equal(table["action"], "retract").to_pylist(), strict=True)
            )
        total += sum(latest.values())
    return total


def stamps(store: SnapshotStore, run_id: str, target: str) -> dict[str, str | None]:
    """The identity of every type's ``deduped`` file and ``loaded`` file for this target in this run (None where
    there is none), keyed ``"<stage>/<type>"``."""
    found: dict[str, str | None] = {}
    for indicator_type in SUPPORTED_TYPES:
        found[f"deduped/{indicator_type}"] = store.stamp("deduped", indicator_type, run_id)
        found[f"loaded/{indicator_type}"] = store.stamp("loaded", indicator_type, run_id, target)
    return found


def read_back(
    sink: Sink,
    store: SnapshotStore,
    run_id: str,
    indicator_type: str,
    target: str,
    external_ids: Sequence[str],
    after_load: bool,
) -> dict[str, dict[str, Any]]:
    """What ``target`` holds now for these ids, payload-shaped and keyed by external id (absent: not held).

    Args:
        after_load: True for verify (the answer must be read after this type's writes of this run), False before
            planning.
    """
    ids = list(dict.fromkeys(str(e) for e in external_ids))
    listing = sink.listing
    if not ids:
        return {}
    if listing is None:
        return sink.fetch(ids)
    now = stamps(store, run_id, target)
    if _kept_listing(store, run_id, target, indicator_type, now, after_load):
        found = _select(store, run_id, target, ids)
        if found is not None:
            log.info("read back %s %s ids from this run's listing of %s (no request)", len(ids), indicator_type, target)
            return found
    lookups = sink.lookup_requests(ids)
    expected = live_held(store, target)
    pages = max(1, math.ceil(expected / listing.page_size))
    if lookups < pages:  # a tie goes to the listing: the run's other types may read it again
        log.info(
            "read back %s %s ids by look-up: %s requests (a listing of the %s objects of ours would take %s)",
            len(ids),
            indicator_type,
            lookups,
            expected,
            pages,
        )
        return sink.fetch(ids)
    log.info(
        "read back %s %s ids by listing what %s holds of ours (about %s objects: %s requests instead of %s look-ups)",
        len(ids),
        indicator_type,
        target,
        expected,
        pages,
        lookups,
    )
    try:
        _list(store, run_id, target, listing, now, budget=lookups)
    except _TooLong:
        log.warning("the listing of %s ran past %s requests; looking the ids up instead", target, lookups)
        return sink.fetch(ids)
    found = _select(store, run_id, target, ids)
    return sink.fetch(ids) if found is None else found


def _kept_listing(
    store: SnapshotStore,
    run_id: str,
    target: str,
    indicator_type: str,
    now: dict[str, str | None],
    after_load: bool,
) -> bool:
    """Whether the run's kept listing (if any) may answer for this type now."""
    schema = store.part_schema(HELD, ALL_TYPES, run_id, target)
    if schema is None:
        return False
    covers = json.loads((schema.metadata or {}).get(COVERS, b"{}"))
    loaded, deduped = f"loaded/{indicator_type}", f"deduped/{indicator_type}"
    if loaded not in covers or covers[loaded] != now[loaded]:
        return False  # this type wrote to the target after the listing began
    if after_load:
        return covers[loaded] is not None  # None: listed before this type's writes
    # not a re-run of this type's load, nor a listing from an earlier attempt of the run
    return covers[loaded] is None and covers.get(deduped) == now[deduped]


def _list(
    store: SnapshotStore,
    run_id: str,
    target: str,
    listing: Any,
    covers: dict[str, str | None],
    budget: int,
) -> None:
    schema = HELD_SCHEMA.with_metadata({COVERS: json.dumps(covers, sort_keys=True).encode()})
    sent = 0
    with store.writer(HELD, ALL_TYPES, run_id, schema, part=target) as writer:
        for page in listing.pages():
            sent += 1
            if sent > budget:
                raise _TooLong
            writer.write(_batch(page, schema))
    log.info("listed %s of ours in %s requests; kept for this run's other types", target, sent)


def _batch(page: list[Listed], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array([item.external_id for item in page], pa.string()),
            pa.array([item.order for item in page], pa.string()),
            pa.array([json.dumps(item.payload, sort_keys=True, default=str) for item in page], pa.string()),
        ],
        schema=schema,
    )


def _select(store: SnapshotStore, run_id: str, target: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    """The oldest listed object per wanted id, reading only the wanted rows of the kept listing (memory follows the
    ids asked for, not everything the target holds)."""
    wanted = pc.field("external_id").isin(pa.array(ids, pa.string()))
    chosen = store.read_part(HELD, ALL_TYPES, run_id, target, filters=wanted)
    if chosen is None:  # removed since it was checked (someone cleaning up): the caller looks the ids up
        return None
    found: dict[str, tuple[str, str]] = {}
    for external_id, order, payload in zip(
        chosen["external_id"].to_pylist(), chosen["order"].to_pylist(), chosen["payload"].to_pylist(), strict=True
    ):
        held = found.get(external_id)
        if held is None or (order or "") < held[0]:
            found[external_id] = (order or "", payload)
    return {e: json.loads(p) for e, (_, p) in found.items()}

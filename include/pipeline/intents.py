"""The create guard's ledger, for a target that does not key on our id (Graph creates a duplicate on a second
submit of the same ``externalId``): which ids this pipeline may ever have sent there, so that creating an id it
provably never sent needs no look-up first.

- Before each step of a load, the ids it is about to send are written down (``intent`` snapshot, one file per step,
  named by its content, never overwritten by other content). A lost response or a killed process leaves them
  written, so the next attempt looks those ids up before creating them.
- The ids of every earlier ``loaded`` row (any status) count as sent too: stores from before this ledger keep their
  guarantee.
- All of that proves something only if the store saw everything of ours the target holds. The first load of a
  target lists what the app owns there once; when every object listed is one the store sent, the store is
  complete for that target and a ``ledger`` file says so. Otherwise (a new or partly lost store beside a target
  that already holds our objects) nothing is written and every create is looked up first, as without a ledger;
  the next load lists again, and once the runs have adopted those objects the ledger is written.

Layout: ``intent/indicator_type=<type>/run_id=<run>/part-<target>.<digest>.parquet`` (column ``external_id``,
``sink``) and ``intent/indicator_type=all/run_id=ledger/part-<target>.parquet``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.ports import OwnListing, Sink, SinkResult
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)

INTENT = "intent"
LEDGER_TYPE, LEDGER_RUN = "all", "ledger"
INTENT_SCHEMA = pa.schema([pa.field("external_id", pa.string(), nullable=False), pa.field("sink", pa.string())])
LEDGER_SCHEMA = pa.schema([pa.field("state", pa.string()), pa.field("since_run", pa.string())])
COMPLETE = "complete"


def sent_ids(store: SnapshotStore, indicator_type: str, target: str) -> set[str]:
    """Every id of this type the store says may have been sent to ``target``: intents and ``loaded`` rows."""
    found: set[str] = set()
    for stage in (INTENT, "loaded"):
        for run_id in store.runs(stage, indicator_type):
            table = store.read(stage, indicator_type, run_id, columns=["external_id", "sink"])
            if table.num_rows:
                found.update(table.filter(pc.equal(table["sink"], target))["external_id"].to_pylist())
    return found


@dataclass
class CreateGuard:
    """Which of a load's ids need a look-up before they may be created (see the module's docstring)."""

    store: SnapshotStore
    indicator_type: str
    target: str
    run_id: str
    complete: bool
    sent: set[str] = field(default_factory=set)

    @classmethod
    def open(
        cls, store: SnapshotStore, indicator_type: str, target: str, run_id: str, listing: OwnListing | None
    ) -> CreateGuard:
        sent = sent_ids(store, indicator_type, target)
        complete = store.read_part(INTENT, LEDGER_TYPE, LEDGER_RUN, target) is not None
        if not complete and listing is not None:
            complete = _store_saw_everything(store, target, listing)
            if complete:
                table = pa.Table.from_pylist([{"state": COMPLETE, "since_run": run_id}], schema=LEDGER_SCHEMA)
                store.write_table(INTENT, LEDGER_TYPE, LEDGER_RUN, table, part=target)
        if not complete:
            log.info("%s: the store has not seen everything of ours there; every create is looked up first", target)
        return cls(store, indicator_type, target, run_id, complete, sent)

    def never_sent(self, external_ids: Iterable[str]) -> frozenset[str]:
        """The ids the target cannot hold from us: never written down as sent, in a store that saw everything."""
        if not self.complete:
            return frozenset()
        return frozenset(e for e in external_ids if e not in self.sent)

    def record(self, external_ids: Collection[str]) -> None:
        """Write these ids down as sent, before they are sent."""
        ids = sorted(set(external_ids))
        if not ids:
            return
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]
        table = pa.table({"external_id": ids, "sink": [self.target] * len(ids)}, schema=INTENT_SCHEMA)
        self.store.write_table(INTENT, self.indicator_type, self.run_id, table, part=f"{self.target}.{digest}")
        self.sent.update(ids)


def upsert(sink: Sink, rows: pd.DataFrame, guard: CreateGuard | None) -> list[SinkResult]:
    """One load step's upserts; with a guard, the ids are written down as sent before they are sent, and those the
    ledger proves were never sent before skip the sink's look-up."""
    if guard is None:
        return sink.upsert(rows)
    ids = [str(e) for e in rows["external_id"]]
    never_sent = guard.never_sent(ids)
    guard.record(ids)
    return sink.upsert(rows, never_sent)


def _known(store: SnapshotStore, target: str) -> set[str]:
    known: set[str] = set()
    for indicator_type in SUPPORTED_TYPES:
        known |= sent_ids(store, indicator_type, target)
    return known


def _store_saw_everything(store: SnapshotStore, target: str, listing: OwnListing) -> bool:
    """List what the app owns in ``target``; stop at the first object the store never sent (read again first:
    another type's load may have written it down since)."""
    known = _known(store, target)
    pages = 0
    for page in listing.pages():
        pages += 1
        unknown = [item.external_id for item in page if item.external_id not in known]
        if unknown:
            known = _known(store, target)
            unknown = [e for e in unknown if e not in known]
        if unknown:
            log.warning(
                "%s holds %s object(s) of ours on listing page %s that this snapshot store never sent (e.g. %s): "
                "a new or partly lost store; creates are looked up first until the store has seen them",
                target,
                len(unknown),
                pages,
                unknown[0],
            )
            return False
    log.info("%s: every object of ours there (%s listing requests) is one this store sent", target, pages)
    return True

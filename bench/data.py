"""Seeded synthetic ThreatConnect pages: generated records rendered as the simulator's v3 JSON, parsed page by page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from include.pipeline import stages
from include.pipeline.dedupe import winners
from include.pipeline.mappings import SUPPORTED_TYPES, load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore
from include.pipeline.watermarks import Window
from include.threatconnect.client import V3_FIELDS
from include.threatconnect.parse import parse_page
from simulators.dataset import DEFAULT_OWNER, generate
from simulators.threatconnect import ThreatConnectService
from simulators.threatconnect.v3 import v3_item

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
END = START + dt.timedelta(days=30)
WINDOW = Window(START, END, "benchmark: the whole generated range")
PAGE_SIZE = 10_000


def per_type(count: int, types: Sequence[str] = SUPPORTED_TYPES) -> dict[str, int]:
    """Split ``count`` over the types the way ``generate`` does (round robin)."""
    return {kind: count // len(types) + (index < count % len(types)) for index, kind in enumerate(types)}


class SyntheticPages:
    """A ``stages.PageSource`` that makes each page only when asked, so memory stays one page whatever ``count``.

    A page is ``simulators.dataset.generate`` records of one type (seeded per type and page, ids made unique),
    rendered by the ThreatConnect simulator's own v3 item renderer with the fields the client asks for; that is
    the JSON a client receives. ``iter_pages`` parses it with the real parser, like the client does.
    """

    def __init__(
        self,
        seed: int,
        count: int,
        page_size: int = PAGE_SIZE,
        types: Sequence[str] = SUPPORTED_TYPES,
        owner: str = DEFAULT_OWNER,
    ) -> None:
        self.seed = seed
        self.counts = per_type(count, types)
        self.page_size = page_size
        self.types = tuple(types)
        self.owner = owner
        # The renderer reads only the owner list from the service: an empty simulator is enough.
        self._renderer = ThreatConnectService([], "bench", "bench", owners=(owner,))
        self._fields = set(V3_FIELDS)

    def records(self, indicator_type: str, page: int) -> list[dict[str, Any]]:
        """The generator's records of one page (internal form, datetimes), ids unique across types and pages."""
        type_index = self.types.index(indicator_type)
        first = page * self.page_size
        size = min(self.page_size, self.counts[indicator_type] - first)
        if size <= 0:
            return []
        records = generate(
            self.seed * 1_000_003 + type_index * 10_007 + page, size, self.owner, START, END, types=(indicator_type,)
        )
        base = 1_000_000 + (self.seed % 1000) * 10**9 + type_index * 10**8 + first
        for offset, record in enumerate(records):
            record["id"] = base + offset
        return records

    def pages(self, indicator_type: str) -> Iterator[list[dict[str, Any]]]:
        """One type's pages as v3 JSON items (what ``GET /v3/indicators`` carries in ``data``)."""
        store, fields = self._renderer, self._fields
        pages = -(-self.counts.get(indicator_type, 0) // self.page_size)
        for page in range(pages):
            yield [v3_item(store, record, fields) for record in self.records(indicator_type, page)]

    def iter_pages(
        self,
        indicator_type: str,
        modified_from: Any = None,
        modified_to: Any = None,
    ) -> Iterator[pa.RecordBatch]:
        """Parsed pages of one type (the window is the whole generated range; the arguments are ignored)."""
        for page, items in enumerate(self.pages(indicator_type)):
            yield parse_page(items, indicator_type, self.owner, page)

    def all_records(self) -> list[dict[str, Any]]:
        """Every record of every type (for a simulator that serves them)."""
        out: list[dict[str, Any]] = []
        for kind in self.types:
            pages = -(-self.counts[kind] // self.page_size)
            for page in range(pages):
                out.extend(self.records(kind, page))
        return out


def extract_all(source: SyntheticPages, store: SnapshotStore, run_id: str) -> dict[str, Any]:
    """``stages.extract`` for every type of ``source``; the summed counts."""
    rows = pages = 0
    for kind in source.types:
        summary = stages.extract(source, store, run_id, kind, WINDOW)
        rows += summary["extracted"]
        pages += summary["pages"]
    return {"extracted": rows, "pages": pages}


def transform_all(store: SnapshotStore, run_id: str, types: Sequence[str] = SUPPORTED_TYPES) -> dict[str, Any]:
    """``stages.normalize`` then ``stages.dedupe`` for every type, as the DAG's tasks call them; summed counts."""
    totals = {"raw": 0, "normalized": 0, "rejected": 0, "deduplicated": 0}
    for kind in types:
        mapping = load_mapping(kind)
        counts = stages.normalize(store, run_id, kind, lambda batch, m=mapping: normalize(batch, m))
        deduped = stages.dedupe(store, run_id, kind, winners)
        for key in ("raw", "normalized", "rejected"):
            totals[key] += counts[key]
        totals["deduplicated"] += deduped["deduplicated"]
    return totals


def load_stage(
    sink: Any, store: SnapshotStore, run_id: str, indicator_type: str, failure_threshold: float = 1.0
) -> dict[str, Any]:
    """``stages.load`` as the DAG calls it, under a lifecycle policy for the generated range."""
    from include.pipeline import lifecycle

    policy = lifecycle.Policy(interval_start=START, interval_end=END)
    return stages.load(sink, store, run_id, indicator_type, policy=policy, failure_threshold=failure_threshold)


def verify_stage(sink: Any, store: SnapshotStore, run_id: str, indicator_type: str) -> dict[str, Any]:
    """``stages.verify`` as the DAG calls it after the type's load (no earlier watermark)."""
    return dict(stages.verify(sink, store, run_id, indicator_type, previous_watermark=None))

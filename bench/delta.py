"""Delta: write requests a rerun sends over an unchanged source (target 0) and over 1% changed (one per 100
changed), and the read requests it spends checking what the target holds (target: at most one per type).

Three runs of the whole pipeline (extract -> normalize -> dedupe -> load -> verify, the lifecycle plan included) into
one snapshot store, against the simulator of each sink: a first full load, a rerun of the same source, and a rerun in
which every hundredth indicator changed its confidence (a field both sinks carry) and its lastModified. "Changed"
is counted independently of the product: deduplicated rows of the third run whose normalized confidence differs
from the first run's. Load tasks are per type, so the least a sink can send is ``ceil(changed / batch)`` per type
(Graph and Sentinel take 100 objects a write, Defender's import 500).
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from bench.common import Figure, load_average
from bench.context import Context
from bench.data import SyntheticPages, extract_all, load_stage, transform_all, verify_stage
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.parse import parse_page

UNCHANGED_TARGET = 0
CHANGE_EVERY = 100  # 1%


class ChangedPages:
    """``SyntheticPages`` with every ``every``-th indicator (by id) changed: new confidence, lastModified + 1 s."""

    def __init__(self, source: SyntheticPages, every: int = CHANGE_EVERY) -> None:
        self.source = source
        self.every = every
        self.types = source.types

    def iter_pages(
        self,
        indicator_type: str,
        modified_from: Any = None,
        modified_to: Any = None,
    ) -> Iterator[pa.RecordBatch]:
        for page, items in enumerate(self.source.pages(indicator_type)):
            for item in items:
                if item["id"] % self.every == 0:
                    item["confidence"] = (int(item.get("confidence") or 0) + 37) % 101
                    moved = dt.datetime.fromisoformat(item["lastModified"].replace("Z", "+00:00"))
                    item["lastModified"] = (moved + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            yield parse_page(items, indicator_type, self.source.owner, page)


def delta(ctx: Context) -> list[Figure]:
    """Requests of a first load, of a rerun over an unchanged source and over 1% changed, for each sink."""
    figures: list[Figure] = []
    for sink in ("sentinel", "graph", "defender"):
        figures.extend(_delta(ctx, sink))
    return figures


def _is_read(entry: tuple[Any, ...]) -> bool:
    """A logged request that reads (a GET, or Sentinel's management-plane query)."""
    return entry[2] == "GET" or entry[3].endswith("/query")


def loaded_per_type(store: SnapshotStore, run_id: str) -> dict[str, int]:
    """Indicators each type's load wrote in ``run_id`` (the floor's numerator)."""
    return {kind: store.count("loaded", kind, run_id) for kind in SUPPORTED_TYPES}


def _changed_per_type(store: SnapshotStore, first: str, later: str) -> dict[str, int]:
    changed: dict[str, int] = {}
    for kind in SUPPORTED_TYPES:
        before = dict(
            zip(
                *store.read("deduped", kind, first, columns=["external_id", "confidence"]).to_pydict().values(),
                strict=True,
            )
        )
        after = store.read("deduped", kind, later, columns=["external_id", "confidence"]).to_pydict()
        changed[kind] = sum(
            1
            for eid, conf in zip(after["external_id"], after["confidence"], strict=True)
            if eid in before and before[eid] != conf
        )
    return changed


def _delta(ctx: Context, sink_name: str) -> list[Figure]:
    from bench.load import CLIENT, TENANT, WORKSPACE, RequestLog, make_sink
    from simulators.graph import GraphService
    from simulators.mslogin import LoginService
    from simulators.sentinel import SentinelService
    from simulators.server import HttpsServer
    from simulators.tls import make_tls_material

    count = ctx.sizes["delta"]
    source = SyntheticPages(ctx.seed + 200, count, ctx.sizes["page_size"])
    store = SnapshotStore(str(ctx.workdir / f"delta-{sink_name}"))
    tls = make_tls_material(ctx.workdir / "tls-delta")
    secret = secrets.token_urlsafe(24)
    login = LoginService()
    login.register(TENANT, CLIENT, secret)
    batch = 100  # objects per write: Graph and Sentinel take 100, Defender's import 500
    if sink_name == "sentinel":
        service: Any = SentinelService(login, {WORKSPACE}, rate_limit_per_minute=1_000_000)
    elif sink_name == "defender":
        from bench.data import END
        from include.microsoft.defender.client import MAX_IMPORT
        from simulators.defender import DefenderService

        batch = MAX_IMPORT
        # Its clock stands in the generated data's month, so nothing has expired; no budget, no capacity limit.
        offset = time.time() - END.timestamp()
        service = DefenderService(login, clock=lambda: time.time() - offset, capacity=10**7)
    else:
        service = GraphService(login)
    logged = RequestLog(service)
    server = HttpsServer([login, logged], tls).start()
    login.base_url = server.base_url
    load_avg = load_average()
    requests_by_run: dict[str, int] = {}
    reads_by_run: dict[str, int] = {}
    verify_reads_by_run: dict[str, int] = {}
    loaded: dict[str, dict[str, int]] = {}
    try:
        sink, _, _ = make_sink(
            {
                "sink": sink_name,
                "base_url": server.base_url,
                "ca_file": str(tls.ca_file),
                "tenant": TENANT,
                "client_id": CLIENT,
                "secret": secret,
                "workspace": WORKSPACE,
            }
        )
        for run_id, pages in (("first", source), ("unchanged", source), ("changed", ChangedPages(source))):
            before = len(logged.entries)
            extract_all(pages, store, run_id)  # type: ignore[arg-type]
            transform_all(store, run_id)
            totals: dict[str, int] = {}
            for kind in SUPPORTED_TYPES:
                summary = load_stage(sink, store, run_id, kind, failure_threshold=0.0)
                for key in ("sent", "created", "updated", "failed"):
                    totals[key] = totals.get(key, 0) + int(summary.get(key) or 0)
            entries = logged.entries[before:]
            reads = sum(1 for e in entries if _is_read(e))
            reads_by_run[run_id] = reads
            requests_by_run[run_id] = len(entries) - reads
            loaded[run_id] = totals
            # Verify after every type's load, as the DAG's deliver tasks do once their loads are done.
            before = len(logged.entries)
            for kind in SUPPORTED_TYPES:
                verify_stage(sink, store, run_id, kind)
            verify_reads_by_run[run_id] = sum(1 for e in logged.entries[before:] if _is_read(e))
    finally:
        server.stop()
    changed = _changed_per_type(store, "first", "changed")
    minimum = sum(math.ceil(n / batch) for n in changed.values())
    total_changed = sum(changed.values())
    details = {
        "load_average": load_avg,
        "indicators": count,
        "write_requests_by_run": requests_by_run,
        "read_requests_by_run": reads_by_run,
        "verify_read_requests_by_run": verify_reads_by_run,
        "loads": loaded,
        "changed_per_type": changed,
    }
    types = len(SUPPORTED_TYPES)
    floor = sum(math.ceil(n / batch) for n in loaded_per_type(store, "first").values())
    first_all = requests_by_run["first"] + reads_by_run["first"] + verify_reads_by_run["first"]
    load_requests = requests_by_run["first"] + reads_by_run["first"]
    verify_reads = verify_reads_by_run["first"]
    unchanged = requests_by_run["unchanged"]
    after_change = requests_by_run["changed"]
    return [
        Figure(
            f"delta: {sink_name}",
            f"first load of {count:,}: write requests (for scale)",
            requests_by_run["first"],
            "requests",
            "",
            None,
            details,
        ),
        Figure(
            f"delta: {sink_name}",
            f"first load of {count:,}: read requests before writing (look-ups)",
            reads_by_run["first"],
            "requests",
            "",
            None,
        ),
        Figure(
            f"delta: {sink_name}",
            f"  verify's read requests / the load's requests ({verify_reads} / {load_requests})",
            round(100 * verify_reads / max(load_requests, 1), 1),
            "%",
            "<= 10%",
            verify_reads <= 0.1 * load_requests,
        ),
        Figure(
            f"delta: {sink_name}",
            f"  all requests of the first load and its verify / ceil(written/{batch}) per type ({first_all} / {floor})",
            round(first_all / max(floor, 1), 2),
            "x",
            "<= 1.2x",
            first_all <= 1.2 * floor,
        ),
        Figure(
            f"delta: {sink_name}",
            "  rerun, unchanged source: write requests",
            unchanged,
            "requests",
            f"= {UNCHANGED_TARGET}",
            unchanged == UNCHANGED_TARGET,
        ),
        Figure(
            f"delta: {sink_name}",
            "  rerun, unchanged source: read requests (what the target holds)",
            reads_by_run["unchanged"],
            "requests",
            f"<= {types} (one per type)",
            reads_by_run["unchanged"] <= types,
        ),
        Figure(
            f"delta: {sink_name}",
            f"  rerun, unchanged source: read requests / the first load's writes "
            f"({reads_by_run['unchanged']} / {requests_by_run['first']})",
            round(100 * reads_by_run["unchanged"] / max(requests_by_run["first"], 1), 1),
            "%",
            "<= 10% (reading back every indicator of the interval to repair drift)",
            reads_by_run["unchanged"] <= 0.1 * requests_by_run["first"],
        ),
        Figure(
            f"delta: {sink_name}",
            f"  rerun, 1% changed ({total_changed:,} indicators): write requests",
            after_change,
            "requests",
            f"<= {minimum} (ceil(changed/{batch}) per type)",
            after_change <= minimum,
            {"changed": total_changed, "minimum": minimum, "sent": loaded["changed"].get("sent")},
        ),
    ]

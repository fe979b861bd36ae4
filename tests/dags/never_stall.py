"""Whole-DAG scenarios for the never-stall promises: inputs and settings our own happy path never produces.

Each builder starts its own simulators and Airflow home (see ``conftest.Scenarios``), runs the DAG one or more times
and records what the simulators saw, counted by the simulators themselves (never by the pipeline's own counters).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.stack import OWNER
from tests.dags.dagrun import (
    FIRST_DATE,
    FIRST_INTERVAL_END,
    FIRST_INTERVAL_START,
    NEXT_DATE,
    Expected,
    Pipeline,
    Run,
)

LATER_DATE = "2026-06-04"  # the run after NEXT_DATE: interval [NEXT_DATE, LATER_DATE)

#: A URL longer than the 2,083 characters Microsoft supports (KB 208427): valid in ThreatConnect, refused by targets.
LONG_URL = "https://files.example.org/download?" + "&".join(f"k{i}=v{i:05d}" for i in range(200))
assert len(LONG_URL) > 2083
REFUSAL = "'url' must comply with RFC 1738"


def record(tc_id: int, indicator_type: str, value: str, modified: dt.datetime, **changes: Any) -> dict[str, Any]:
    """One ThreatConnect record the way the data generator writes them."""
    field_name = {"Address": "ip", "Host": "hostName", "URL": "text", "EmailAddress": "address"}[indicator_type]
    return {
        "id": tc_id,
        "type": indicator_type,
        "owner": OWNER,
        field_name: value,
        "summary": value,
        "dateAdded": modified,
        "lastModified": modified,
        "rating": 3.0,
        "confidence": 70,
        "threatAssessScore": 500,
        "active": True,
        "falsePositives": 0,
        "tags": [],
        "securityLabels": ["TLP:GREEN"],
        "description": None,
        "externalDateExpires": None,
        "_invalid": False,
        "_duplicate_of": None,
        **changes,
    }


class Seen:
    """Counts every item a simulator's fault predicate is shown (each write of each item), by key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def predicate(self, match: Callable[[dict[str, Any]], bool] = lambda item: False) -> Callable[[dict], bool]:
        def observe(item: dict[str, Any]) -> bool:
            with self._lock:
                self.counts[str(item.get(self.key))] += 1
            return match(item)

        return observe

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


def _active_ids(expected: dict[str, Expected], indicator_type: str) -> list[str]:
    return sorted(e for e, x in expected.items() if x.indicator_type == indicator_type and x.active)


def _records_of(records: list[dict[str, Any]], indicator_type: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == indicator_type]


def _conn_env(stack: Any, name: str, **changes: Any) -> dict[str, str]:
    """An ``AIRFLOW_CONN_*`` override of one of the stack's Connections (extra keys set to None are dropped)."""
    conn = json.loads(json.dumps(stack.connections()[name]))
    extra = changes.pop("extra", None)
    if extra is not None:
        conn["extra"] = {k: v for k, v in {**conn["extra"], **extra}.items() if v is not None}
    conn.update(changes)
    return {f"AIRFLOW_CONN_{name.upper()}": json.dumps(conn)}


# --------------------------------------------------------------------------------------------- item 1: quarantine
@dataclass
class Quarantine:
    pipeline: Pipeline
    victim: str  # external id Graph refuses for its content
    long_url_id: int  # ThreatConnect id of the over-long URL
    first: Run
    rerun: Run
    changed: Run
    sent: dict[str, Counter[str]] = field(default_factory=dict)  # run name -> items Graph was shown, by externalId


def build_quarantine(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> Quarantine:
    """One URL Graph refuses for its content, one over-long URL, the rest of the URLs fine: three runs."""
    urls = _records_of(ground.records, "URL")
    long_url = record(8_000_001, "URL", LONG_URL, FIRST_INTERVAL_END - dt.timedelta(hours=3))
    pipeline = Pipeline.start(workdir, "graph", [*urls, long_url], ground.database, types=["URL"])
    keep(pipeline)
    victim = _active_ids(ground.expected, "URL")[0]
    seen = Seen("externalId")
    pipeline.stack.graph.fail_items(
        seen.predicate(lambda item: item.get("externalId") == victim), count=None, code="BadRequest", message=REFUSAL
    )
    sent: dict[str, Counter[str]] = {}
    first = pipeline.run(FIRST_DATE)
    sent["first"] = seen.snapshot()
    rerun = pipeline.run(FIRST_DATE)
    sent["rerun"] = seen.snapshot() - sent["first"]
    # The refused indicator changes in ThreatConnect (inside the next interval): it is sent again.
    source = next(r for r in urls if r["id"] == ground.expected[victim].tc_id)
    pipeline.stack.tc.put({**source, "confidence": 11, "lastModified": FIRST_INTERVAL_END + dt.timedelta(hours=2)})
    changed = pipeline.run(NEXT_DATE)
    sent["changed"] = seen.snapshot() - sent["first"] - sent["rerun"]
    return Quarantine(pipeline, victim, long_url["id"], first, rerun, changed, sent)


@dataclass
class MassRejection:
    pipeline: Pipeline
    run: Run
    writes: int  # submitTiIndicators requests Graph answered
    expected_batches: int  # what one load attempt costs


def build_mass_rejection(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> MassRejection:
    """Graph refuses every Host for its content (what a mapping bug looks like): the run fails, once."""
    hosts = _records_of(ground.records, "Host")
    pipeline = Pipeline.start(workdir, "graph", hosts, ground.database, types=["Host"])
    keep(pipeline)
    pipeline.stack.graph.fail_items(
        lambda item: True, count=None, code="BadRequest", message="Invalid value for 'domainName'."
    )
    run = pipeline.run(FIRST_DATE)
    creates = len(_active_ids(ground.expected, "Host"))
    return MassRejection(pipeline, run, len(pipeline.stack.graph.writes("submitTiIndicators")), -(-creates // 100))


# --------------------------------------------------------------------------------------------- item 2: deletions
@dataclass
class Deletion:
    pipeline: Pipeline
    first: Run
    next: Run
    deleted: list[str]  # external ids deleted in ThreatConnect after the first run (dateAdded long before)
    recreated: str  # deleted and re-created with the same value inside the next window
    later: Run  # the interval after: the re-created indicator changed again in it
    replayed: Run  # the deletion's interval run again, without the re-created indicator's live row


def _build_deletion(sink: str, api_version: str) -> Callable[[Any, Path, Callable[[Pipeline], None]], Deletion]:
    def build(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> Deletion:
        addresses = _records_of(ground.records, "Address")
        # Added a month before they were last changed: the deleted listing reports that old dateAdded.
        addresses = [{**r, "dateAdded": FIRST_INTERVAL_START - dt.timedelta(days=30)} for r in addresses]
        pipeline = Pipeline.start(workdir, sink, addresses, ground.database, types=["Address"], api_version=api_version)
        keep(pipeline)
        first = pipeline.run(FIRST_DATE)
        live = _active_ids(ground.expected, "Address")
        by_tc = {r["id"]: r for r in addresses}
        chosen = [by_tc[ground.expected[e].tc_id] for e in live[:3]]
        for offset, victim in enumerate(chosen):
            pipeline.stack.tc.delete(victim["id"], FIRST_INTERVAL_END + dt.timedelta(hours=2 + offset))
        again = chosen[2]
        pipeline.stack.tc.put(
            {
                **again,
                "id": 8_100_001,
                "dateAdded": FIRST_INTERVAL_END + dt.timedelta(hours=6),
                "lastModified": FIRST_INTERVAL_END + dt.timedelta(hours=6),
            }
        )
        following = pipeline.run(NEXT_DATE)
        # The re-created indicator changes in the interval after; then the deletion's interval is run again. Its
        # deleted listing still reports the deletion of the indicator added a month before, not the one that lives.
        pipeline.stack.tc.put(
            {
                **again,
                "id": 8_100_001,
                "dateAdded": FIRST_INTERVAL_END + dt.timedelta(hours=6),
                "confidence": 13,
                "lastModified": FIRST_INTERVAL_END + dt.timedelta(days=1, hours=3),
            }
        )
        later = pipeline.run(LATER_DATE)
        replayed = pipeline.run(NEXT_DATE)
        return Deletion(pipeline, first, following, live[:2], live[2], later, replayed)

    return build


build_deletion_graph_v2 = _build_deletion("graph", "v2")
build_deletion_sentinel_v3 = _build_deletion("sentinel", "v3")


# --------------------------------------------------------------------------------------------- item 3: Sentinel
@dataclass
class Acknowledged:
    pipeline: Pipeline
    run: Run


def build_sentinel_acknowledged(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> Acknowledged:
    """``sentinel_default`` as the README's minimal form documents it: tenant, workspace, authority; no ARM."""
    pipeline = Pipeline.start(workdir, "sentinel", _records_of(ground.records, "Host"), ground.database, types=["Host"])
    keep(pipeline)
    pipeline.airflow.extra.update(
        _conn_env(
            pipeline.stack,
            "sentinel_default",
            extra={"subscription_id": None, "resource_group": None, "workspace_name": None, "management_host": None},
        )
    )
    return Acknowledged(pipeline, pipeline.run(FIRST_DATE))


@dataclass
class Dropped:
    pipeline: Pipeline
    first: Run
    next: Run
    dropped: set[str]  # external ids acknowledged and not kept in the first run
    sent_next: Counter[str]  # items the target was shown in the next run, by external id


def _build_dropped(sink: str) -> Callable[[Any, Path, Callable[[Pipeline], None]], Dropped]:
    def build(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> Dropped:
        hosts = _records_of(ground.records, "Host")
        pipeline = Pipeline.start(workdir, sink, hosts, ground.database, types=["Host"])
        keep(pipeline)
        dropped = set(_active_ids(ground.expected, "Host")[-5:])
        if sink == "graph":
            seen = Seen("externalId")
            pipeline.stack.graph.drop_acknowledged(lambda item: item.get("externalId") in dropped, count=5)
            pipeline.stack.graph.fail_items(seen.predicate(), count=None)
        else:
            seen = Seen("id")
            ids = {f"indicator--{e}" for e in dropped}
            pipeline.stack.sentinel.drop_acknowledged(lambda obj: obj.get("id") in ids, count=5)
            pipeline.stack.sentinel.fail_records(seen.predicate(), count=10**9)
        first = pipeline.run(FIRST_DATE)
        before = seen.snapshot()
        following = pipeline.run(NEXT_DATE)
        sent = Counter({k.removeprefix("indicator--"): v for k, v in (seen.snapshot() - before).items()})
        return Dropped(pipeline, first, following, dropped, sent)

    return build


build_dropped_graph = _build_dropped("graph")
build_dropped_sentinel = _build_dropped("sentinel")


# --------------------------------------------------------------------------------------------- items 3 and 5
@dataclass
class BadCredentials:
    pipeline: Pipeline
    run: Run
    tc_requests: int  # requests the ThreatConnect simulator answered
    token_requests: int  # token requests the login simulator answered


def build_bad_credentials(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> BadCredentials:
    """A wrong ThreatConnect secret key and a wrong client secret: preflight fails once, nothing else runs."""
    pipeline = Pipeline.start(workdir, "graph", _records_of(ground.records, "Host"), ground.database, types=["Host"])
    keep(pipeline)
    stack = pipeline.stack
    for name in ("threatconnect_default", "msgraph_default"):
        pipeline.airflow.extra.update(_conn_env(stack, name, password="not-the-" + "secret-0123456789"))
    run = pipeline.run(FIRST_DATE)
    return BadCredentials(pipeline, run, len(stack.tc.requests), stack.login.token_requests)

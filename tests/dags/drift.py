"""Whole-DAG scenarios where the target drifts from what the pipeline delivered (issue: verify must heal, and a
rerun must repair): objects removed or changed in the target between two runs of the same interval, beside a
third source's objects that must never be touched."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.stack import TENANT_ID, WORKSPACE_ID
from tests.dags.dagrun import FIRST_DATE, FIRST_INTERVAL_END, Expected, Pipeline, Run

OTHER_APP = "0d9e8f7a-6b5c-4d3e-9f1a-2b3c4d5e6f70"  # another TIP's app registration in the same tenant
OTHER_SOURCE = "Another TIP"


@dataclass
class Drift:
    pipeline: Pipeline
    first: Run
    rerun: Run
    removed: set[str]  # our external ids removed from the target after the first run
    changed: str  # our external id whose stored copy was altered in the target
    others_before: Any  # the third source's objects, as they were before any run
    others_after: Any  # ...and after the rerun
    rerun_writes: int  # write requests the target answered during the rerun


def _active_hosts(expected: dict[str, Expected]) -> list[str]:
    return sorted(e for e, x in expected.items() if x.indicator_type == "Host" and x.active)


def _graph_others(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    graph = pipeline.stack.graph
    return {k: dict(v) for k, v in graph.indicators.items() if graph.owners.get(k) == OTHER_APP}


def _sentinel_others(pipeline: Pipeline) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {k: dict(v) for k, v in pipeline.stack.sentinel.objects.items() if k[1] == OTHER_SOURCE}


def _defender_others(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    defender = pipeline.stack.defender
    return {k: dict(v) for k, v in defender.indicators.items() if v.get("createdBy") == OTHER_APP}


def _defender_ours(pipeline: Pipeline, external_id: str) -> list[str]:
    defender = pipeline.stack.defender
    return [
        k
        for k, v in defender.indicators.items()
        if v.get("createdBy") != OTHER_APP and str(v.get("description") or "").endswith(f"[tc:{external_id}]")
    ]


def _build(sink: str) -> Callable[[Any, Path, Callable[[Pipeline], None]], Drift]:
    def build(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> Drift:
        hosts = [r for r in ground.records if r["type"] == "Host"]
        pipeline = Pipeline.start(workdir, sink, hosts, ground.database, types=["Host"])
        keep(pipeline)
        if sink == "defender":  # Defender drops what has expired: its clock stands at the interval's end
            pipeline.stack.defender.clock = lambda: FIRST_INTERVAL_END.timestamp()
        ours = _active_hosts(ground.expected)
        removed, changed, shared = set(ours[:5]), ours[5], ours[6]
        stack = pipeline.stack
        if sink == "graph":
            # Another app's indicators, one of them carrying the same externalId as one of ours.
            for n, external_id in enumerate([shared, "other-tip-1", "other-tip-2"]):
                key = f"0000000{n}-aaaa-4bbb-8ccc-ddddeeeeffff"
                stack.graph.indicators[key] = {
                    "id": key,
                    "externalId": external_id,
                    "domainName": f"o{n}.example",
                    "action": "alert",
                    "targetProduct": "Azure Sentinel",
                    "threatType": "Malware",
                    "tlpLevel": "green",
                    "isActive": True,
                    "description": "not ours",
                    "confidence": 5,
                }
                stack.graph.owners[key] = OTHER_APP
            others_before = copy.deepcopy(_graph_others(pipeline))
        elif sink == "defender":
            for n in range(2):  # another app's indicators in the same tenant
                key = str(900_000 + n)
                stack.defender.indicators[key] = {
                    "id": key,
                    "indicatorValue": f"o{n}.example",
                    "indicatorType": "DomainName",
                    "action": "Alert",
                    "application": "Another TIP",
                    "createdBy": OTHER_APP,
                    "title": "not ours",
                    "description": "not ours",
                    "severity": "Low",
                    "expirationTime": None,
                    "_expires": None,
                }
                stack.defender.tenants[key] = TENANT_ID
            others_before = copy.deepcopy(_defender_others(pipeline))
        else:
            for n, stix in enumerate([f"indicator--{shared}", "indicator--" + "1" * 8 + "-1111-4111-8111-" + "1" * 12]):
                stack.sentinel.objects[(WORKSPACE_ID, OTHER_SOURCE, stix)] = {
                    "type": "indicator",
                    "spec_version": "2.1",
                    "id": stix,
                    "created": "2026-05-01T00:00:00.000Z",
                    "modified": "2026-05-01T00:00:00.000Z",
                    "pattern": f"[domain-name:value = 'o{n}.example']",
                    "pattern_type": "stix",
                    "valid_from": "2026-05-01T00:00:00.000Z",
                    "name": "not ours",
                }
            others_before = copy.deepcopy(_sentinel_others(pipeline))
        first = pipeline.run(FIRST_DATE)
        if sink == "graph":
            mine = {k for k, v in stack.graph.indicators.items() if stack.graph.owners.get(k) != OTHER_APP}
            for key in [k for k in mine if stack.graph.indicators[k].get("externalId") in removed]:
                del stack.graph.indicators[key]
                del stack.graph.owners[key]
            for key in mine:
                if stack.graph.indicators.get(key, {}).get("externalId") == changed:
                    stack.graph.indicators[key]["confidence"] = 1
            before = len(stack.graph.writes())
        elif sink == "defender":
            for external_id in removed:
                for key in _defender_ours(pipeline, external_id):
                    del stack.defender.indicators[key]
            for key in _defender_ours(pipeline, changed):
                held = stack.defender.indicators[key]
                held["severity"] = "Low" if held.get("severity") != "Low" else "High"
            before = len(stack.defender.writes("import"))
        else:
            ids = {f"indicator--{e}" for e in removed}
            ours_source = {k for k in stack.sentinel.objects if k[1] != OTHER_SOURCE}
            for key in [k for k in ours_source if k[2] in ids]:
                del stack.sentinel.objects[key]
            for key in ours_source:
                if key[2] == f"indicator--{changed}":
                    stack.sentinel.objects[key] = {**stack.sentinel.objects[key], "confidence": 1}
            before = len(stack.sentinel.upload_requests)
        rerun = pipeline.run(FIRST_DATE)
        if sink == "graph":
            writes = len(stack.graph.writes()) - before
            after = _graph_others(pipeline)
        elif sink == "defender":
            writes = len(stack.defender.writes("import")) - before
            after = _defender_others(pipeline)
        else:
            writes = len(stack.sentinel.upload_requests) - before
            after = _sentinel_others(pipeline)
        return Drift(pipeline, first, rerun, removed, changed, others_before, after, writes)

    return build


build_drift_graph = _build("graph")
build_drift_sentinel = _build("sentinel")
build_drift_defender = _build("defender")

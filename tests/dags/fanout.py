"""Whole-DAG scenario: several targets in one run, and a target added to the list later."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.dags.dagrun import FIRST_DATE, FIRST_INTERVAL_END, NEXT_DATE, Pipeline, Run

TYPES = ["Address", "Host"]


@dataclass
class FanOut:
    pipeline: Pipeline
    first: Run
    rerun: Run
    added: Run  # the next day, with graph added to the list
    writes: dict[str, dict[str, int]]  # run name -> target -> write requests the target answered


def _writes(pipeline: Pipeline) -> dict[str, int]:
    stack = pipeline.stack
    return {
        "sentinel": len(stack.sentinel.upload_requests),
        "defender": len(stack.defender.writes("import")),
        "graph": len(stack.graph.writes()),
    }


def build_fanout(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> FanOut:
    records = [r for r in ground.records if r["type"] in TYPES]
    pipeline = Pipeline.start(workdir, "sentinel", records, ground.database, types=TYPES)
    keep(pipeline)
    pipeline.stack.defender.clock = lambda: FIRST_INTERVAL_END.timestamp()
    pipeline.airflow.extra["AIRFLOW_VAR_TC_SENTINEL_SINK"] = json.dumps(["sentinel", "defender"])
    counts = [_writes(pipeline)]
    first = pipeline.run(FIRST_DATE)
    counts.append(_writes(pipeline))
    rerun = pipeline.run(FIRST_DATE)
    counts.append(_writes(pipeline))
    added = pipeline.run(NEXT_DATE, conf={"sink": json.dumps(["sentinel", "defender", "graph"])})
    counts.append(_writes(pipeline))
    names = ("first", "rerun", "added")
    writes = {name: {t: counts[i + 1][t] - counts[i][t] for t in counts[0]} for i, name in enumerate(names)}
    return FanOut(pipeline, first, rerun, added, writes)


@dataclass
class PartialFailure:
    pipeline: Pipeline
    run: Run


def build_partial_failure(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> PartialFailure:
    """Two types into two targets; Graph keeps failing every URL (a server error, so retries cannot help in time):
    the three healthy (type, target) pairs must still load, verify and advance, and the run fail."""
    records = [r for r in ground.records if r["type"] in ("Host", "URL")]
    pipeline = Pipeline.start(workdir, "sentinel", records, ground.database, types=["Host", "URL"])
    keep(pipeline)
    pipeline.airflow.extra["AIRFLOW_VAR_TC_SENTINEL_SINK"] = json.dumps(["sentinel", "graph"])
    pipeline.stack.graph.fail_items(lambda item: item.get("url") is not None, count=None)
    return PartialFailure(pipeline, pipeline.run(FIRST_DATE))

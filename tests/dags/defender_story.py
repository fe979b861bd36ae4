"""Whole-DAG scenarios for the Defender for Endpoint target (``sink=defender``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.dags.dagrun import FIRST_DATE, FIRST_INTERVAL_END, Pipeline, Run


@dataclass
class DefenderStory:
    pipeline: Pipeline
    first: Run
    rerun: Run
    imports_first: int  # import requests Defender answered in the first run
    imports_rerun: int


def _pin_clock(pipeline: Pipeline) -> None:
    # Defender drops indicators whose expirationTime has passed: its clock stands at the run's interval end.
    pipeline.stack.defender.clock = lambda: FIRST_INTERVAL_END.timestamp()


def _imports(pipeline: Pipeline) -> int:
    return len(pipeline.stack.defender.writes("import"))


def build_defender(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> DefenderStory:
    pipeline = Pipeline.start(workdir, "defender", ground.records, ground.database)
    keep(pipeline)
    _pin_clock(pipeline)
    first = pipeline.run(FIRST_DATE)
    imports_first = _imports(pipeline)
    rerun = pipeline.run(FIRST_DATE)
    return DefenderStory(pipeline, first, rerun, imports_first, _imports(pipeline) - imports_first)


@dataclass
class DefenderCapacity:
    pipeline: Pipeline
    run: Run
    capacity: int


def build_defender_capacity(ground: Any, workdir: Path, keep: Callable[[Pipeline], None]) -> DefenderCapacity:
    """An operator leaves room for other sources: ``capacity`` 20 on the Connection, more Hosts than that."""
    hosts = [r for r in ground.records if r["type"] == "Host"]
    pipeline = Pipeline.start(workdir, "defender", hosts, ground.database, types=["Host"])
    keep(pipeline)
    _pin_clock(pipeline)
    conn = json.loads(json.dumps(pipeline.stack.connections()["defender_default"]))
    conn["extra"]["capacity"] = 20
    pipeline.airflow.extra["AIRFLOW_CONN_DEFENDER_DEFAULT"] = json.dumps(conn)
    return DefenderCapacity(pipeline, pipeline.run(FIRST_DATE), 20)

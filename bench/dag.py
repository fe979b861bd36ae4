"""The whole DAG end to end: ``airflow dags test`` over fresh indicators against the simulators.

Two runs into Graph: one with every limit off (the simulator does not throttle, the client budget is raised), which
says what the pipeline itself costs, and one against Graph's documented budget scaled down ten times (the simulator
admits 100 requests a minute per app, the client is given 95: Graph's 1,000 and the default margin of 950, divided
by ten) so that the load spans whole budget windows within about two minutes: the share of the permitted requests
it gets admitted in those windows says how much of the budget the pipeline uses. Each reports the
wall time, requests per service by kind (write, read, token), requests per indicator, the peak RSS of the Airflow
process tree, and how the run's wall time compares with its extract + transform alone (the task instances' own
start and end times).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import Figure, load_average
from bench.context import Context
from bench.load import whole_window_efficiency

DAG_ID = "threatconnect_to_sentinel"
INTERVAL_END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
TRANSFORM_TASKS = ("extract", "normalize", "dedupe")
GRAPH_BUDGET = 1000  # tiIndicator requests a minute per app and tenant (microsoft_api.md)
SCALE = 10  # the limited run's budget is Graph's divided by this, so that it spans whole windows
SIMULATED_BUDGET, CLIENT_BUDGET = GRAPH_BUDGET // SCALE, 950 // SCALE


def dag(ctx: Context) -> list[Figure]:
    """Both whole-DAG runs."""
    sizes = ctx.sizes["dag"]
    return [*_run(ctx, sizes["free"], limited=False), *_run(ctx, sizes["limited"], limited=True)]


class _TreeMemory:
    """Samples the summed RSS of this process's children (the Airflow CLI and its task processes)."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _task_spans(database: Path) -> dict[str, list[tuple[float, float]]]:
    """``task_id -> [(start, end), ...]`` (epoch seconds) of every finished task instance of the run."""
    spans: dict[str, list[tuple[float, float]]] = {}
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT task_id, start_date, end_date FROM task_instance "
            "WHERE start_date IS NOT NULL AND end_date IS NOT NULL"
        ).fetchall()
    for task_id, start, end in rows:
        first = dt.datetime.fromisoformat(str(start)).replace(tzinfo=dt.UTC).timestamp()
        last = dt.datetime.fromisoformat(str(end)).replace(tzinfo=dt.UTC).timestamp()
        spans.setdefault(str(task_id).rsplit(".", 1)[-1], []).append((first, last))
    return spans


def _classify(stack: Any) -> dict[str, dict[str, int]]:
    """Requests each simulator answered, by kind."""
    graph = {"write": 0, "read": 0, "throttled": 0}
    for request in stack.graph.requests:
        graph["throttled"] += request.status == 429
        graph["read" if request.method == "GET" else "write"] += 1
    tc = {"read": len(stack.tc.requests)}
    tokens = {"token": stack.login.token_requests}
    return {"graph": graph, "threatconnect": tc, "login": tokens}


def _run(ctx: Context, count: int, limited: bool) -> list[Figure]:
    from devtools.airflow_env import AirflowEnv
    from devtools.airflow_services import create_pool
    from include.pipeline.mappings import SUPPORTED_TYPES
    from simulators.dataset import generate
    from simulators.stack import OWNER, start_stack

    label = "dag: graph, Graph's budget / 10" if limited else "dag: graph, limits off"
    workdir = ctx.workdir / ("dag-limited" if limited else "dag-free")
    start = INTERVAL_END - dt.timedelta(days=1)
    indicators = generate(
        seed=ctx.seed + 300, count=count, owner=OWNER, start=start, end=INTERVAL_END - dt.timedelta(hours=1)
    )
    stack = start_stack(workdir, indicators)
    if limited:
        stack.graph.rate_limit_per_minute = SIMULATED_BUDGET
    connections = stack.connections()
    connections["msgraph_default"]["extra"]["requests_per_minute"] = CLIENT_BUDGET if limited else 1_000_000
    env = stack.env(str(workdir / "data"), "graph", list(SUPPORTED_TYPES))
    env.update({f"AIRFLOW_CONN_{name.upper()}": json.dumps(conn) for name, conn in connections.items()})
    airflow = AirflowEnv(workdir / "airflow-home", extra=env)
    load_avg = load_average()
    try:
        airflow.migrate()
        create_pool(airflow)
        with _TreeMemory() as memory:
            began, began_epoch = time.perf_counter(), time.time()
            result = airflow.dags_test(DAG_ID, INTERVAL_END.strftime("%Y-%m-%d"), timeout=3600)
            wall = time.perf_counter() - began
        requests = _classify(stack)
        admitted = [r.at for r in stack.graph.requests if r.status != 429]
        held = len(set(stack.graph_external_ids()))
    finally:
        stack.stop()
    ok = result.returncode == 0
    spans = _task_spans(airflow.home / "airflow.db")
    transform = [s for name in TRANSFORM_TASKS for s in spans.get(name, [])]
    transform_wall = (max(e for _, e in transform) - min(s for s, _ in transform)) if transform else math.nan
    load_spans = spans.get("load", [])
    # Airflow's own share of the wall time: the CLI's start (imports, parsing the DAG, creating the run) before the
    # first task, and what `dags test` does between tasks. Not the pipeline's, and it sets a floor under the ratio.
    every = [s for runs in spans.values() for s in runs]
    before_first = (min(s for s, _ in every) - began_epoch) if every else math.nan
    in_tasks = sum(e - s for s, e in every)
    load_wall = sum(e - s for s, e in load_spans)
    total = sum(sum(kinds.values()) - kinds.get("throttled", 0) for kinds in requests.values())
    details = {
        "load_average": load_avg,
        "indicators": count,
        "succeeded": ok,
        "requests": requests,
        "held_in_graph": held,
        "task_seconds": {k: sum(e - s for s, e in v) for k, v in spans.items()},
        "before_first_task_seconds": before_first,
        "outside_tasks_seconds": wall - in_tasks,
        "output_tail": "" if ok else (result.stdout[-3000:] + result.stderr[-3000:]),
    }
    figures = [
        Figure(label, f"wall time, {count:,} fresh indicators", round(wall, 1), "s", "", None, details),
        Figure(label, "  run succeeded and Graph holds the indicators", f"{ok}, {held:,}", "", "", ok and held > 0),
        Figure(
            label,
            "  Graph requests: write / read / answered 429",
            f"{requests['graph']['write']} / {requests['graph']['read']} / {requests['graph']['throttled']}",
            "",
        ),
        Figure(
            label,
            "  ThreatConnect requests / token requests",
            f"{requests['threatconnect']['read']} / {requests['login']['token']}",
            "",
        ),
        Figure(label, "  requests per indicator (all services)", round(total / max(count, 1), 4), "", ""),
        Figure(label, "  peak RSS of the Airflow process tree", round(memory.peak / 2**20, 1), "MiB", ""),
    ]
    figures.append(
        Figure(
            label,
            "  Airflow's own time: before the first task / between tasks",
            f"{before_first:.1f} s / {wall - in_tasks - before_first:.1f} s",
            "",
        )
    )
    if not limited:
        ratio = wall / transform_wall if transform_wall and not math.isnan(transform_wall) else math.nan
        figures.append(
            Figure(
                label,
                "  wall time / extract+transform alone",
                round(ratio, 2),
                "x",
                "<= 2x",
                bool(ratio <= 2) if not math.isnan(ratio) else None,
                {"transform_seconds": transform_wall},
            )
        )
    else:
        # Graph requests admitted in the run's whole minutes, against what the simulator permits in them.
        ratio, inside, windows = whole_window_efficiency(admitted, SIMULATED_BUDGET, 60.0)
        figures.append(
            Figure(
                label,
                "  admitted Graph requests / permitted (whole minutes)",
                None if ratio is None else round(100 * ratio, 1),  # None: the run was shorter than a minute
                "%",
                f">= {100 * CLIENT_BUDGET // SIMULATED_BUDGET - 5}%",
                None if ratio is None else ratio >= CLIENT_BUDGET / SIMULATED_BUDGET - 0.05,
                {"load_seconds": load_wall, "admitted_in_whole_minutes": inside, "whole_minutes": windows},
            )
        )
    return figures

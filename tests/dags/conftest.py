"""Whole-DAG scenarios, each with its own simulators and Airflow home, built once per session and shared.

A ``dags test`` run costs 15-30 s, so every scenario runs at most once per session and the state its tests compare
(Graph's store, Sentinel's objects, XComs) is captured right after the run that produced it. Scenarios are
independent, so the first fixture that needs one starts every scenario the selected tests need, two at a time in
background threads (each run is a subprocess; two keep both cores busy), and each fixture waits for its own.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulators.dataset import Dataset, Intent
from simulators.stack import OWNER
from tests.dags import defender_story as ds
from tests.dags import drift as dr
from tests.dags import fanout as fo
from tests.dags import never_stall as ns
from tests.dags.dagrun import (
    FAILING_TYPE,
    FIRST_DATE,
    FIRST_INTERVAL_END,
    NEXT_DATE,
    PERMANENT_FAILURE,
    Expected,
    Pipeline,
    Run,
    expected_indicators,
    graph_items,
    graph_projection,
    migrated_database,
    seeded_dataset,
)

WORKERS = 2


@dataclass(frozen=True)
class Ground:
    """What every scenario starts from."""

    database: Path  # a migrated Airflow metadata database to copy
    records: list[dict[str, Any]]  # the seeded ThreatConnect records
    expected: dict[str, Expected]  # what the target should hold for them: the generator's intent, folded


# --------------------------------------------------------------------------------------------- captured state
@dataclass
class Captured:
    """A Graph run and Graph's state right after it."""

    run: Run
    items: list[dict[str, Any]]
    projection: dict[str, tuple[Any, ...]]
    submitted: int  # submitTiIndicators requests the Graph simulator had answered by then
    writes: int  # every non-GET Graph request by then


def _capture(pipeline: Pipeline, run: Run) -> Captured:
    graph = pipeline.stack.graph
    return Captured(
        run,
        graph_items(pipeline.stack),
        graph_projection(pipeline.stack),
        len(graph.writes("submitTiIndicators")),
        len(graph.writes()),
    )


@dataclass
class SentinelCaptured:
    """A Sentinel run and the workspace's state right after it."""

    run: Run
    objects: dict[str, dict[str, Any]]  # STIX id -> latest stored object
    keys: list[tuple[str, str, str]]  # (workspace, sourcesystem, STIX id) of every stored object
    rows: int  # append-only ingestion rows so far (what a rerun costs)


def _capture_sentinel(pipeline: Pipeline, run: Run) -> SentinelCaptured:
    stack = pipeline.stack
    return SentinelCaptured(run, stack.sentinel_objects(), list(stack.sentinel.objects), len(stack.sentinel.rows))


def _once_each(ids: set[str], key: str) -> Callable[[dict[str, Any]], bool]:
    """A fault predicate matching each of ``ids`` the first time it is sent, and never again."""
    pending = set(ids)
    lock = threading.Lock()

    def first_time(item: dict[str, Any]) -> bool:
        with lock:
            if item.get(key) in pending:
                pending.discard(item[key])
                return True
            return False

    return first_time


# --------------------------------------------------------------------------------------------- scenarios
@dataclass
class GraphStory:
    """One Airflow home: the first day, the next day (with changes that arrived late), the next day again."""

    pipeline: Pipeline
    first: Captured
    next: Captured
    rerun: Captured
    late: dict[str, Any]  # modified inside the first interval after its watermark, but arrived after that run
    next_day: dict[str, Any]  # modified inside the second interval


def _host_record(tc_id: int, host: str, modified: dt.datetime) -> dict[str, Any]:
    return {
        "id": tc_id,
        "type": "Host",
        "owner": OWNER,
        "hostName": host,
        "summary": host,
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
    }


def build_graph_story(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> GraphStory:
    pipeline = Pipeline.start(workdir, "graph", ground.records, ground.database)
    keep(pipeline)
    first = _capture(pipeline, pipeline.run(FIRST_DATE))
    late = _host_record(9_000_001, "late-arrival.example.net", FIRST_INTERVAL_END - dt.timedelta(hours=1))
    next_day = _host_record(9_000_002, "next-day.example.net", FIRST_INTERVAL_END + dt.timedelta(hours=6))
    pipeline.stack.tc.put(late)
    pipeline.stack.tc.put(next_day)
    following = _capture(pipeline, pipeline.run(NEXT_DATE))
    # The rerun repeats the second date, whose run resumes from the first run's watermark (still in XCom).
    rerun = _capture(pipeline, pipeline.run(NEXT_DATE))
    return GraphStory(pipeline, first, following, rerun, late, next_day)


@dataclass
class GraphChaos:
    pipeline: Pipeline
    captured: Captured
    partial: set[str]  # external ids whose first submit failed inside a 206


def build_graph_chaos(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> GraphChaos:
    """The clean first run again, on fresh simulators that throttle, fail and half-fail along the way."""
    pipeline = Pipeline.start(workdir, "graph", ground.records, ground.database)
    keep(pipeline)
    graph = pipeline.stack.graph
    graph.inject(429, count=2, retry_after=1, path_contains="submitTiIndicators")
    graph.inject(503, count=2, path_contains="tiIndicators")
    # Committed and then answered 504: a blind resubmit would duplicate the whole batch.
    graph.inject(504, count=1, path_contains="submitTiIndicators", processed=True)
    partial = {e for e in sorted(ground.expected) if ground.expected[e].active}
    partial = set(sorted(partial)[:6])
    graph.fail_items(_once_each(partial, "externalId"), count=len(partial))
    pipeline.stack.tc.fail_next(2, status=503, retry_after=1)
    return GraphChaos(pipeline, _capture(pipeline, pipeline.run(FIRST_DATE)), partial)


@dataclass
class GraphFailure:
    pipeline: Pipeline
    run: Run
    victim: str  # the external id Graph always refuses


def _graph_failure(
    ground: Ground, workdir: Path, keep: Callable[[Pipeline], None], conf: dict[str, Any] | None
) -> GraphFailure:
    pipeline = Pipeline.start(workdir, "graph", ground.records, ground.database, types=[FAILING_TYPE])
    keep(pipeline)
    victim = min(e.external_id for e in ground.expected.values() if e.indicator_type == FAILING_TYPE and e.active)
    pipeline.stack.graph.fail_items(
        lambda item: item.get("externalId") == victim, count=None, message=PERMANENT_FAILURE
    )
    return GraphFailure(pipeline, pipeline.run(FIRST_DATE, conf=conf), victim)


def build_graph_permanent_failure(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> GraphFailure:
    """One indicator that Graph always refuses, at the default failure threshold (0)."""
    return _graph_failure(ground, workdir, keep, None)


def build_graph_tolerated_failure(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> GraphFailure:
    """The same refused indicator, with the run's failure_threshold raised to 5 %."""
    return _graph_failure(ground, workdir, keep, {"failure_threshold": 0.05})


@dataclass
class SentinelStory:
    pipeline: Pipeline
    first: SentinelCaptured
    rerun: SentinelCaptured


def build_sentinel_story(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> SentinelStory:
    pipeline = Pipeline.start(workdir, "sentinel", ground.records, ground.database)
    keep(pipeline)
    first = _capture_sentinel(pipeline, pipeline.run(FIRST_DATE))
    return SentinelStory(pipeline, first, _capture_sentinel(pipeline, pipeline.run(FIRST_DATE)))


@dataclass
class SentinelChaos:
    pipeline: Pipeline
    captured: SentinelCaptured
    rejected_once: set[str]  # STIX ids refused per record on their first upload


def build_sentinel_chaos(ground: Ground, workdir: Path, keep: Callable[[Pipeline], None]) -> SentinelChaos:
    """The first Sentinel run again, against a workspace that throttles (with Retry-After, and bare 429s) and
    rejects some records once."""
    pipeline = Pipeline.start(workdir, "sentinel", ground.records, ground.database, sentinel_rate_limit=1)
    keep(pipeline)
    sentinel = pipeline.stack.sentinel
    # One upload per 1.5 s: back-to-back uploads of one task (a second batch, a per-record retry) get a 429 with
    # Retry-After; the real window is a minute, which would only make the test slow.
    sentinel.rate_window_seconds = 1.5
    sentinel.inject(429, count=2)  # bare 429s: no Retry-After header, no "try again in" hint
    active = sorted(e for e, x in ground.expected.items() if x.active)
    rejected_once = {f"indicator--{e}" for e in active[-6:]}
    sentinel.fail_records(_once_each(rejected_once, "id"), count=len(rejected_once))
    return SentinelChaos(pipeline, _capture_sentinel(pipeline, pipeline.run(FIRST_DATE)), rejected_once)


# Longest first, so the two workers finish at about the same time.
SCENARIOS: dict[str, Callable[[Ground, Path, Callable[[Pipeline], None]], Any]] = {
    "graph": build_graph_story,
    "sentinel": build_sentinel_story,
    "sentinel_chaos": build_sentinel_chaos,
    "graph_chaos": build_graph_chaos,
    "graph_permanent_failure": build_graph_permanent_failure,
    "graph_tolerated_failure": build_graph_tolerated_failure,
    # never stall, never lose (tests/dags/test_never_stall.py)
    "quarantine": ns.build_quarantine,
    "deletion_graph_v2": ns.build_deletion_graph_v2,
    "deletion_sentinel_v3": ns.build_deletion_sentinel_v3,
    "dropped_graph": ns.build_dropped_graph,
    "dropped_sentinel": ns.build_dropped_sentinel,
    "sentinel_acknowledged": ns.build_sentinel_acknowledged,
    "mass_rejection": ns.build_mass_rejection,
    "bad_credentials": ns.build_bad_credentials,
    # the target decides (tests/dags/test_target_drift.py)
    "drift_graph": dr.build_drift_graph,
    "drift_sentinel": dr.build_drift_sentinel,
    "drift_defender": dr.build_drift_defender,
    # Defender for Endpoint (tests/dags/test_pipeline_defender.py)
    "defender_story": ds.build_defender,
    "defender_capacity": ds.build_defender_capacity,
    # several targets (tests/dags/test_fan_out.py)
    "fanout": fo.build_fanout,
    "partial_failure": fo.build_partial_failure,
}
# The fixture that stands for each scenario; the safety tests name scenarios directly in their parameter.
SCENARIO_FIXTURES = {
    "graph_story": "graph",
    "graph_chaos": "graph_chaos",
    "graph_permanent_failure": "graph_permanent_failure",
    "graph_tolerated_failure": "graph_tolerated_failure",
    "sentinel_story": "sentinel",
    "sentinel_chaos": "sentinel_chaos",
    **{
        name: name
        for name in (
            "quarantine",
            "deletion_graph_v2",
            "deletion_sentinel_v3",
            "dropped_graph",
            "dropped_sentinel",
            "sentinel_acknowledged",
            "mass_rejection",
            "bad_credentials",
            "drift_graph",
            "drift_sentinel",
            "drift_defender",
            "defender_story",
            "defender_capacity",
            "fanout",
            "partial_failure",
        )
    },
}


class Scenarios:
    """Builds scenarios in background threads, ``WORKERS`` at a time; ``get`` waits for one."""

    def __init__(self, ground: Ground, factory: pytest.TempPathFactory) -> None:
        self.ground = ground
        self._factory = factory
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dag-scenario")
        self._futures: dict[str, Future[Any]] = {}
        self._pipelines: list[Pipeline] = []
        self._lock = threading.Lock()

    def _keep(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines.append(pipeline)

    def start(self, names: list[str]) -> None:
        for name in sorted(set(names), key=list(SCENARIOS).index):
            if name not in self._futures:
                workdir = self._factory.mktemp(name)
                self._futures[name] = self._pool.submit(SCENARIOS[name], self.ground, workdir, self._keep)

    def get(self, name: str) -> Any:
        self.start([name])
        return self._futures[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for pipeline in self._pipelines:
            pipeline.stop()


def _needed(items: list[pytest.Item]) -> list[str]:
    """The scenarios the selected tests use: by the fixtures they depend on, or by a parameter naming one."""
    names = []
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "scenarios" not in fixtures:
            continue
        names += [SCENARIO_FIXTURES[f] for f in fixtures if f in SCENARIO_FIXTURES]
        params = getattr(getattr(item, "callspec", None), "params", {})
        names += [p for p in params.values() if isinstance(p, str) and p in SCENARIOS]
    return names


@pytest.fixture(scope="session")
def seeded() -> Dataset:
    return seeded_dataset()


@pytest.fixture(scope="session")
def seeded_records(seeded: Dataset) -> list[dict[str, Any]]:
    return seeded.records


@pytest.fixture(scope="session")
def intents(seeded: Dataset) -> dict[int, Intent]:
    """What the generator means each seeded record to become, by ThreatConnect id."""
    return seeded.intents


@pytest.fixture(scope="session")
def expected(intents: dict[int, Intent]) -> dict[str, Expected]:
    return expected_indicators(intents.values())


@pytest.fixture(scope="session")
def scenarios(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    seeded_records: list[dict[str, Any]],
    expected: dict[str, Expected],
) -> Iterator[Scenarios]:
    database = migrated_database(tmp_path_factory.mktemp("airflow-template"))
    runner = Scenarios(Ground(database, seeded_records, expected), tmp_path_factory)
    runner.start(_needed(request.session.items))
    try:
        yield runner
    finally:
        runner.close()


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def graph_story(scenarios: Scenarios) -> GraphStory:
    return scenarios.get("graph")


@pytest.fixture(scope="session")
def graph_pipeline(graph_story: GraphStory) -> Pipeline:
    return graph_story.pipeline


@pytest.fixture(scope="session")
def graph_first(graph_story: GraphStory) -> Captured:
    """The first run, over ``[2026-06-01, 2026-06-02)``."""
    return graph_story.first


@pytest.fixture(scope="session")
def graph_rerun(graph_story: GraphStory) -> Captured:
    """``dags test`` of the second date again: same interval, same source, same watermark to resume from."""
    return graph_story.rerun


@pytest.fixture(scope="session")
def graph_chaos(scenarios: Scenarios) -> GraphChaos:
    return scenarios.get("graph_chaos")


@pytest.fixture(scope="session")
def graph_permanent_failure(scenarios: Scenarios) -> GraphFailure:
    return scenarios.get("graph_permanent_failure")


@pytest.fixture(scope="session")
def graph_tolerated_failure(scenarios: Scenarios) -> GraphFailure:
    return scenarios.get("graph_tolerated_failure")


@pytest.fixture(scope="session")
def sentinel_story(scenarios: Scenarios) -> SentinelStory:
    return scenarios.get("sentinel")


@pytest.fixture(scope="session")
def sentinel_first(sentinel_story: SentinelStory) -> SentinelCaptured:
    return sentinel_story.first


@pytest.fixture(scope="session")
def sentinel_rerun(sentinel_story: SentinelStory) -> SentinelCaptured:
    return sentinel_story.rerun


@pytest.fixture(scope="session")
def sentinel_chaos(scenarios: Scenarios) -> SentinelChaos:
    return scenarios.get("sentinel_chaos")


@pytest.fixture(scope="session")
def quarantine(scenarios: Scenarios) -> ns.Quarantine:
    return scenarios.get("quarantine")


@pytest.fixture(scope="session")
def deletion_graph_v2(scenarios: Scenarios) -> ns.Deletion:
    return scenarios.get("deletion_graph_v2")


@pytest.fixture(scope="session")
def deletion_sentinel_v3(scenarios: Scenarios) -> ns.Deletion:
    return scenarios.get("deletion_sentinel_v3")


@pytest.fixture(scope="session")
def dropped_graph(scenarios: Scenarios) -> ns.Dropped:
    return scenarios.get("dropped_graph")


@pytest.fixture(scope="session")
def dropped_sentinel(scenarios: Scenarios) -> ns.Dropped:
    return scenarios.get("dropped_sentinel")


@pytest.fixture(scope="session")
def sentinel_acknowledged(scenarios: Scenarios) -> ns.Acknowledged:
    return scenarios.get("sentinel_acknowledged")


@pytest.fixture(scope="session")
def mass_rejection(scenarios: Scenarios) -> ns.MassRejection:
    return scenarios.get("mass_rejection")


@pytest.fixture(scope="session")
def bad_credentials(scenarios: Scenarios) -> ns.BadCredentials:
    return scenarios.get("bad_credentials")


@pytest.fixture(scope="session")
def defender_story(scenarios: Scenarios) -> ds.DefenderStory:
    return scenarios.get("defender_story")


@pytest.fixture(scope="session")
def defender_capacity(scenarios: Scenarios) -> ds.DefenderCapacity:
    return scenarios.get("defender_capacity")


@pytest.fixture(scope="session")
def fanout(scenarios: Scenarios) -> fo.FanOut:
    return scenarios.get("fanout")


@pytest.fixture(scope="session")
def partial_failure(scenarios: Scenarios) -> fo.PartialFailure:
    return scenarios.get("partial_failure")

"""A real scheduler, api-server and dag-processor on PostgreSQL run consecutive intervals, then a backfill."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.airflow_env import AirflowEnv
from devtools.airflow_services import AirflowServices, create_pool, start_services
from devtools.postgres import PostgresServer
from include.pipeline.snapshots import SnapshotStore
from include.pipeline.watermarks import iso, parse_iso
from simulators.dataset import generate
from simulators.stack import CLIENT_ID, OWNER, Stack, start_stack

pytestmark = [pytest.mark.scheduler, pytest.mark.integration, pytest.mark.timeout(900)]

log = logging.getLogger(__name__)

DAG_ID = "threatconnect_to_sentinel"
POLICY = Path(__file__).with_name("catchup_policy.py")
# Three types keep a run short on a 2-core CI machine; File is in because one indicator yields several hashes.
TYPES = ["Address", "URL", "File"]
DAY = dt.timedelta(days=1)
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# The scheduler catches up [T-3, T-2), [T-2, T-1), [T-1, T) by itself; the backfill replays [T-6, T-3).
LIVE_INTERVALS = [(TODAY - (3 - i) * DAY, TODAY - (2 - i) * DAY) for i in range(3)]
BACKFILL_INTERVALS = [(TODAY - (6 - i) * DAY, TODAY - (5 - i) * DAY) for i in range(3)]


@dataclass
class Scenario:
    """Everything the scenario observed; collected before the processes were stopped."""

    indicators: list[dict[str, Any]]
    data_root: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    task_states: dict[str, list[tuple[str, int, str | None]]] = field(default_factory=dict)
    plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)  # (run_id, key) -> commit_watermarks XCom
    live_marks_before_backfill: dict[str, str] | None = None
    graph_store: list[dict[str, Any]] = field(default_factory=list)
    running_pids: list[int] = field(default_factory=list)  # Airflow processes seen just before the stop
    leftover_pids: list[int] = field(default_factory=list)
    failed_task_logs: str = ""  # the errors failed tasks logged, so a red test explains itself

    def runs_of(self, run_type: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.runs if r["run_type"] == run_type), key=lambda r: r["data_interval_start"])


def _interval(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return parse_iso(run["data_interval_start"]), parse_iso(run["data_interval_end"])


def _collect_run(services: AirflowServices, scenario: Scenario, run: dict[str, Any]) -> None:
    run_id = run["dag_run_id"]
    scenario.task_states[run_id] = [
        (t["task_id"], t["map_index"], t["state"]) for t in services.task_instances(DAG_ID, run_id)
    ]
    scenario.plans[run_id] = services.xcom(DAG_ID, run_id, "plan_run", "return_value") or []
    for key in ("watermarks", "backfill_watermarks"):
        scenario.xcoms[(run_id, key)] = services.xcom(DAG_ID, run_id, "commit_watermarks", key)


def _failed_task_logs(home: Path, scenario: Scenario) -> str:
    """The error events (exception type and message) of every failed or retried task's last attempt."""
    parts = []
    for run_id, states in scenario.task_states.items():
        for task_id, map_index, state in states:
            if state not in ("failed", "up_for_retry"):
                continue
            task_dir = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
            if map_index >= 0:
                task_dir = task_dir / f"map_index={map_index}"
            for path in sorted(task_dir.glob("attempt=*.log"))[-1:]:
                for line in path.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if event.get("level") == "error":
                            detail = event.get("error_detail", [])
                            errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in detail]
                            parts.append(f"{run_id} {task_id}[{map_index}] {path.name}: {event.get('event')} {errors}")
    return "\n".join(parts[:20])


def _latest_live_marks(services: AirflowServices) -> dict[str, str] | None:
    live = [r for r in services.dag_runs(DAG_ID) if r["run_type"] != "backfill"]
    if not live:
        return None
    latest = max(live, key=lambda r: r["logical_date"])
    return services.xcom(DAG_ID, latest["dag_run_id"], "commit_watermarks", "watermarks")


@pytest.fixture(scope="module")
def scenario(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Unpause (the scheduler runs three intervals), then backfill three earlier days; observe; stop everything."""
    workdir = tmp_path_factory.mktemp("scheduler")
    # Changes spread over the six days the live runs and the backfill cover together.
    indicators = generate(seed=5, count=450, owner=OWNER, start=BACKFILL_INTERVALS[0][0], end=TODAY)
    result = Scenario(indicators=indicators, data_root=workdir / "data")
    stack = start_stack(workdir, indicators)
    services: AirflowServices | None = None
    try:
        airflow = AirflowEnv(
            workdir / "airflow-home",
            sql_alchemy_conn=postgres.url,
            extra={
                **stack.env(str(result.data_root), "graph", TYPES),
                "TC_SENTINEL_TEST_START_DATE": LIVE_INTERVALS[0][0].isoformat(),
                "TC_SENTINEL_TEST_END_DATE": LIVE_INTERVALS[-1][0].isoformat(),
            },
        )
        (airflow.home / "config").mkdir(parents=True)
        shutil.copy(POLICY, airflow.home / "config" / "airflow_local_settings.py")
        airflow.migrate()
        create_pool(airflow)
        services = start_services(airflow, parallelism=4)
        _run_scenario(services, stack, result)
        result.running_pids = [p.pid for p in services.running_processes()]
        # Stop here, not at teardown, so a test can check that nothing was left running.
        result.leftover_pids = services.stop()
        yield result
    finally:
        if services is not None:
            services.stop()  # after the stop above this finds nothing to do
        stack.stop()


def _run_scenario(services: AirflowServices, stack: Stack, result: Scenario) -> None:
    try:
        services.wait_for_dag(DAG_ID)
        services.unpause(DAG_ID)
        services.wait_for_runs(DAG_ID, len(LIVE_INTERVALS), run_type="scheduled", timeout=420)
        result.live_marks_before_backfill = _latest_live_marks(services)

        # One at a time, like the DAG's max_active_runs=1 (which backfills ignore: they have their own limit, 10 by
        # default): each run plans against the delivered state the run before it wrote.
        services.backfill(DAG_ID, BACKFILL_INTERVALS[0][0], BACKFILL_INTERVALS[-1][0], max_active_runs=1)
        services.wait_for_runs(DAG_ID, len(BACKFILL_INTERVALS), run_type="backfill", timeout=300)

        result.runs = services.dag_runs(DAG_ID)
        for run in result.runs:
            _collect_run(services, result, run)
        result.graph_store = stack.graph.owned_by(CLIENT_ID)
        result.failed_task_logs = _failed_task_logs(services.airflow.home, result)
    except BaseException:
        log.error("Airflow component logs:\n%s", services.logs_tail())
        raise


def _generated(scenario: Scenario, indicator_type: str, start: dt.datetime, end: dt.datetime) -> set[int]:
    return {r["id"] for r in scenario.indicators if r["type"] == indicator_type and start <= r["lastModified"] < end}


def _rows(scenario: Scenario, stage: str, indicator_type: str, run_id: str) -> list[dict[str, Any]]:
    store = SnapshotStore(str(scenario.data_root))
    if not store.exists(stage, indicator_type, run_id):
        return []
    return store.read(stage, indicator_type, run_id).to_pylist()


def test_the_scheduler_runs_each_consecutive_interval_once_and_every_run_succeeds(scenario: Scenario) -> None:
    scheduled = scenario.runs_of("scheduled")
    assert [_interval(r) for r in scheduled] == LIVE_INTERVALS
    assert [r["state"] for r in scheduled] == ["success"] * len(LIVE_INTERVALS), scenario.failed_task_logs
    assert {r["run_type"] for r in scenario.runs} == {"scheduled", "backfill"}


def test_the_backfill_runs_each_past_interval_once_and_every_run_succeeds(scenario: Scenario) -> None:
    backfill = scenario.runs_of("backfill")
    assert [_interval(r) for r in backfill] == BACKFILL_INTERVALS
    assert [r["state"] for r in backfill] == ["success"] * len(BACKFILL_INTERVALS), scenario.failed_task_logs
    intervals = Counter(_interval(r) for r in scenario.runs)
    assert set(intervals.values()) == {1}


def test_every_task_of_every_run_succeeded(scenario: Scenario) -> None:
    for run_id, states in scenario.task_states.items():
        mapped = {(task, i) for task, i, _ in states if i >= 0}
        # No run held a retraction, so the approval gate and the retraction after it were skipped, nothing else.
        others = {(task, i, state) for task, i, state in states if state != "success"}
        assert others == {("approve_retractions", -1, "skipped"), ("retract", -1, "skipped")}, run_id
        assert len(mapped) == 5 * len(TYPES), run_id  # extract..verify mapped once per type


def test_each_run_extracts_every_change_of_its_interval_and_nothing_outside_its_window(scenario: Scenario) -> None:
    for run in scenario.runs:
        start, end = _interval(run)
        for indicator_type in TYPES:
            raw = {row["tc_id"] for row in _rows(scenario, "raw", indicator_type, run["dag_run_id"])}
            expected = _generated(scenario, indicator_type, start, end)
            assert expected, f"the data set must put {indicator_type} changes into every interval"
            # A live run also re-reads the indicator at its watermark (``lastModified >= mark``), nothing else.
            assert expected <= raw, (run["dag_run_id"], indicator_type)
            extra = raw - expected
            plan = next(j for j in scenario.plans[run["dag_run_id"]] if j["indicator_type"] == indicator_type)
            window_start = parse_iso(plan["window"]["start"])
            assert all(window_start <= _modified(scenario, tc_id) < start for tc_id in extra), extra


def _modified(scenario: Scenario, tc_id: int) -> dt.datetime:
    return next(r["lastModified"] for r in scenario.indicators if r["id"] == tc_id)


def _is_retracted(stored: dict[str, Any]) -> bool:
    return stored.get("isActive") is False


def test_every_indicator_of_every_interval_is_planned_or_rejected(scenario: Scenario) -> None:
    for run in scenario.runs:
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        for indicator_type in TYPES:
            rejected = {row["tc_id"] for row in _rows(scenario, "rejected", indicator_type, run_id)}
            planned = {row["external_id"] for row in _rows(scenario, "plan", indicator_type, run_id)}
            ids_by_tc: dict[int, set[str]] = {}
            for row in _rows(scenario, "normalized", indicator_type, run_id):
                ids_by_tc.setdefault(row["tc_id"], set()).add(row["external_id"])
            for tc_id in _generated(scenario, indicator_type, start, end):
                if tc_id in rejected:
                    continue
                assert ids_by_tc.get(tc_id), (run_id, indicator_type, tc_id, "neither normalized nor rejected")
                assert ids_by_tc[tc_id] <= planned, (run_id, indicator_type, tc_id, "normalized but not planned")


def test_the_graph_store_holds_each_delivered_indicator_exactly_once_as_its_latest_write_left_it(
    scenario: Scenario,
) -> None:
    stored = Counter(i["externalId"] for i in scenario.graph_store)
    assert stored, "nothing reached Graph"
    assert [external_id for external_id, n in stored.items() if n > 1] == []
    # Each external id's latest successful write (by version, across live runs and the backfill) decides whether
    # Graph must hold it live or retracted.
    latest: dict[str, tuple[Any, str]] = {}
    for run in scenario.runs:
        for indicator_type in TYPES:
            for row in _rows(scenario, "loaded", indicator_type, run["dag_run_id"]):
                assert row["status"] == "ok", (run["dag_run_id"], row["external_id"], row.get("error"))
                if row["external_id"] not in latest or row["stix_modified"] >= latest[row["external_id"]][0]:
                    latest[row["external_id"]] = (row["stix_modified"], row["action"])
    live = {external_id for external_id, (_, action) in latest.items() if action != "retract"}
    assert live, "no run wrote anything"
    held_live = {i["externalId"] for i in scenario.graph_store if not _is_retracted(i)}
    assert held_live == live
    assert set(stored) <= set(latest)  # nothing in Graph that no run wrote


def test_each_live_run_commits_the_latest_delivered_change_of_each_type_as_its_watermark(
    scenario: Scenario,
) -> None:
    previous: dict[str, str] = {}
    for run in scenario.runs_of("scheduled"):
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        marks = scenario.xcoms[(run_id, "watermarks")]
        assert marks is not None, run_id
        assert set(marks) == set(TYPES)
        for indicator_type in TYPES:
            plan = next(j for j in scenario.plans[run_id] if j["indicator_type"] == indicator_type)
            # The first live run reads its interval; later ones resume from the mark the run before committed.
            assert plan["previous_watermark"] == previous.get(indicator_type)
            expected_start = min(start, parse_iso(previous[indicator_type])) if previous else start
            assert parse_iso(plan["window"]["start"]) == expected_start
            assert parse_iso(plan["window"]["end"]) == end
            rejected = {row["tc_id"] for row in _rows(scenario, "rejected", indicator_type, run_id)}
            delivered = [
                r["lastModified"]
                for r in scenario.indicators
                if r["type"] == indicator_type
                and r["lastModified"] < end
                and r["id"] not in rejected
                and (not previous or r["lastModified"] >= parse_iso(previous[indicator_type]))
                and r["lastModified"] >= LIVE_INTERVALS[0][0]
            ]
            assert marks[indicator_type] == iso(max(delivered)), (run_id, indicator_type)
            assert start <= parse_iso(marks[indicator_type]) < end
            if indicator_type in previous:
                assert parse_iso(marks[indicator_type]) > parse_iso(previous[indicator_type])
        assert scenario.xcoms[(run_id, "backfill_watermarks")] is None
        previous = marks


def test_the_backfill_reads_exactly_its_intervals_and_leaves_the_live_watermark_alone(scenario: Scenario) -> None:
    live_runs = scenario.runs_of("scheduled")
    last_live = scenario.xcoms[(live_runs[-1]["dag_run_id"], "watermarks")]
    assert scenario.live_marks_before_backfill == last_live
    for run in scenario.runs_of("backfill"):
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        assert scenario.xcoms[(run_id, "watermarks")] is None
        marks = scenario.xcoms[(run_id, "backfill_watermarks")]
        assert marks is not None
        assert set(marks) == set(TYPES)
        assert all(start <= parse_iso(mark) < end for mark in marks.values())
        for job in scenario.plans[run_id]:
            assert (parse_iso(job["window"]["start"]), parse_iso(job["window"]["end"])) == (start, end)
            assert job["previous_watermark"] is None
    # The newest live marks are still those of the newest live run: the replay of the past did not move them.
    assert max(parse_iso(m) for m in last_live.values()) >= LIVE_INTERVALS[-1][0]


def test_stopping_the_services_leaves_no_airflow_process_running(scenario: Scenario) -> None:
    # The scan must see the components (api-server, scheduler and its workers, dag-processor) while they run ...
    assert len(scenario.running_pids) >= 3
    # ... and nothing with this AIRFLOW_HOME once they are stopped, LocalExecutor workers included.
    assert scenario.leftover_pids == []

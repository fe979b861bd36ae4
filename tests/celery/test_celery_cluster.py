"""CeleryExecutor for real: Redis broker, PostgreSQL, scheduler, dag-processor, api-server, triggerer and two workers
that look like two hosts, one request budget in Redis, three scheduled intervals, a backfill, and a worker killed in
the middle of a load."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.airflow_env import AirflowEnv
from devtools.airflow_services import AirflowServices, ServiceError, create_pool
from devtools.celery_cluster import CORE_COMPONENTS, Host, configure_celery, log_size, wait_for_workers
from devtools.postgres import PostgresServer
from devtools.redis import RedisServer
from include.pipeline.snapshots import SnapshotStore
from include.pipeline.watermarks import iso, parse_iso
from simulators.dataset import generate
from simulators.server import Request
from simulators.stack import CLIENT_ID, OWNER, Stack, start_stack

pytestmark = [pytest.mark.celery, pytest.mark.integration, pytest.mark.timeout(2400)]

log = logging.getLogger(__name__)

DAG_ID = "threatconnect_to_sentinel"
POLICY = Path(__file__).parents[1] / "scheduler" / "catchup_policy.py"
TYPES = ["Address", "URL", "File"]
DAY = dt.timedelta(days=1)
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
LIVE_INTERVALS = [(TODAY - (3 - i) * DAY, TODAY - (2 - i) * DAY) for i in range(3)]
BACKFILL_INTERVALS = [(TODAY - (5 - i) * DAY, TODAY - (4 - i) * DAY) for i in range(2)]
POOL_SLOTS = 3
# Graph's budget (1,000 requests a minute per app; the client keeps 950) scaled down so a run's loads and
# verifications want more than it allows even on a fast machine: the server admits 10 per 10 s, the shared client
# budget 9 per 11 s (the extra second absorbs the time between admission and arrival). A run sends about 4 writes
# per type and a few reads (creates are not looked up: the ledger proves them new), so 6,000 indicators over five
# intervals keep each run's three parallel loads above the budget.
SERVER_LIMIT, SERVER_WINDOW = 10, 10.0
CLIENT_LIMIT, CLIENT_WINDOW = 9, 11
INDICATORS = 6000


@dataclass
class Scenario:
    """Everything the scenario observed; collected before the processes were stopped."""

    indicators: list[dict[str, Any]]
    data_root: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    task_instances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)
    live_marks_before_backfill: dict[str, str] | None = None
    graph_store: list[dict[str, Any]] = field(default_factory=list)
    graph_requests: list[Any] = field(default_factory=list)
    killed: dict[str, Any] = field(default_factory=dict)  # which worker was killed during which load
    running_pids: list[int] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)
    failed_task_logs: str = ""

    def runs_of(self, run_type: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.runs if r["run_type"] == run_type), key=lambda r: r["data_interval_start"])


class SubmitGate:
    """Holds the first ``submitTiIndicators`` of File indicators inside Graph until the test lets it through.

    While it is held its task is in the middle of a load: the test kills that task's worker, then releases the
    request, which Graph then carries out for a client that is gone (created, never acknowledged), the hardest
    case for exactly-once delivery.
    """

    def __init__(self, graph: Any) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self._used = False
        self._original = graph._submit
        graph._submit = self._submit

    def _submit(self, request: Request, issued: Any) -> Any:
        if not self._used and _carries_file_hashes(request):
            self._used = True
            self.reached.set()
            self.release.wait(300)
        return self._original(request, issued)


def _carries_file_hashes(request: Request) -> bool:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return any("fileHashValue" in item for item in json.loads(request.body)["value"])
    return False


def _interval(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return parse_iso(run["data_interval_start"]), parse_iso(run["data_interval_end"])


@pytest.fixture(scope="module")
def scenario(
    postgres: PostgresServer, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """Three scheduled intervals (a worker killed during the first one's File load), then two backfilled days."""
    workdir = tmp_path_factory.mktemp("celery")
    indicators = generate(seed=7, count=INDICATORS, owner=OWNER, start=BACKFILL_INTERVALS[0][0], end=TODAY, types=TYPES)
    result = Scenario(indicators=indicators, data_root=workdir / "shared-data")
    stack = start_stack(workdir, indicators)
    stack.graph.rate_limit_per_minute = SERVER_LIMIT
    stack.graph.rate_window_seconds = SERVER_WINDOW
    gate = SubmitGate(stack.graph)
    services: AirflowServices | None = None
    try:
        env = stack.env(str(result.data_root), "graph", TYPES)
        graph_conn = stack.connections()["msgraph_default"]
        graph_conn["extra"].update(requests_per_minute=CLIENT_LIMIT, budget_window_seconds=CLIENT_WINDOW)
        env["AIRFLOW_CONN_MSGRAPH_DEFAULT"] = json.dumps(graph_conn)
        env["AIRFLOW_CONN_TC_SENTINEL_REDIS"] = json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": redis_server.port,
                "password": redis_server.password,
                "extra": {"db": 1},
            }
        )
        airflow = AirflowEnv(
            workdir / "airflow-home",
            sql_alchemy_conn=postgres.url,
            extra={
                **env,
                "TC_SENTINEL_TEST_START_DATE": LIVE_INTERVALS[0][0].isoformat(),
                "TC_SENTINEL_TEST_END_DATE": LIVE_INTERVALS[-1][0].isoformat(),
            },
        )
        (airflow.home / "config").mkdir(parents=True)
        shutil.copy(POLICY, airflow.home / "config" / "airflow_local_settings.py")
        airflow.migrate()
        create_pool(airflow, slots=POOL_SLOTS)
        services, hosts = configure_celery(airflow, postgres, redis_server, workdir / "hosts")
        services.start([*CORE_COMPONENTS, *(h.component for h in hosts)])
        wait_for_workers(services, hosts)
        _run_scenario(services, hosts, stack, gate, result)
        result.running_pids = [p.pid for p in services.running_processes()]
        result.leftover_pids = services.stop()
        yield result
    finally:
        gate.release.set()
        if services is not None:
            services.stop()
        stack.stop()


def _run_scenario(
    services: AirflowServices, hosts: list[Host], stack: Stack, gate: SubmitGate, result: Scenario
) -> None:
    try:
        services.wait_for_dag(DAG_ID)
        services.unpause(DAG_ID)
        _kill_a_worker_in_the_middle_of_a_load(services, hosts, gate, result)
        services.wait_for_runs(DAG_ID, len(LIVE_INTERVALS), run_type="scheduled", timeout=600)
        result.live_marks_before_backfill = _latest_live_marks(services)
        services.backfill(DAG_ID, BACKFILL_INTERVALS[0][0], BACKFILL_INTERVALS[-1][0], max_active_runs=1)
        services.wait_for_runs(DAG_ID, len(BACKFILL_INTERVALS), run_type="backfill", timeout=420)
        result.runs = services.dag_runs(DAG_ID)
        for run in result.runs:
            run_id = run["dag_run_id"]
            result.task_instances[run_id] = services.task_instances(DAG_ID, run_id)
            result.plans[run_id] = services.xcom(DAG_ID, run_id, "plan_run", "return_value") or []
            for key in ("watermarks", "backfill_watermarks"):
                result.xcoms[(run_id, key)] = services.xcom(DAG_ID, run_id, "commit_watermarks", key)
        result.graph_store = stack.graph.owned_by(CLIENT_ID)
        result.graph_requests = list(stack.graph.requests)
        result.failed_task_logs = _failed_task_logs(hosts, result)
    except BaseException:
        log.error("Airflow component logs:\n%s", services.logs_tail())
        raise


def _kill_a_worker_in_the_middle_of_a_load(
    services: AirflowServices, hosts: list[Host], gate: SubmitGate, result: Scenario
) -> None:
    """SIGKILL the worker whose File load is waiting for Graph's answer; restart it once the retry runs elsewhere."""
    if not gate.reached.wait(420):
        raise ServiceError(f"no File load reached Graph within 420 s\n{services.logs_tail()}")
    try:
        run = services.dag_runs(DAG_ID, "scheduled")[0]
        # load is mapped over fan_out's jobs, in their order: find the File job's map index.
        jobs = services.xcom(DAG_ID, run["dag_run_id"], "fan_out", "return_value")
        file_index = next(i for i, job in enumerate(jobs) if job["indicator_type"] == "File")
        loads = [
            t
            for t in services.task_instances(DAG_ID, run["dag_run_id"])
            if t["task_id"] == "load" and t["map_index"] == file_index and t["state"] == "running"
        ]
        assert len(loads) == 1, (jobs, services.task_instances(DAG_ID, run["dag_run_id"]))
        load = loads[0]
        victim = next(h for h in hosts if h.name == load["hostname"])
        result.killed = {
            "run_id": run["dag_run_id"],
            "map_index": load["map_index"],
            "host": victim.name,
            "try_number": load["try_number"],
            "pids": services.kill(victim.component),
        }
    finally:
        gate.release.set()  # Graph now creates the batch for a client that is gone
    log.info("killed %s during load[%s] of %s", victim.name, load["map_index"], run["dag_run_id"])
    # Airflow notices the missing heartbeat, fails the try and retries it on the worker that is left.
    deadline_runs = 60 * 6
    for _ in range(deadline_runs):
        ti = next(
            t
            for t in services.task_instances(DAG_ID, run["dag_run_id"])
            if t["task_id"] == "load" and t["map_index"] == load["map_index"]
        )
        if ti["try_number"] > load["try_number"] and ti["state"] in ("running", "success"):
            break
        threading.Event().wait(1)
    else:
        raise ServiceError(f"the killed load was not retried: {ti}\n{services.logs_tail()}")
    since = {victim.name: log_size(services, victim)}
    services.start([victim.component])  # the host comes back and takes work again
    wait_for_workers(services, [victim], since=since)


def _latest_live_marks(services: AirflowServices) -> dict[str, str] | None:
    live = [r for r in services.dag_runs(DAG_ID) if r["run_type"] != "backfill"]
    if not live:
        return None
    latest = max(live, key=lambda r: r["logical_date"])
    return services.xcom(DAG_ID, latest["dag_run_id"], "commit_watermarks", "watermarks")


def _failed_task_logs(hosts: list[Host], scenario: Scenario) -> str:
    """The error events of every failed or retried task's last attempt, from whichever host ran it."""
    parts = []
    for run_id, tis in scenario.task_instances.items():
        for ti in tis:
            if ti["state"] not in ("failed", "up_for_retry"):
                continue
            for host in hosts:
                task_dir = (
                    host.root
                    / "airflow-home"
                    / "logs"
                    / f"dag_id={DAG_ID}"
                    / f"run_id={run_id}"
                    / f"task_id={ti['task_id']}"
                )
                if ti["map_index"] >= 0:
                    task_dir = task_dir / f"map_index={ti['map_index']}"
                for path in sorted(task_dir.glob("attempt=*.log"))[-1:]:
                    for line in path.read_text(errors="replace").splitlines():
                        with contextlib.suppress(ValueError):
                            event = json.loads(line)
                            if event.get("level") == "error":
                                parts.append(
                                    f"{run_id} {ti['task_id']}[{ti['map_index']}] {host.name}: "
                                    f"{event.get('event')} {event.get('error_detail', '')}"
                                )
    return "\n".join(parts[:20])


def _rows(scenario: Scenario, stage: str, indicator_type: str, run_id: str) -> list[dict[str, Any]]:
    store = SnapshotStore(str(scenario.data_root))
    if not store.exists(stage, indicator_type, run_id):
        return []
    return store.read(stage, indicator_type, run_id).to_pylist()


# ------------------------------------------------------------------------- the runs


def test_the_cluster_runs_each_scheduled_and_backfilled_interval_once_and_every_run_succeeds(
    scenario: Scenario,
) -> None:
    assert [_interval(r) for r in scenario.runs_of("scheduled")] == LIVE_INTERVALS
    assert [_interval(r) for r in scenario.runs_of("backfill")] == BACKFILL_INTERVALS
    assert [r["state"] for r in scenario.runs] == ["success"] * len(scenario.runs), scenario.failed_task_logs
    assert set(Counter(_interval(r) for r in scenario.runs).values()) == {1}
    for run_id, tis in scenario.task_instances.items():
        # No run held a retraction, so the approval gate and the retraction after it were skipped, nothing else.
        others = sorted((t["task_id"], t["map_index"], t["state"]) for t in tis if t["state"] != "success")
        assert others == [("approve_retractions", -1, "skipped"), ("retract", -1, "skipped")], run_id


def test_mapped_tasks_ran_on_both_workers(scenario: Scenario) -> None:
    mapped = [t for tis in scenario.task_instances.values() for t in tis if t["map_index"] >= 0]
    assert {t["hostname"] for t in mapped} == {"worker-a", "worker-b"}
    # Not only the first run before the kill: the restarted worker took mapped work again.
    later = [
        t
        for run in scenario.runs
        if run["dag_run_id"] != scenario.killed["run_id"]
        for t in scenario.task_instances[run["dag_run_id"]]
        if t["map_index"] >= 0
    ]
    assert {t["hostname"] for t in later} == {"worker-a", "worker-b"}


def test_the_load_whose_worker_was_killed_was_retried_on_the_other_worker(scenario: Scenario) -> None:
    killed = scenario.killed
    assert killed["pids"], "the kill found no process of the worker"
    ti = next(
        t
        for t in scenario.task_instances[killed["run_id"]]
        if t["task_id"] == "load" and t["map_index"] == killed["map_index"]
    )
    assert ti["state"] == "success"
    assert ti["try_number"] > killed["try_number"]
    assert ti["hostname"] not in ("", None, killed["host"])


# ------------------------------------------------------------------------- the state: as on one machine


def test_the_graph_store_holds_each_delivered_indicator_exactly_once_as_its_latest_write_left_it(
    scenario: Scenario,
) -> None:
    stored = Counter(i["externalId"] for i in scenario.graph_store)
    assert stored, "nothing reached Graph"
    assert [external_id for external_id, n in stored.items() if n > 1] == []
    latest: dict[str, tuple[Any, str]] = {}
    for run in scenario.runs:
        for indicator_type in TYPES:
            for row in _rows(scenario, "loaded", indicator_type, run["dag_run_id"]):
                assert row["status"] == "ok", (run["dag_run_id"], row["external_id"], row.get("error"))
                if row["external_id"] not in latest or row["stix_modified"] >= latest[row["external_id"]][0]:
                    latest[row["external_id"]] = (row["stix_modified"], row["action"])
    live = {external_id for external_id, (_, action) in latest.items() if action != "retract"}
    assert {i["externalId"] for i in scenario.graph_store if i.get("isActive") is not False} == live
    assert set(stored) == set(latest)


def test_every_valid_indicator_of_every_interval_reached_graph(scenario: Scenario) -> None:
    for run in scenario.runs:
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        for indicator_type in TYPES:
            rejected = {row["tc_id"] for row in _rows(scenario, "rejected", indicator_type, run_id)}
            normalized = {row["tc_id"] for row in _rows(scenario, "normalized", indicator_type, run_id)}
            generated = {
                r["id"] for r in scenario.indicators if r["type"] == indicator_type and start <= r["lastModified"] < end
            }
            assert generated, f"the data set must put {indicator_type} changes into every interval"
            assert generated <= normalized | rejected, (run_id, indicator_type)
    stored = {i["externalId"] for i in scenario.graph_store}
    planned_live = {
        row["external_id"]
        for run in scenario.runs
        for t in TYPES
        for row in _rows(scenario, "plan", t, run["dag_run_id"])
        if row["action"] in ("create", "update")
    }
    assert planned_live <= stored


def test_each_live_run_commits_the_latest_delivered_change_of_each_type_as_its_watermark(scenario: Scenario) -> None:
    previous: dict[str, str] = {}
    for run in scenario.runs_of("scheduled"):
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        marks = scenario.xcoms[(run_id, "watermarks")]
        assert marks is not None, run_id
        assert set(marks) == set(TYPES), run_id
        for indicator_type in TYPES:
            plan = next(j for j in scenario.plans[run_id] if j["indicator_type"] == indicator_type)
            assert plan["previous_watermark"] == previous.get(indicator_type)
            expected_start = min(start, parse_iso(previous[indicator_type])) if previous else start
            assert parse_iso(plan["window"]["start"]) == expected_start
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
        assert scenario.xcoms[(run_id, "backfill_watermarks")] is None
        previous = marks


def test_the_backfill_reads_exactly_its_intervals_and_leaves_the_live_watermark_alone(scenario: Scenario) -> None:
    last_live = scenario.xcoms[(scenario.runs_of("scheduled")[-1]["dag_run_id"], "watermarks")]
    assert scenario.live_marks_before_backfill == last_live
    for run in scenario.runs_of("backfill"):
        run_id = run["dag_run_id"]
        start, end = _interval(run)
        assert scenario.xcoms[(run_id, "watermarks")] is None
        marks = scenario.xcoms[(run_id, "backfill_watermarks")]
        assert marks is not None
        assert set(marks) == set(TYPES)
        assert all(start <= parse_iso(mark) < end for mark in marks.values())


# ------------------------------------------------------------------------- one budget across the workers


def _admitted(scenario: Scenario) -> list[float]:
    return sorted(r.at for r in scenario.graph_requests if r.status != 429)


def test_graph_never_had_to_refuse_a_request_for_over_spending(scenario: Scenario) -> None:
    assert len(scenario.graph_requests) > 3 * SERVER_LIMIT
    assert [r for r in scenario.graph_requests if r.status == 429] == []


def test_no_window_admitted_more_than_the_budget_and_the_busiest_used_at_least_80_percent_of_it(
    scenario: Scenario,
) -> None:
    times = _admitted(scenario)
    per_window = [sum(1 for t in times[i:] if t < start + SERVER_WINDOW) for i, start in enumerate(times)]
    log.info(
        "Graph requests %s, busiest %s s window %s of %s", len(times), SERVER_WINDOW, max(per_window), SERVER_LIMIT
    )
    assert max(per_window) <= SERVER_LIMIT
    assert max(per_window) >= 0.8 * SERVER_LIMIT


def test_loads_of_several_types_ran_at_the_same_time(scenario: Scenario) -> None:
    """The pool's three slots were used: two loads of one run overlapped (on one worker or on two)."""
    overlapping = 0
    for tis in scenario.task_instances.values():
        loads = [(parse_iso(t["start_date"]), parse_iso(t["end_date"])) for t in tis if t["task_id"] == "load"]
        overlapping += sum(1 for i, a in enumerate(loads) for b in loads[i + 1 :] if a[0] < b[1] and b[0] < a[1])
    assert overlapping > 0


def test_stopping_the_cluster_leaves_no_airflow_process_running(scenario: Scenario) -> None:
    assert len(scenario.running_pids) >= 6  # api-server, scheduler, dag-processor, triggerer, two workers
    assert scenario.leftover_pids == []

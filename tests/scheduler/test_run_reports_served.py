"""Run reports through the real API server: a scheduled run and a backfill fill the ``runs`` dataset, and the
plugin's app serves their reports only to a logged-in user. The same runs' ``tc_sentinel.normalized`` asset events
trigger the example consumer DAG (``dags/examples/``), which reads the partitions the events name."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pytest
import requests

from devtools.airflow_env import AirflowEnv
from devtools.airflow_services import AirflowServices, create_pool, start_services
from devtools.postgres import PostgresServer
from include.pipeline.snapshots import quote_partition_value
from simulators.dataset import generate
from simulators.stack import OWNER, start_stack

pytestmark = [pytest.mark.scheduler, pytest.mark.integration, pytest.mark.timeout(900)]

log = logging.getLogger(__name__)

DAG_ID = "threatconnect_to_sentinel"
CONSUMER = "tc_sentinel_normalized_summary"  # dags/examples/normalized_snapshot_summary.py
POLICY = Path(__file__).with_name("catchup_policy.py")
TYPES = ["Address", "Host"]
DAY = dt.timedelta(days=1)
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
LIVE = (TODAY - 2 * DAY, TODAY - DAY)  # the one interval the scheduler runs by itself
BACKFILL = (TODAY - 4 * DAY, TODAY - 3 * DAY)


@dataclass
class Served:
    data_root: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, requests.Response] = field(default_factory=dict)
    plugins: dict[str, Any] = field(default_factory=dict)
    consumer_runs: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)  # what the consumer's runs returned, together


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("reports-served")
    result = Served(workdir / "data")
    indicators = generate(seed=13, count=120, owner=OWNER, start=BACKFILL[0], end=TODAY, types=TYPES)
    stack = start_stack(workdir, indicators)
    services: AirflowServices | None = None
    try:
        airflow = AirflowEnv(
            workdir / "airflow-home",
            sql_alchemy_conn=postgres.url,
            extra={
                **stack.env(str(result.data_root), "graph", TYPES),
                "TC_SENTINEL_TEST_START_DATE": LIVE[0].isoformat(),
                "TC_SENTINEL_TEST_END_DATE": LIVE[0].isoformat(),
            },
        )
        (airflow.home / "config").mkdir(parents=True)
        shutil.copy(POLICY, airflow.home / "config" / "airflow_local_settings.py")
        airflow.migrate()
        create_pool(airflow)
        services = start_services(airflow, parallelism=4)
        try:
            services.wait_for_dag(DAG_ID)
            services.wait_for_dag(CONSUMER)
            # A paused DAG is not queued by asset events: the consumer listens before the first run starts.
            services.unpause(CONSUMER)
            services.unpause(DAG_ID)
            services.wait_for_runs(DAG_ID, 1, run_type="scheduled", timeout=300)
            services.backfill(DAG_ID, BACKFILL[0], BACKFILL[0], max_active_runs=1)
            services.wait_for_runs(DAG_ID, 1, run_type="backfill", timeout=300)
            result.runs = services.dag_runs(DAG_ID)
            waited = time.monotonic()
            upstream = {r["dag_run_id"] for r in result.runs}
            result.consumer_runs, result.summaries = _consumed(services, upstream, timeout=300)
            log.info("the consumer caught up %.0f s after the last run of %s", time.monotonic() - waited, DAG_ID)
            _ask(services, result)
        except BaseException:
            log.error("Airflow component logs:\n%s", services.logs_tail())
            raise
        yield result
    finally:
        if services is not None:
            services.stop()
        stack.stop()


def _consumed(
    services: AirflowServices, upstream: set[str], timeout: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Wait until the consumer's runs are all finished and have summarized a partition of every upstream run.

    Not necessarily every type's: Airflow 3.3 queues one consumer run per (asset, consumer), dated by the first
    event, so an event on the same asset landing before the scheduler's next pass is left for the consumer's next
    run (README "Assets"). The first normalized event of each upstream run always triggers a consumer run.
    """
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = services.dag_runs(CONSUMER)
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            summaries = [
                s
                for r in runs
                if r["state"] == "success"
                for s in services.xcom(CONSUMER, r["dag_run_id"], "summarize", "return_value") or []
            ]
            if {s["run_id"] for s in summaries} >= upstream or any(r["state"] == "failed" for r in runs):
                return runs, summaries
        time.sleep(2)
    raise AssertionError(f"{CONSUMER} did not summarize {sorted(upstream)} within {timeout}s: {runs}, {summaries}")


def _ask(services: AirflowServices, result: Served) -> None:
    base, token = services.base_url, services.token()
    bearer = {"Authorization": f"Bearer {token}"}
    backfill = next(r for r in result.runs if r["run_type"] == "backfill")
    page = f"/tc-sentinel/reports/{quote(quote_partition_value(backfill['dag_run_id']))}.html"
    asks = {
        "index anonymous": ("/tc-sentinel/", {}, {}),
        "index bearer": ("/tc-sentinel/", bearer, {}),
        "index cookie": ("/tc-sentinel/", {}, {"_token": token}),  # what the UI's iframe sends
        "index forged": ("/tc-sentinel/", {"Authorization": "Bearer not.a.jwt"}, {}),
        "page anonymous": (page, {}, {}),
        "page bearer": (page, bearer, {}),
        "latest bearer": ("/tc-sentinel/reports/latest.html", bearer, {}),
        "escape bearer": ("/tc-sentinel/reports/..%2F..%2Fairflow-home%2Fairflow.cfg", bearer, {}),
    }
    for name, (path, headers, cookies) in asks.items():
        result.answers[name] = requests.get(f"{base}{path}", headers=headers, cookies=cookies, timeout=30)
    result.plugins = services.api("GET", "/plugins")


def test_a_scheduled_run_and_a_backfill_each_add_their_rows(served: Served) -> None:
    assert sorted(r["run_type"] for r in served.runs) == ["backfill", "scheduled"]
    assert all(r["state"] == "success" for r in served.runs), served.runs
    runs = pd.read_parquet(served.data_root / "runs")
    for run in served.runs:
        mine = runs[runs["run_id"] == run["dag_run_id"]]
        assert sorted(mine["indicator_type"]) == sorted(TYPES)
        assert set(mine["run_type"]) == {run["run_type"]}
        assert set(mine["status"]) == {"ok"}
        for indicator_type in TYPES:
            row = mine[mine["indicator_type"] == indicator_type].iloc[0]
            raw = pd.read_parquet(
                served.data_root
                / "raw"
                / f"indicator_type={indicator_type}"
                / f"run_id={quote_partition_value(run['dag_run_id'])}"
            )
            loaded = pd.read_parquet(
                served.data_root
                / "loaded"
                / f"indicator_type={indicator_type}"
                / f"run_id={quote_partition_value(run['dag_run_id'])}"
            )
            assert row["extracted"] == int((~raw["deleted"].fillna(False)).sum())
            assert row["sent"] == len(loaded)
            assert row["loaded"] == int((loaded["status"] == "ok").sum())


def test_the_reports_need_the_uis_login(served: Served) -> None:
    assert served.answers["index anonymous"].status_code == 401
    assert served.answers["page anonymous"].status_code == 401
    assert served.answers["index forged"].status_code in (401, 403)
    assert "tc-sentinel" not in served.answers["page anonymous"].text


def test_a_logged_in_user_sees_every_run_and_its_report(served: Served) -> None:
    for name in ("index bearer", "index cookie"):
        answer = served.answers[name]
        assert answer.status_code == 200, name
        for run in served.runs:
            assert run["dag_run_id"] in answer.text
    backfill = next(r for r in served.runs if r["run_type"] == "backfill")
    page = served.answers["page bearer"]
    assert page.status_code == 200
    expected = (served.data_root / "reports" / f"{quote_partition_value(backfill['dag_run_id'])}.html").read_text()
    assert page.text == expected
    assert served.answers["latest bearer"].status_code == 200


def test_only_listed_reports_are_served(served: Served) -> None:
    assert served.answers["escape bearer"].status_code == 404


def test_the_plugin_registers_the_app_and_a_navigation_entry(served: Served) -> None:
    (plugin,) = [p for p in served.plugins["plugins"] if p["name"] == "tc_sentinel"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/tc-sentinel"]
    assert [v["href"] for v in plugin["external_views"]] == ["/tc-sentinel/"]


def test_each_new_normalized_snapshot_triggers_the_example_consumer(served: Served) -> None:
    assert served.consumer_runs, "the consumer never ran"
    assert {(r["run_type"], r["state"]) for r in served.consumer_runs} == {("asset_triggered", "success")}
    consumed = [(s["run_id"], s["indicator_type"]) for s in served.summaries]
    assert len(consumed) == len(set(consumed)), "an event was consumed twice"
    assert set(consumed) <= {(r["dag_run_id"], t) for r in served.runs for t in TYPES}
    assert {run_id for run_id, _ in consumed} == {r["dag_run_id"] for r in served.runs}


def test_the_consumer_reads_the_partition_its_triggering_event_names(served: Served) -> None:
    for summary in served.summaries:
        run_id, indicator_type = summary["run_id"], summary["indicator_type"]
        partition = (
            served.data_root / "normalized" / f"indicator_type={indicator_type}" / f"run_id={quote(run_id, safe='')}"
        )
        assert Path(summary["partition"]) == partition
        frame = pd.read_parquet(partition)
        assert summary["rows"] == summary["announced_rows"] == len(frame) > 0
        assert summary["by_kind"] == {k: int(n) for k, n in frame["kind"].value_counts().items()}
        written = (
            served.data_root / "examples" / "normalized_summary" / quote(run_id, safe="") / f"{indicator_type}.json"
        )
        assert json.loads(written.read_text()) == summary

"""Every DAG file parses without import errors and keeps the shape the README promises."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_the_dag_file_imports_without_errors(dagbag, dag_file: Path) -> None:
    errors = {k: v for k, v in dagbag.import_errors.items() if Path(k).name == dag_file.name}
    assert not errors


def test_the_pipeline_maps_each_stage_over_indicator_types_in_order(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    chain = ["plan_run", "extract", "normalize", "dedupe", "fan_out", "load", "verify"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    for mapped in ("extract", "normalize", "dedupe", "load", "verify"):
        assert dag.get_task(mapped).is_mapped
    assert {"commit_watermarks", "report"} <= set(dag.task_ids)


def test_the_schedule_has_real_daily_data_intervals_not_the_zero_width_cron_trigger(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 0 * * *"


def test_load_tasks_share_the_rate_budget_pool_and_tasks_retry(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    assert dag.get_task("load").pool == "tc_sentinel_load"
    assert all(dag.get_task(t).retries >= 2 for t in ("extract", "load", "verify"))
    assert dag.max_active_runs == 1


def test_run_params_can_override_every_documented_variable(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    assert {"data_root", "sink", "indicator_types", "dry_run"} <= set(dag.params.keys())


def test_preflight_runs_before_anything_is_extracted(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    assert "plan_run" in dag.get_task("preflight").downstream_task_ids
    assert dag.get_task("preflight").upstream_task_ids == set()


def test_every_task_has_an_execution_timeout_and_the_run_a_dagrun_timeout(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    assert all(task.execution_timeout is not None for task in dag.tasks), [
        t.task_id for t in dag.tasks if t.execution_timeout is None]
    assert dag.dagrun_timeout is not None
    longest = max(task.execution_timeout for task in dag.tasks)
    assert dag.dagrun_timeout > longest


def test_every_variable_the_readme_documents_is_a_run_param(dagbag) -> None:
    import re

    readme = (DAGS.parent / "README.md").read_text()
    documented = set(re.findall(r"^\| `tc_sentinel_(\w+)` \|", readme, flags=re.MULTILINE))
    assert documented
    assert documented <= set(dagbag.dags["threatconnect_to_sentinel"].params.keys())

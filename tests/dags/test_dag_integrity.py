"""Every DAG file parses without import errors and keeps the shape the README promises."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(DAGS.rglob("*.py"))  # dags/examples/ too: the DAG processor parses subfolders


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_the_dag_file_imports_without_errors(dagbag, dag_file: Path) -> None:
    errors = {k: v for k, v in dagbag.import_errors.items() if Path(k).name == dag_file.name}
    assert not errors
    assert any(Path(d.fileloc).name == dag_file.name for d in dagbag.dags.values()), "no DAG in the file"


def test_the_pipeline_maps_each_stage_over_indicator_types_in_order(dagbag) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    chain = ["plan_run", "extract", "normalize", "dedupe", "fan_out", "load", "verify"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert {"commit_watermarks", "report"} <= set(dag.task_ids)


@pytest.mark.parametrize(
    ("group", "tasks"), [("prepare", ("extract", "normalize", "dedupe")), ("deliver", ("load", "verify"))]
)
def test_the_per_type_and_per_target_stages_are_one_mapped_task_group_each(dagbag, group, tasks) -> None:
    dag = dagbag.dags["threatconnect_to_sentinel"]
    for task_id in tasks:
        task = dag.get_task(task_id)
        mapped_group = task.get_closest_mapped_task_group()
        assert mapped_group is not None, task_id
        assert mapped_group.group_id == group, task_id
        assert task.map_index_template == "{{ type_label }}", task_id  # "Host", "Host → defender" in the UI


def test_the_tasks_that_gather_every_instance_run_when_all_are_done(dagbag) -> None:
    # One failed type or (type, target) leaves only its own group instance upstream_failed: the gathering tasks
    # must still run, so the others deliver and advance and the report names the failed one alone.
    dag = dagbag.dags["threatconnect_to_sentinel"]
    for task_id in ("fan_out", "commit_watermarks", "report"):
        assert dag.get_task(task_id).trigger_rule == "all_done", task_id


def test_the_approval_gate_sits_between_the_deliveries_and_the_watermarks(dagbag) -> None:
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    dag = dagbag.dags["threatconnect_to_sentinel"]
    chain = ["verify", "held_retractions", "approve_retractions", "retract", "commit_watermarks"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert "retract" in dag.get_task("report").upstream_task_ids
    assert dag.get_task("held_retractions").trigger_rule == "all_done"  # asks even when one delivery failed
    gate = dag.get_task("approve_retractions")
    assert isinstance(gate, ApprovalOperator)
    assert gate.defaults == ["Reject"]  # the answer the timeout gives
    assert dag.get_task("retract").trigger_rule == "all_success"  # skipped unless approved


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
        t.task_id for t in dag.tasks if t.execution_timeout is None
    ]
    assert dag.dagrun_timeout is not None
    longest = max(task.execution_timeout for task in dag.tasks)
    assert dag.dagrun_timeout > longest


def _readme_variables() -> dict[str, str]:
    """The README's Variables table: name without the prefix -> the default column's text."""
    readme = (DAGS.parent / "README.md").read_text()
    rows = re.findall(r"^\| `tc_sentinel_(\w+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE)
    assert rows, "the README's Variables table is gone"
    return dict(rows)


def _readme_run_only_params() -> set[str]:
    readme = (DAGS.parent / "README.md").read_text()
    line = re.search(r"^Run params without a Variable: (.*)$", readme, flags=re.MULTILINE)
    assert line, "the README no longer lists the run params without a Variable"
    return set(re.findall(r"`(\w+)`", line.group(1)))


def test_the_readme_variables_and_the_dag_params_agree(dagbag) -> None:
    from include.pipeline.config import RUN_ONLY_DEFAULTS, VARIABLE_DEFAULTS

    params = dagbag.dags["threatconnect_to_sentinel"].params
    documented = _readme_variables()
    assert set(documented) | _readme_run_only_params() == set(params.keys())
    assert set(documented) == set(VARIABLE_DEFAULTS)
    assert _readme_run_only_params() == set(RUN_ONLY_DEFAULTS)
    for name, default in documented.items():
        try:
            value = json.loads(default)  # numbers and lists; names and paths are plain text
        except ValueError:
            value = default
        assert value == VARIABLE_DEFAULTS[name], name


def test_every_param_is_typed_and_only_variable_overrides_default_to_empty(dagbag) -> None:
    from include.pipeline.config import RUN_ONLY_DEFAULTS, VARIABLE_DEFAULTS

    params = dagbag.dags["threatconnect_to_sentinel"].params
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("type"), name
        if name in VARIABLE_DEFAULTS:
            # None means "not given": the Variable applies, else the default the description states.
            assert param.value is None, name
            assert "null" in param.schema["type"], name
            assert f"tc_sentinel_{name}" in param.description, name
        else:
            assert param.value is RUN_ONLY_DEFAULTS[name], name
            assert param.schema["type"] == "boolean", name


STAGE_OUTLETS = {
    "extract": ["tc_sentinel.raw"],
    "normalize": ["tc_sentinel.normalized", "tc_sentinel.rejected"],
    "dedupe": ["tc_sentinel.deduped"],
    "load": ["tc_sentinel.plan", "tc_sentinel.loaded"],
    "verify": ["tc_sentinel.verified"],
    "report": ["tc_sentinel.report"],
}


@pytest.mark.parametrize(("task_id", "names"), STAGE_OUTLETS.items())
def test_each_stage_declares_the_assets_of_the_snapshots_it_writes(dagbag, task_id, names) -> None:
    task = dagbag.dags["threatconnect_to_sentinel"].get_task(task_id)
    assert [a.name for a in task.outlets] == names
    assert all(a.uri.startswith("x-tc-sentinel://") for a in task.outlets)


def test_the_example_consumer_is_scheduled_on_the_normalized_snapshot_asset(dagbag) -> None:
    consumer = dagbag.dags["tc_sentinel_normalized_summary"]
    produced = dagbag.dags["threatconnect_to_sentinel"].get_task("normalize").outlets[0]
    assert list(consumer.timetable.asset_condition.objects) == [produced]

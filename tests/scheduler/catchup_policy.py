"""Cluster policy for the scheduler test: the DAG catches up from a start date the test chooses.

The test copies this file to ``$AIRFLOW_HOME/config/airflow_local_settings.py`` of its throwaway Airflow, where every
component imports it. The production DAG keeps ``catchup=False`` and its own ``start_date``; only here, with
``TC_SENTINEL_TEST_START_DATE`` set, does the scheduler run several consecutive intervals by itself.
"""

from __future__ import annotations

import datetime as dt
import os

DAG_ID = "threatconnect_to_sentinel"


def dag_policy(dag) -> None:
    """Give the DAG a recent start, an end at the test's last interval, and catchup (Airflow's cluster-policy hook).

    Args:
        dag: the DAG Airflow just parsed; only ``threatconnect_to_sentinel`` is changed, and only when both
            ``TC_SENTINEL_TEST_START_DATE`` and ``TC_SENTINEL_TEST_END_DATE`` are set.
    """
    start = os.environ.get("TC_SENTINEL_TEST_START_DATE")
    end = os.environ.get("TC_SENTINEL_TEST_END_DATE")
    if not start or not end or dag.dag_id != DAG_ID:
        return
    start_date = dt.datetime.fromisoformat(start).astimezone(dt.UTC)
    end_date = dt.datetime.fromisoformat(end).astimezone(dt.UTC)
    dag.start_date = start_date
    # The last interval's start: a test that runs across midnight still gets exactly the intervals it expects.
    dag.end_date = end_date
    dag.catchup = True
    # The scheduler starts from the earliest start date of the DAG *and its tasks*, which inherited the original.
    # The end stays the DAG's alone: it stops the schedule, while a manual run after it (the approval gate's runs in
    # test_run_reports_served.py) still gets every task (a task's own end_date would leave such a run empty).
    for task in dag.tasks:
        task.start_date = start_date

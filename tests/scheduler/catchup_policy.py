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
            ``TC_SENTINEL_TEST_START_DATE`` and ``TC_SENTINEL_TEST_END_DATE`` are set (the file named by
            ``TC_SENTINEL_TEST_END_DATE_FILE``, once it exists, overrides the end).
    """
    start = os.environ.get("TC_SENTINEL_TEST_START_DATE")
    end = os.environ.get("TC_SENTINEL_TEST_END_DATE")
    # A test may move the end later while the services run (the next parse picks it up): a file wins when present.
    end_file = os.environ.get("TC_SENTINEL_TEST_END_DATE_FILE")
    if end_file and os.path.exists(end_file):
        with open(end_file, encoding="utf-8") as moved:
            end = moved.read().strip()
    if not start or not end or dag.dag_id != DAG_ID:
        return
    start_date = dt.datetime.fromisoformat(start).astimezone(dt.UTC)
    end_date = dt.datetime.fromisoformat(end).astimezone(dt.UTC)
    dag.start_date = start_date
    # The last interval's start: a test that runs across midnight still gets exactly the intervals it expects.
    dag.end_date = end_date
    dag.catchup = True
    # The scheduler starts from the earliest start date of the DAG *and its tasks*, which inherited the original.
    for task in dag.tasks:
        task.start_date = start_date
        task.end_date = end_date

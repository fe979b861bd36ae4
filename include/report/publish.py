"""What the ``report`` task adds to its text table: the run's rows in ``runs`` and its HTML report."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from include.pipeline.snapshots import SnapshotStore
from include.report import html, runs

log = logging.getLogger(__name__)


def publish(
    planned: Sequence[Mapping[str, Any]] | None,
    finished: Sequence[Mapping[str, Any] | None] | None,
    run: runs.RunInfo,
    failed_labels: Sequence[str] = (),
) -> str | None:
    """Append the run's rows to the ``runs`` dataset and write its report; returns the report's location, or None
    when the run planned nothing (it failed before ``plan_run`` resolved the configuration)."""
    planned = [p for p in planned or [] if p]
    if not planned:
        return None
    store = SnapshotStore(planned[0]["config"]["data_root"])
    runs.write(store, runs.rows(store, run, planned, list(finished or []), failed_labels))
    return html.write(store, run.run_id)


def publish_from_context(
    context: Mapping[str, Any],
    planned: Sequence[Mapping[str, Any]] | None,
    finished: Sequence[Mapping[str, Any] | None] | None,
    failed_labels: Sequence[str],
) -> Exception | None:
    """:func:`publish` for the ``report`` task: the run's identity from its Airflow context; logs where the report
    is. An error is logged and returned, for the task to raise after its own verdict."""
    run_type = context["dag_run"].run_type
    run_type = str(getattr(run_type, "value", run_type))  # an enum under `dags test`, a string elsewhere
    run = runs.RunInfo(str(context["run_id"]), run_type, context["data_interval_start"], context["data_interval_end"])
    try:
        location = publish(planned, finished, run, failed_labels)
    except Exception as exc:
        log.exception("the run report could not be written")
        return exc
    log.info(
        "run report: %s (every run: <data_root>/runs and <data_root>/reports; in the Airflow UI: Browse → Run reports)",
        location or "none (the run planned nothing)",
    )
    return None

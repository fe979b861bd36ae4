"""
### ThreatConnect → Microsoft Sentinel

Moves ThreatConnect indicators into Microsoft Sentinel, one mapped task instance per indicator type:
**extract → normalize → dedupe → load → verify**, then the watermarks are committed and a summary is printed.

* **extract** reads the type's indicators modified in the run's window from the ThreatConnect REST API (v2 or v3,
  HMAC-signed) into the `raw` Parquet snapshot, page by page.
* **normalize** canonicalises and validates values (`include/mappings/*.yaml` says how each type maps) into
  `normalized`; invalid values go to `rejected` with the reason.
* **dedupe** keeps one row per (type, canonical value), the most recent.
* **load** plans against what earlier runs delivered (create, update, refresh before expiry, retract what
  ThreatConnect retired, skip what is unchanged; the plan goes to the `plan` snapshot), refuses a mass retraction,
  then writes only the plan's changes to the target chosen by `tc_sentinel_sink` (Graph `tiIndicators` or
  Sentinel's STIX objects upload API), keyed on a deterministic external id, recording every write in `loaded`.
  With the param `dry_run` it stops after the plan.
* **verify** reads every write back and fails the run when anything is missing or different.

Each run covers its data interval; a live run also resumes from the last committed watermark of each type so a
failed or skipped run leaves no gap, while a backfill reads exactly its interval and never moves the live watermark.
Configuration: Connections `threatconnect_default`, `msgraph_default`, `sentinel_default`; Variables
`tc_sentinel_data_root`, `tc_sentinel_sink`, `tc_sentinel_indicator_types` (each overridable by the run param of the
same name without the prefix). See the README.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, TriggerRule, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.pipeline import config, summary, watermarks
from include.pipeline import stages as st
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)

DAG_ID = "threatconnect_to_sentinel"
POOL = "tc_sentinel_load"
WATERMARK_KEY = "watermarks"
# Deployment knob read at parse time (no I/O): how long a failed task waits before its retry.
RETRY_DELAY = dt.timedelta(seconds=int(os.environ.get("TC_SENTINEL_RETRY_DELAY_SECONDS", "120")))


def _label(job: dict[str, Any]) -> None:
    """Name the mapped instance after its indicator type in the UI and logs."""
    get_current_context()["type_label"] = job["indicator_type"]


def _store(job: dict[str, Any]) -> SnapshotStore:
    return SnapshotStore(job["config"]["data_root"])


def _previous_watermarks(context: Any) -> dict[str, str]:
    """The last committed live watermarks (XCom of an earlier run's commit task), or none."""
    previous = context["ti"].xcom_pull(
        task_ids="commit_watermarks", key=WATERMARK_KEY, include_prior_dates=True, map_indexes=-1
    )
    return dict(previous or {})


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["threat-intel", "threatconnect", "sentinel"],
    default_args={"retries": 2, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True},
    params={
        "data_root": Param(None, type=["null", "string"], description="snapshot root: a path or an fsspec URL"),
        "sink": Param(None, type=["null", "string"], enum=[None, *config.SINKS], description="graph or sentinel"),
        "indicator_types": Param(None, type=["null", "array"], description="ThreatConnect types to move"),
        "failure_threshold": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                   description="share of indicators that may fail to load before the task fails"),
        "dry_run": Param(None, type=["null", "boolean"], description="plan only: write the plan, send nothing"),
        "allow_mass_retraction": Param(None, type=["null", "boolean"],
                                       description="let this run retract more than the guard allows"),
        "reconcile": Param(None, type=["null", "boolean"],
                           description="list ThreatConnect's full active set this run and retract orphans"),
    },
    render_template_as_native_obj=True,
)
def threatconnect_to_sentinel() -> None:
    @task(multiple_outputs=False)
    def plan_run() -> list[dict[str, Any]]:
        """Resolve the configuration and each type's extraction window (one job per type)."""
        context = get_current_context()
        cfg = config.resolve(context["params"], lambda key: Variable.get(key, default=None), SUPPORTED_TYPES)
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        start, end = context["data_interval_start"], context["data_interval_end"]
        jobs = []
        reconcile = config.reconcile_due(cfg, end.toordinal(), live)
        for indicator_type in cfg.indicator_types:
            window = watermarks.extraction_window(indicator_type, start, end, previous, live)
            jobs.append({"indicator_type": indicator_type, "run_id": context["run_id"], "live": live,
                         "config": cfg.as_dict(), "window": window.as_dict(), "reconcile": reconcile,
                         "interval": {"start": watermarks.iso(start), "end": watermarks.iso(end)},
                         "previous_watermark": previous.get(indicator_type)})
        log.info("run plan: %s", [(j["indicator_type"], j["window"]) for j in jobs])
        return jobs

    @task(map_index_template="{{ type_label }}", multiple_outputs=False)
    def extract(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch
        from tc_sentinel.hooks import ThreatConnectHook

        _label(job)
        window = watermarks.Window(watermarks.parse_iso(job["window"]["start"]),
                                   watermarks.parse_iso(job["window"]["end"]), job["window"]["reason"])
        client = ThreatConnectHook().get_conn()
        mapping = load_mapping(job["indicator_type"])
        job["owner"] = client.owner
        job["extract"] = st.extract(client, _store(job), job["run_id"], job["indicator_type"], window,
                                    lambda batch: normalize_batch(batch, mapping), reconcile=job["reconcile"])
        return job

    @task(map_index_template="{{ type_label }}", multiple_outputs=False)
    def normalize(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch

        _label(job)
        mapping = load_mapping(job["indicator_type"])
        job["normalize"] = st.normalize(_store(job), job["run_id"], job["indicator_type"],
                                        lambda batch: normalize_batch(batch, mapping))
        return job

    @task(map_index_template="{{ type_label }}", multiple_outputs=False)
    def dedupe(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.dedupe import winners

        _label(job)
        job["dedupe"] = st.dedupe(_store(job), job["run_id"], job["indicator_type"], winners)
        return job

    @task(map_index_template="{{ type_label }}", pool=POOL, multiple_outputs=False)
    def load(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.lifecycle import Policy
        from include.pipeline.mappings import load_mapping
        from tc_sentinel.hooks import sink

        _label(job)
        cfg = job["config"]
        expiry = load_mapping(job["indicator_type"]).expiration
        policy = Policy(
            interval_start=watermarks.parse_iso(job["interval"]["start"]),
            interval_end=watermarks.parse_iso(job["interval"]["end"]),
            refresh_within=dt.timedelta(days=cfg["refresh_within_days"]),
            expiry_days=expiry.days_for,
            retraction_guard=cfg["retraction_guard"],
            allow_mass_retraction=cfg["allow_mass_retraction"],
        )
        target = sink(cfg["sink"], job["owner"])
        job["load"] = st.load(target, _store(job), job["run_id"], job["indicator_type"], policy,
                              failure_threshold=cfg["failure_threshold"], dry_run=cfg["dry_run"])
        return job

    @task(map_index_template="{{ type_label }}", multiple_outputs=False)
    def verify(job: dict[str, Any]) -> dict[str, Any]:
        from tc_sentinel.hooks import sink

        _label(job)
        target = sink(job["config"]["sink"], job["owner"])
        job["verify"] = st.verify(target, _store(job), job["run_id"], job["indicator_type"],
                                  job["previous_watermark"], dry_run=job["config"]["dry_run"])
        return job

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def commit_watermarks(jobs: list[dict[str, Any]]) -> dict[str, str]:
        """Advance each verified type's watermark; carry the others forward unchanged."""
        context = get_current_context()
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        marks = dict(previous)
        for job in jobs:
            if job and job.get("verify", {}).get("watermark"):
                marks[job["indicator_type"]] = job["verify"]["watermark"]
        # Backfills keep their marks under another key: the live chain is never moved by replaying the past.
        context["ti"].xcom_push(key=WATERMARK_KEY if live else "backfill_watermarks", value=marks)
        log.info("watermarks (%s): %s", "live" if live else "backfill", marks)
        return marks

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def report(jobs: list[dict[str, Any]], planned: list[dict[str, Any]]) -> dict[str, Any]:
        """Print the per-type summary; fail the run when any type did not make it through verify."""
        result = summary.summarize([j for j in jobs if j], [p["indicator_type"] for p in planned])
        log.info("\n%s", summary.render(result))
        if result["failed_types"]:
            raise AirflowFailException(f"indicator types that did not complete: {result['failed_types']}")
        return result

    jobs = plan_run()
    verified = verify.expand(job=load.expand(job=dedupe.expand(job=normalize.expand(job=extract.expand(job=jobs)))))
    marks = commit_watermarks(verified)
    outcome = report(verified, jobs)
    marks >> outcome


threatconnect_to_sentinel()

"""
### ThreatConnect → Microsoft Sentinel

Moves ThreatConnect indicators into Microsoft Sentinel, one mapped task instance per indicator type:
**preflight → extract → normalize → dedupe → load → verify**, then the watermarks are committed and a summary is
printed.

* **preflight** checks every Connection the run needs (fields, hosts, a signed ThreatConnect request, a token for
  the target) and fails with one message naming the Connection before anything is extracted or sent.
* **extract** reads the type's indicators modified in the run's window from the ThreatConnect REST API (v2 or v3,
  HMAC-signed) into the `raw` Parquet snapshot, page by page.
* **normalize** canonicalises and validates values (`include/mappings/*.yaml` says how each type maps) into
  `normalized`; invalid values go to `rejected` with the reason.
* **dedupe** keeps one row per (type, canonical value), the most recent.
* **load** plans against what earlier runs delivered (create, update, refresh before expiry, retract what
  ThreatConnect retired, skip what is unchanged; the plan goes to the `plan` snapshot), refuses a mass retraction,
  then writes only the plan's changes to the target chosen by `tc_sentinel_sink` (Graph `tiIndicators`,
  Sentinel's STIX objects upload API, or Defender for Endpoint's indicators API), keyed on a deterministic
  external id, recording every write in `loaded`.
  With the param `dry_run` it stops after the plan. Items the target refuses for their content are quarantined
  (recorded with the target's message, not sent again until they change); only more than `rejection_threshold`
  of a type's writes fails the run.
* **verify** reads every write back (or, for Sentinel without management-plane coordinates, relies on the upload's
  acknowledgements) and fails the run when anything is missing or different; what it finds missing is recorded as
  not delivered, so the next run sends it again.

Errors no retry can fix (credentials, permissions, configuration, the mass-retraction guard, a mapping the target
refuses wholesale) fail the task at once; transient ones are retried. The mapped stages run for every upstream
instance that succeeded (trigger rule `all_done`): one failing type or target fails the run and holds its own
watermark, but never stops the others from loading, verifying and advancing theirs.

Each run covers its data interval; a live run also resumes from the last committed watermark of each type so a
failed or skipped run leaves no gap, while a backfill reads exactly its interval and never moves the live watermark.
Configuration: Connections `threatconnect_default`, `msgraph_default`, `sentinel_default`, `defender_default`; Variables
`tc_sentinel_data_root`, `tc_sentinel_sink`, `tc_sentinel_indicator_types` (each overridable by the run param of the
same name without the prefix). See the README.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, TriggerRule, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from include.pipeline import config, summary, watermarks
from include.pipeline import stages as st
from include.pipeline.errors import PermanentError
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)

DAG_ID = "threatconnect_to_sentinel"
POOL = "tc_sentinel_load"
WATERMARK_KEY = "watermarks"
# Deployment knob read at parse time (no I/O): how long a failed task waits before its retry.
RETRY_DELAY = dt.timedelta(seconds=int(os.environ.get("TC_SENTINEL_RETRY_DELAY_SECONDS", "120")))


def _hours(name: str, default: float) -> dt.timedelta:
    return dt.timedelta(hours=float(os.environ.get(name, default)))


# Sized from the budgets: a type of 1,000,000 indicators is 10,000 writes, 105 minutes at Sentinel's 95 requests a
# minute (Graph: 11 minutes at 950), plus the lookups; the whole run must end well inside its day.
EXTRACT_TIMEOUT = _hours("TC_SENTINEL_EXTRACT_TIMEOUT_HOURS", 2)
TRANSFORM_TIMEOUT = _hours("TC_SENTINEL_TRANSFORM_TIMEOUT_HOURS", 1)
LOAD_TIMEOUT = _hours("TC_SENTINEL_LOAD_TIMEOUT_HOURS", 4)
VERIFY_TIMEOUT = _hours("TC_SENTINEL_VERIFY_TIMEOUT_HOURS", 2)
CHECK_TIMEOUT = dt.timedelta(minutes=15)
DAGRUN_TIMEOUT = _hours("TC_SENTINEL_DAGRUN_TIMEOUT_HOURS", 20)


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """Turn an error no retry can fix into ``AirflowFailException``: the task fails now, with the message."""
    from tc_sentinel import redaction

    redaction.install()  # before any Variable or Connection is read (Airflow logs them at DEBUG)
    try:
        yield
    except PermanentError as exc:
        raise AirflowFailException(str(exc)) from exc


def _label(job: dict[str, Any]) -> None:
    """Name the mapped instance after its indicator type (and target, with several) in the UI and logs."""
    get_current_context()["type_label"] = summary.label(job)


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
    dagrun_timeout=DAGRUN_TIMEOUT,
    default_args={"retries": 2, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True,
                  "execution_timeout": TRANSFORM_TIMEOUT},
    params={
        "data_root": Param(None, type=["null", "string"], description="snapshot root: a path or an fsspec URL"),
        "sink": Param(None, type=["null", "string", "array"],
                      description="the target(s): graph, sentinel or defender, kind@conn_id for another "
                                  "Connection, or a list of them, e.g. [\"sentinel\", \"defender\"]"),
        "indicator_types": Param(None, type=["null", "array"], description="ThreatConnect types to move"),
        "failure_threshold": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                   description="share of indicators that may fail to load before the task fails"),
        "rejection_threshold": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                     description="share of a type's writes the target may refuse for their content "
                                                 "(quarantined) before the run fails; default 0.01"),
        "retraction_guard": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                  description="largest share of the delivered live set one run may retract"),
        "reconcile_every_days": Param(None, type=["null", "integer"], minimum=0,
                                      description="list the full active set every N days (0: never)"),
        "refresh_within_days": Param(None, type=["null", "integer"], minimum=0,
                                     description="re-send live indicators expiring within N days"),
        "dry_run": Param(None, type=["null", "boolean"], description="plan only: write the plan, send nothing"),
        "allow_mass_retraction": Param(None, type=["null", "boolean"],
                                       description="let this run retract more than the guard allows"),
        "reconcile": Param(None, type=["null", "boolean"],
                           description="list ThreatConnect's full active set this run and retract orphans"),
    },
    render_template_as_native_obj=True,
)
def threatconnect_to_sentinel() -> None:
    @task(multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def preflight() -> dict[str, Any]:
        """Check the configuration and every Connection the run needs before anything is extracted or sent."""
        from tc_sentinel import preflight as checks

        context = get_current_context()
        with _fail_fast():
            cfg = config.resolve(context["params"], lambda key: Variable.get(key, default=None), SUPPORTED_TYPES)
            result = checks.report(checks.check_all(cfg.targets))
        if result["error"]:
            if result["transient"]:
                raise RuntimeError(result["error"])  # an outage: Airflow's retry may pass
            raise AirflowFailException(result["error"])
        return result["checks"]

    @task(multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def plan_run() -> list[dict[str, Any]]:
        """Resolve the configuration and each type's extraction window (one job per type)."""
        context = get_current_context()
        with _fail_fast():
            cfg = config.resolve(context["params"], lambda key: Variable.get(key, default=None), SUPPORTED_TYPES)
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        start, end = context["data_interval_start"], context["data_interval_end"]
        jobs = []
        reconcile = config.reconcile_due(cfg, end.toordinal(), live)
        for indicator_type in cfg.indicator_types:
            # One extraction serves every target: it starts at the earliest of their marks (a new target: all).
            marks = watermarks.target_marks(previous, indicator_type, cfg.targets)
            joint = watermarks.joint_mark(marks)
            window = watermarks.extraction_window(indicator_type, start, end, {indicator_type: joint} if joint else {},
                                                  live)
            jobs.append({"indicator_type": indicator_type, "run_id": context["run_id"], "live": live,
                         "config": cfg.as_dict(), "window": window.as_dict(), "reconcile": reconcile,
                         "interval": {"start": watermarks.iso(start), "end": watermarks.iso(end)},
                         "previous_watermark": joint, "target_marks": marks})
        log.info("run plan: %s", [(j["indicator_type"], j["window"]) for j in jobs])
        return jobs

    @task(map_index_template="{{ type_label }}", multiple_outputs=False, execution_timeout=EXTRACT_TIMEOUT)
    def extract(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch
        from tc_sentinel.hooks import ThreatConnectHook

        _label(job)
        window = watermarks.Window(watermarks.parse_iso(job["window"]["start"]),
                                   watermarks.parse_iso(job["window"]["end"]), job["window"]["reason"])
        with _fail_fast():
            client = ThreatConnectHook().get_conn()
            mapping = load_mapping(job["indicator_type"])
            job["owner"] = client.owner
            job["extract"] = st.extract(client, _store(job), job["run_id"], job["indicator_type"], window,
                                        lambda batch: normalize_batch(batch, mapping), reconcile=job["reconcile"])
        return job

    @task(map_index_template="{{ type_label }}", trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def normalize(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch

        _label(job)
        with _fail_fast():
            mapping = load_mapping(job["indicator_type"])
            job["normalize"] = st.normalize(_store(job), job["run_id"], job["indicator_type"],
                                            lambda batch: normalize_batch(batch, mapping))
        return job

    @task(map_index_template="{{ type_label }}", trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def dedupe(job: dict[str, Any]) -> dict[str, Any]:
        from include.pipeline.dedupe import winners

        _label(job)
        job["dedupe"] = st.dedupe(_store(job), job["run_id"], job["indicator_type"], winners)
        return job

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def fan_out(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One load per (type, target): each target keeps its own delivered state, watermark and quarantine."""
        pairs = []
        for job in jobs:
            if not job:
                continue  # this type failed before load; the report names it
            for target in job["config"]["targets"]:
                pairs.append({**job, "target": target, "previous_watermark": job["target_marks"][target]})
        return pairs

    @task(map_index_template="{{ type_label }}", trigger_rule=TriggerRule.ALL_DONE, pool=POOL, multiple_outputs=False,
          execution_timeout=LOAD_TIMEOUT)
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
        with _fail_fast():
            target = sink(job["target"], job["owner"])
            job["load"] = st.load(target, _store(job), job["run_id"], job["indicator_type"], policy,
                                  failure_threshold=cfg["failure_threshold"], dry_run=cfg["dry_run"],
                                  rejection_threshold=cfg["rejection_threshold"], target=job["target"])
        return job

    @task(map_index_template="{{ type_label }}", trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False,
          execution_timeout=VERIFY_TIMEOUT)
    def verify(job: dict[str, Any]) -> dict[str, Any]:
        from tc_sentinel.hooks import sink

        _label(job)
        with _fail_fast():
            target = sink(job["target"], job["owner"])
            job["verify"] = st.verify(target, _store(job), job["run_id"], job["indicator_type"],
                                      job["previous_watermark"], dry_run=job["config"]["dry_run"],
                                      target=job["target"])
        return job

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def commit_watermarks(jobs: list[dict[str, Any]], planned: list[dict[str, Any]]) -> dict[str, str]:
        """Advance each verified type's watermark; hold the others where this run started reading."""
        context = get_current_context()
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        held = {}
        for p in planned:
            targets = p["config"]["targets"]
            for target in targets:
                name = watermarks.key(p["indicator_type"], target, targets)
                # A target that had a mark keeps it until verified; a new one holds where this run began reading.
                held[name] = p["target_marks"].get(target) or p["window"]["start"]
        marks = watermarks.hold(previous, held)
        for job in jobs:
            if job and job.get("verify", {}).get("watermark"):
                name = watermarks.key(job["indicator_type"], job["target"], job["config"]["targets"])
                marks[name] = job["verify"]["watermark"]
        # Backfills keep their marks under another key: the live chain is never moved by replaying the past.
        context["ti"].xcom_push(key=WATERMARK_KEY if live else "backfill_watermarks", value=marks)
        log.info("watermarks (%s): %s", "live" if live else "backfill", marks)
        return marks

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def report(jobs: list[dict[str, Any]], planned: list[dict[str, Any]]) -> dict[str, Any]:
        """Print the per-type summary; fail the run when any type did not make it through verify."""
        from include.report.publish import publish_from_context

        result = summary.summarize([j for j in jobs if j], summary.planned_labels(planned))
        log.info("\n%s", summary.render(result))
        report_error = publish_from_context(get_current_context(), planned, jobs, result["failed_types"])
        if result["failed_types"]:
            raise AirflowFailException(f"indicator types that did not complete: {result['failed_types']}")
        if report_error is not None:
            raise report_error  # after the run's own verdict: a broken report never hides which types failed
        return result

    checked = preflight()
    jobs = plan_run()
    checked >> jobs
    deduped = dedupe.expand(job=normalize.expand(job=extract.expand(job=jobs)))
    verified = verify.expand(job=load.expand(job=fan_out(deduped)))
    marks = commit_watermarks(verified, jobs)
    outcome = report(verified, jobs)
    marks >> outcome


threatconnect_to_sentinel()

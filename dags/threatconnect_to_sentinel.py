"""
### ThreatConnect → Microsoft Sentinel

Moves ThreatConnect indicators into Microsoft Sentinel: **preflight → plan_run**, then one mapped task group
**prepare** per indicator type (**extract → normalize → dedupe**), then one mapped task group **deliver** per
(type, target) (**load → verify**); then, only when some load held retractions past the retraction guard, a person
is asked (**held_retractions → approve_retractions → retract**); then the watermarks are committed and a summary
is printed.

* **preflight** checks every Connection the run needs (fields, hosts, a signed ThreatConnect request, a token for
  the target) and fails with one message naming the Connection before anything is extracted or sent.
* **extract** reads the type's indicators modified in the run's window from the ThreatConnect REST API (v2 or v3,
  HMAC-signed) into the `raw` Parquet snapshot, page by page.
* **normalize** canonicalises and validates values (`include/mappings/*.yaml` says how each type maps) into
  `normalized`; invalid values go to `rejected` with the reason.
* **dedupe** keeps one row per (type, canonical value), the most recent.
* **load** plans against what earlier runs delivered (create, update, refresh before expiry, retract what
  ThreatConnect retired, skip what is unchanged; the plan goes to the `plan` snapshot), holds back a mass
  retraction (more than `retraction_guard` of the delivered live set) for a person's approval, then writes only the
  plan's other changes to the target chosen by `tc_sentinel_sink` (Graph `tiIndicators`,
  Sentinel's STIX objects upload API, or Defender for Endpoint's indicators API), keyed on a deterministic
  external id, recording every write in `loaded`.
  With the param `dry_run` it stops after the plan. Items the target refuses for their content are quarantined
  (recorded with the target's message, not sent again until they change); only more than `rejection_threshold`
  of a type's writes fails the run.
* **verify** reads every write back (or, for Sentinel without management-plane coordinates, relies on the upload's
  acknowledgements) and fails the run when anything is missing or different; what it finds missing is recorded as
  not delivered, so the next run sends it again. A (type, target) whose retractions are held keeps its watermark
  before the first of them, unless they are approved and done.
* **approve_retractions** (Airflow's human-in-the-loop `ApprovalOperator`; skipped when nothing was held) shows the
  numbers and a sample of what would be retracted; **Approve** lets **retract** perform and read back the held
  retractions; **Reject**, or no answer within `approval_timeout_hours` (default 24), skips them and the run
  finishes; a later run plans them again and asks again.

Errors no retry can fix (credentials, permissions, configuration, a mapping the target refuses wholesale) fail
the task at once; transient ones are retried. Inside a mapped task group each instance waits only for its own
upstream instance, and the tasks that gather every instance (`fan_out`,
`commit_watermarks`, `report`) run once all are done (trigger rule `all_done`): one failing type or target fails
the run and holds its own watermark, but never stops the others from loading, verifying and advancing theirs.

Every stage announces its snapshot as an Airflow asset (`tc_sentinel.raw`, `normalized`, `rejected`, `deduped`,
`plan`, `loaded`, `verified`, and `tc_sentinel.report`): each mapped instance adds one event whose `extra` names its
run, type (and target), the partition it wrote and its counts, so other DAGs can be scheduled on new snapshots
(`dags/examples/`).

Each run covers its data interval; a live run also resumes from the last committed watermark of each type so a
failed or skipped run leaves no gap, while a backfill reads exactly its interval and never moves the live watermark.
Configuration: Connections `threatconnect_default`, `msgraph_default`, `sentinel_default`, `defender_default`; the
`tc_sentinel_*` Variables, each overridable by the run param of the same name without the prefix (a param left
empty uses the Variable, else the default); run params `dry_run`, `allow_mass_retraction`, `reconcile`. See the
README.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from airflow.sdk import (
    CronDataIntervalTimetable,
    Param,
    TriggerRule,
    Variable,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.pipeline import asset_events, config, delivery, stages, summary, watermarks
from include.pipeline.errors import PermanentError
from include.pipeline.jobs import (
    DeliveryJob,
    ExtractedJob,
    JobDocument,
    LoadedJob,
    NormalizedJob,
    PreparedJob,
    TypeJob,
    VerifiedJob,
)
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.ports import Traffic, usage
from include.pipeline.snapshots import SnapshotStore
from tc_sentinel import assets
from tc_sentinel.approval import RetractionApproval, approved

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
# 20 h of work plus the approval gate's default wait (24 h): a run that waits for a person must not time out first.
DAGRUN_TIMEOUT = _hours("TC_SENTINEL_DAGRUN_TIMEOUT_HOURS", 44)
# Each mapped instance is named after its type, or "type → target" when the run has several targets.
LABEL = "{{ type_label }}"


def _overrides(name: str, json_type: str | list[str], description: str, **schema: Any) -> Param:
    """A run param over the Variable ``tc_sentinel_<name>``. Its default is None on purpose: an empty param means
    "not given", so the Variable applies, and without the Variable the documented default does."""
    types = json_type if isinstance(json_type, list) else [json_type]
    default = json.dumps(config.VARIABLE_DEFAULTS[name], ensure_ascii=False)
    return Param(
        None,
        type=["null", *types],
        **schema,
        description=f"{description}. Empty: the Variable tc_sentinel_{name}, else {default}.",
    )


def _run_only(name: str, description: str) -> Param:
    """A run param without a Variable: a real boolean with its real default."""
    return Param(config.RUN_ONLY_DEFAULTS[name], type="boolean", description=description)


PARAMS = {
    "data_root": _overrides("data_root", "string", "snapshot root: a path or an fsspec URL"),
    "sink": _overrides(
        "sink",
        ["string", "array"],
        "the target(s): graph, sentinel or defender, kind@conn_id for "
        'another Connection, or a list of them, e.g. ["sentinel", "defender"]',
    ),
    "indicator_types": _overrides("indicator_types", "array", "ThreatConnect types to move"),
    "failure_threshold": _overrides(
        "failure_threshold", "number", "share of a type's writes that may fail before load fails", minimum=0, maximum=1
    ),
    "rejection_threshold": _overrides(
        "rejection_threshold",
        "number",
        "share of a type's writes the target may refuse for their content (quarantined) before the run fails",
        minimum=0,
        maximum=1,
    ),
    "retraction_guard": _overrides(
        "retraction_guard",
        "number",
        "largest share of the delivered live set one run may retract",
        minimum=0,
        maximum=1,
    ),
    "reconcile_every_days": _overrides(
        "reconcile_every_days", "integer", "list the full active set every N days (0: never)", minimum=0
    ),
    "refresh_within_days": _overrides(
        "refresh_within_days", "integer", "re-send live indicators expiring within N days", minimum=0
    ),
    "approval_timeout_hours": _overrides(
        "approval_timeout_hours",
        "number",
        "how long the approval gate waits for a person before it rejects the held retractions",
        exclusiveMinimum=0,
    ),
    "dry_run": _run_only("dry_run", "plan only: write the plan, send nothing"),
    "allow_mass_retraction": _run_only("allow_mass_retraction", "let this run retract more than the guard allows"),
    "reconcile": _run_only("reconcile", "list ThreatConnect's full active set this run and retract orphans"),
}


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """Turn an error no retry can fix into ``AirflowFailException``: the task fails now, with the message."""
    from tc_sentinel import redaction

    redaction.install()  # before any Variable or Connection is read (Airflow logs them at DEBUG)
    try:
        yield
    except PermanentError as exc:
        raise AirflowFailException(str(exc)) from exc


def _label(job: TypeJob) -> None:
    """Name the mapped instance after its indicator type (and target, with several) in the UI and logs."""
    get_current_context()["type_label"] = job.label


def _store(job: TypeJob) -> SnapshotStore:
    return SnapshotStore(job.config.data_root)


def _resolve(context: Any) -> config.RunConfig:
    with _fail_fast():
        return config.resolve(context["params"], lambda key: Variable.get(key, default=None), SUPPORTED_TYPES)


def _gathered(value: list[JobDocument] | JobDocument | None) -> list[JobDocument]:
    """Every instance's document of a task inside a mapped task group, as a list.

    Airflow 3.3 hands a task downstream of a mapped task group a list only when two or more instances pushed one:
    the whole list pull (``xcom_pull`` without ``map_indexes``) returns a lone value bare, and None when no instance
    succeeded (``PlainXComArg.resolve`` and ``RuntimeTaskInstance.xcom_pull`` in the task SDK). A job document is
    always a dict, so the three cases cannot be confused.
    """
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


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
    default_args={
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "execution_timeout": TRANSFORM_TIMEOUT,
    },
    params=PARAMS,
    render_template_as_native_obj=True,
)
def threatconnect_to_sentinel() -> None:
    @task(multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def preflight() -> dict[str, Any]:
        """Check the configuration and every Connection the run needs before anything is extracted or sent."""
        from tc_sentinel import preflight as checks

        cfg = _resolve(get_current_context())
        with _fail_fast():
            result = checks.report(checks.check_all(cfg.targets))
        if result["error"]:
            if result["transient"]:
                raise RuntimeError(result["error"])  # an outage: Airflow's retry may pass
            raise AirflowFailException(result["error"])
        return result["checks"]

    @task(multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def plan_run() -> list[JobDocument]:
        """Resolve the configuration and each type's extraction window (one job per type)."""
        context = get_current_context()
        cfg = _resolve(context)
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        start, end = context["data_interval_start"], context["data_interval_end"]
        reconcile = config.reconcile_due(cfg, end.toordinal(), live)
        jobs = []
        for indicator_type in cfg.indicator_types:
            # One extraction serves every target: it starts at the earliest of their marks (a new target: all).
            marks = watermarks.target_marks(previous, indicator_type, cfg.targets)
            joint = watermarks.joint_mark(marks)
            window = watermarks.extraction_window(
                indicator_type, start, end, {indicator_type: joint} if joint else {}, live
            )
            jobs.append(TypeJob(indicator_type, context["run_id"], live, cfg, window, start, end, reconcile, marks))
        log.info("run plan: %s", [(j.indicator_type, j.window.as_dict()) for j in jobs])
        return [j.to_xcom() for j in jobs]

    # ------------------------------------------------------------------ per type: extract -> normalize -> dedupe
    # Each stage's task declares its snapshot's asset; each mapped instance adds one event with its own partition and
    # counts in ``extra`` (include/pipeline/asset_events.py): a data team's DAG is scheduled on those, not on a poll.
    @task(map_index_template=LABEL, multiple_outputs=False, execution_timeout=EXTRACT_TIMEOUT, outlets=[assets.RAW])
    def extract(document: JobDocument) -> JobDocument:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch
        from tc_sentinel.hooks import ThreatConnectHook

        job = TypeJob.from_xcom(document)
        _label(job)
        started = time.monotonic()
        with _fail_fast():
            client = ThreatConnectHook().get_conn()
            mapping = load_mapping(job.indicator_type)
            report = stages.extract(
                client,
                _store(job),
                job.run_id,
                job.indicator_type,
                job.window,
                lambda batch: normalize_batch(batch, mapping),
                reconcile=job.reconcile,
                deletions=client.iter_deleted_batches,
            )
        cost = usage("threatconnect", Traffic(client.requests_sent, client.throttled), time.monotonic() - started)
        done = job.extracted(client.owner, {**report, **cost})
        assets.announce(get_current_context(), asset_events.extracted(done))
        return done.to_xcom()

    @task(map_index_template=LABEL, multiple_outputs=False, outlets=[assets.NORMALIZED, assets.REJECTED])
    def normalize(document: JobDocument) -> JobDocument:
        from include.pipeline.mappings import load_mapping
        from include.pipeline.normalize import normalize as normalize_batch

        job = ExtractedJob.from_xcom(document)
        _label(job)
        started = time.monotonic()
        with _fail_fast():
            mapping = load_mapping(job.indicator_type)
            report = stages.normalize(
                _store(job), job.run_id, job.indicator_type, lambda batch: normalize_batch(batch, mapping)
            )
        done = job.normalized({**report, **usage("", None, time.monotonic() - started)})
        assets.announce(get_current_context(), asset_events.normalized(done))
        return done.to_xcom()

    @task(map_index_template=LABEL, multiple_outputs=False, outlets=[assets.DEDUPED])
    def dedupe(document: JobDocument) -> JobDocument:
        from include.pipeline.dedupe import winners

        job = NormalizedJob.from_xcom(document)
        _label(job)
        started = time.monotonic()
        report = stages.dedupe(_store(job), job.run_id, job.indicator_type, winners)
        done = job.deduped({**report, **usage("", None, time.monotonic() - started)})
        assets.announce(get_current_context(), asset_events.deduped(done))
        return done.to_xcom()

    # A mapped task group: each type's instances wait only for that type's upstream instance, so a type that fails
    # (its later tasks upstream_failed) never holds the others back. Task ids stay unprefixed (extract, load...).
    @task_group(prefix_group_id=False)
    def prepare(document: JobDocument) -> Any:
        """One indicator type: extract, normalize, dedupe."""
        return dedupe(normalize(extract(document)))

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, execution_timeout=CHECK_TIMEOUT)
    def fan_out(prepared: list[JobDocument] | JobDocument | None) -> list[JobDocument]:
        """One delivery per (type, target): each target keeps its own delivered state, watermark and quarantine.
        Only the types whose prepare group succeeded are here; the report names the others."""
        return [d.to_xcom() for document in _gathered(prepared) for d in PreparedJob.from_xcom(document).deliveries()]

    # ------------------------------------------------------------------ per (type, target): load -> verify
    @task(
        map_index_template=LABEL,
        pool=POOL,
        multiple_outputs=False,
        execution_timeout=LOAD_TIMEOUT,
        outlets=[assets.PLAN, assets.LOADED],
    )
    def load(document: JobDocument) -> JobDocument:
        from include.pipeline.lifecycle import Policy
        from include.pipeline.mappings import load_mapping
        from tc_sentinel.hooks import sink

        job = DeliveryJob.from_xcom(document)
        _label(job)
        cfg = job.config
        expiry = load_mapping(job.indicator_type).expiration
        policy = Policy(
            interval_start=job.interval_start,
            interval_end=job.interval_end,
            refresh_within=dt.timedelta(days=cfg.refresh_within_days),
            expiry_days=expiry.days_for,
            expiration=expiry,  # a refresh follows the rule normalize followed (use_threatconnect_expiry)
            retraction_guard=cfg.retraction_guard,
            allow_mass_retraction=cfg.allow_mass_retraction,
        )
        started = time.monotonic()
        with _fail_fast():
            target = sink(job.target, job.owner)
            report = delivery.load(
                target,
                _store(job),
                job.run_id,
                job.indicator_type,
                policy,
                failure_threshold=cfg.failure_threshold,
                dry_run=cfg.dry_run,
                rejection_threshold=cfg.rejection_threshold,
                target=job.target,
                time_limit=LOAD_TIMEOUT.total_seconds(),
            )
        done = job.loaded({**report, **usage(job.target, target.traffic(), time.monotonic() - started)})
        assets.announce(get_current_context(), asset_events.loaded(done))
        return done.to_xcom()

    @task(map_index_template=LABEL, multiple_outputs=False, execution_timeout=VERIFY_TIMEOUT, outlets=[assets.VERIFIED])
    def verify(document: JobDocument) -> JobDocument:
        from tc_sentinel.hooks import sink

        job = LoadedJob.from_xcom(document)
        _label(job)
        started = time.monotonic()
        with _fail_fast():
            target = sink(job.target, job.owner)
            report = delivery.verify(
                target,
                _store(job),
                job.run_id,
                job.indicator_type,
                job.previous_watermark,
                dry_run=job.config.dry_run,
                target=job.target,
            )
        done = job.verified({**report, **usage(job.target, target.traffic(), time.monotonic() - started)})
        assets.announce(get_current_context(), asset_events.verified(done))
        return done.to_xcom()

    @task_group(prefix_group_id=False)
    def deliver(document: JobDocument) -> Any:
        """One (type, target): load, then verify; a failed load leaves only its own verify upstream_failed."""
        return verify(load(document))

    # ------------------------------------------------------------------ the approval gate for mass retraction
    @task.short_circuit(
        trigger_rule=TriggerRule.ALL_DONE, ignore_downstream_trigger_rules=False, execution_timeout=CHECK_TIMEOUT
    )
    def held_retractions(verified: list[JobDocument] | JobDocument | None) -> dict[str, Any] | None:
        """The request for the gate when some (type, target) held retractions past the guard; else nothing, and
        the gate is skipped (a normal run never pauses)."""
        from include.pipeline import approval

        held = approval.held_deliveries(_gathered(verified))
        if not held:
            return None
        cfg = _resolve(get_current_context())
        request = approval.request(SnapshotStore(held[0]["data_root"]), held)
        log.warning("%s\n%s", request["subject"], request["body"])
        return {**request, "timeout_hours": cfg.approval_timeout_hours, "held": held}

    gate = RetractionApproval(task_id="approve_retractions", execution_timeout=CHECK_TIMEOUT)

    @task(pool=POOL, multiple_outputs=False, execution_timeout=LOAD_TIMEOUT)
    def retract() -> list[dict[str, Any]]:
        """Perform the held retractions, only when a person approved them: Reject or the timeout skips this task,
        and so does a skipped gate (nothing held); the answer is checked here again all the same."""
        from include.pipeline import approval
        from tc_sentinel.hooks import sink

        ti = get_current_context()["ti"]
        request = ti.xcom_pull(task_ids="held_retractions")
        if not request or not approved(ti.xcom_pull(task_ids="approve_retractions")):
            raise AirflowSkipException("no approved retractions in this run")
        done = []
        for held in request["held"]:
            with _fail_fast():
                done.append(
                    approval.retract_held(sink(held["target"], held["owner"]), SnapshotStore(held["data_root"]), held)
                )
        return done

    # ------------------------------------------------------------------ the whole run
    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False)
    def commit_watermarks(
        verified: list[JobDocument] | JobDocument | None,
        planned: list[JobDocument],
        retracted: list[dict[str, Any]] | None,
    ) -> dict[str, str]:
        """Advance each verified (type, target)'s watermark; hold the others where this run started reading. A
        (type, target) with retractions held for approval advances only up to them unless they were done."""
        context = get_current_context()
        live = context["dag_run"].run_type != "backfill"
        previous = _previous_watermarks(context) if live else {}
        held = {}
        for job in (TypeJob.from_xcom(p) for p in planned):
            for target in job.config.targets:
                # A target that had a mark keeps it until verified; a new one holds where this run began reading.
                held[watermarks.key(job.indicator_type, target, job.config.targets)] = job.target_marks.get(
                    target
                ) or watermarks.iso(job.window.start)
        marks = watermarks.hold(previous, held)
        approved_keys = {r["watermark_key"] for r in retracted or [] if r["complete"]}
        for done in (VerifiedJob.from_xcom(v) for v in _gathered(verified)):
            mark = done.verify.get("watermark")
            if done.watermark_key in approved_keys and done.verify.get("watermark_after_retractions"):
                mark = done.verify["watermark_after_retractions"]
            if mark:
                marks[done.watermark_key] = mark
        # Backfills keep their marks under another key: the live chain is never moved by replaying the past.
        context["ti"].xcom_push(key=WATERMARK_KEY if live else "backfill_watermarks", value=marks)
        log.info("watermarks (%s): %s", "live" if live else "backfill", marks)
        return marks

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, outlets=[assets.REPORT])
    def report(
        verified: list[JobDocument] | JobDocument | None,
        planned: list[JobDocument],
        retracted: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """Print the per-type summary, record the run (runs dataset and HTML report); fail the run when any
        (type, target) did not make it through verify."""
        from include.report.publish import publish_from_context

        labels = [name for p in planned for name in TypeJob.from_xcom(p).delivery_labels()]
        finished = [VerifiedJob.from_xcom(v).to_xcom() for v in _gathered(verified)]
        result = summary.summarize(finished, labels, retracted or [])
        log.info("\n%s", summary.render(result))
        context = get_current_context()
        report_error = publish_from_context(context, planned, finished, result["failed_types"])
        # Sent only when this task succeeds: a report event means every (type, target) made it through verify.
        assets.announce(context, asset_events.reported(context["run_id"], planned, result["types"]))
        if result["failed_types"]:
            raise AirflowFailException(f"indicator types that did not complete: {result['failed_types']}")
        if report_error is not None:
            raise report_error  # after the run's own verdict: a broken report never hides which types failed
        return result

    checked = preflight()
    jobs = plan_run()
    checked >> jobs
    verified = deliver.expand(document=fan_out(prepare.expand(document=jobs)))
    retracted = retract()
    held_retractions(verified) >> gate >> retracted
    marks = commit_watermarks(verified, jobs, retracted)
    outcome = report(verified, jobs, retracted)
    marks >> outcome


threatconnect_to_sentinel()

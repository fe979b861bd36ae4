"""What each stage announces when it has written its snapshot: the asset names and URIs, and each event's ``extra``.

The DAG declares one asset per stage (``tc_sentinel.normalized`` ...) and one for the run report; each mapped task
instance adds one event to its stage's asset, whose ``extra`` names the run, the indicator type (and the target for
the per-target stages), the partition it wrote and its counts. A consumer reads the partition the event names,
never "the latest": a data root may hold many runs. Pure: the Airflow ``Asset`` objects are built from these names
in ``plugins/tc_sentinel/assets.py``.

The data root is a run setting (a Variable or a run param), so it cannot be part of a URI fixed when the DAG is
parsed: the URIs are logical (``x-tc-sentinel://snapshots/<stage>``; the ``x-`` scheme is Airflow's convention for a
scheme no provider handles) and the event's ``extra`` says where the data is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from include.pipeline.jobs import ExtractedJob, LoadedJob, NormalizedJob, PreparedJob, TypeJob, VerifiedJob
from include.pipeline.lifecycle import PLAN_ACTIONS
from include.pipeline.snapshots import SnapshotStore

SCHEME = "x-tc-sentinel"
#: The stages that announce their snapshot, in pipeline order, and the run report.
SNAPSHOT_STAGES = ("raw", "normalized", "rejected", "deduped", "plan", "loaded", "verified")
REPORT = "report"
Extra = dict[str, Any]


def asset_name(stage: str) -> str:
    """The asset's name (what a consumer schedules on): ``tc_sentinel.<stage>``, ``tc_sentinel.report``."""
    if stage not in (*SNAPSHOT_STAGES, REPORT):
        raise ValueError(f"no asset for {stage!r}; expected one of {(*SNAPSHOT_STAGES, REPORT)}")
    return f"tc_sentinel.{stage}"


def asset_uri(stage: str) -> str:
    """The asset's logical URI: ``x-tc-sentinel://snapshots/<stage>``, ``x-tc-sentinel://reports/run``."""
    asset_name(stage)  # validates the stage
    return f"{SCHEME}://reports/run" if stage == REPORT else f"{SCHEME}://snapshots/{stage}"


def _common(job: TypeJob, stage: str, rows: int, written: bool = True) -> Extra:
    store = SnapshotStore(job.config.data_root)
    return {
        "stage": stage,
        "run_id": job.run_id,
        "indicator_type": job.indicator_type,
        "live": job.live,
        "data_interval": {"start": job.interval_start.isoformat(), "end": job.interval_end.isoformat()},
        "data_root": job.config.data_root,
        "partition": store.partition_url(stage, job.indicator_type, job.run_id) if written else None,
        "rows": rows,
    }


def extracted(job: ExtractedJob) -> dict[str, Extra]:
    """``raw``: rows = changes read plus deletions listed."""
    report = job.extract
    rows = report["extracted"] + report["deleted"]
    return {
        "raw": {
            **_common(job, "raw", rows),
            "extracted": report["extracted"],
            "deleted": report["deleted"],
            "window": dict(report["window"]),
        }
    }


def normalized(job: NormalizedJob) -> dict[str, Extra]:
    """``normalized`` (valid candidates) and ``rejected`` (refused values, with the reason in the rows)."""
    report = job.normalize
    return {
        "normalized": {**_common(job, "normalized", report["normalized"]), "raw": report["raw"]},
        "rejected": {**_common(job, "rejected", report["rejected"]), "raw": report["raw"]},
    }


def deduped(job: PreparedJob) -> dict[str, Extra]:
    """``deduped``: one row per (type, canonical value)."""
    report = job.dedupe
    return {
        "deduped": {
            **_common(job, "deduped", report["deduplicated"]),
            "normalized": report["normalized"],
            "duplicates": report["duplicates"],
        }
    }


def loaded(job: LoadedJob) -> dict[str, Extra]:
    """``plan`` and ``loaded`` of one (type, target): the partition holds one file per target, so ``rows`` counts
    this target's rows (``sink`` = ``target``). A dry run writes no ``loaded`` file: its partition is None."""
    report = job.load
    dry_run = bool(report["dry_run"])
    writes = {k: int(report.get(k, 0)) for k in ("created", "updated", "refreshed", "retracted")}
    return {
        "plan": {
            **_common(job, "plan", sum(int(report["planned"].get(a, 0)) for a in PLAN_ACTIONS)),
            "target": job.target,
            "dry_run": dry_run,
            "actions": {a: int(report["planned"].get(a, 0)) for a in PLAN_ACTIONS},
        },
        "loaded": {
            **_common(job, "loaded", int(report.get("sent", 0)), written=not dry_run),
            "target": job.target,
            "dry_run": dry_run,
            **writes,
            "ok": sum(writes.values()),
            "rejected_by_target": int(report.get("rejected_by_target", 0)),
            "failed": int(report.get("failed", 0)),
        },
    }


def verified(job: VerifiedJob) -> dict[str, Extra]:
    """``verified`` of one (type, target): what verify read back (or the target acknowledged)."""
    report = job.verify
    dry_run = bool(report.get("dry_run", False))
    return {
        "verified": {
            **_common(job, "verified", report["expected"], written=not dry_run),
            "target": job.target,
            "dry_run": dry_run,
            "verified": report["verified"],
            "verified_by": report["verified_by"],
            "watermark": report["watermark"],
        }
    }


#: The counts of each (type, target) that the report's event repeats from the run summary.
REPORT_COUNTS = ("extracted", "rejected", "deduplicated", "created", "updated", "retracted", "failed", "verified")


def reported(
    run_id: str, planned: Sequence[Mapping[str, Any]], types: Mapping[str, Mapping[str, Any]]
) -> dict[str, Extra]:
    """``report``: where the run's HTML report and the ``runs`` dataset are, and each (type, target)'s counts.

    Args:
        run_id: the Airflow run.
        planned: the run's type jobs (``TypeJob.to_xcom``); empty when the run failed before planning.
        types: the run summary's rows by label (``summary.summarize(...)["types"]``).
    """
    from include.report.html import REPORTS, report_name
    from include.report.runs import RUNS

    root = planned[0]["config"]["data_root"].rstrip("/") if planned else None
    return {
        REPORT: {
            "stage": REPORT,
            "run_id": run_id,
            "data_root": root,
            "report": f"{root}/{REPORTS}/{report_name(run_id)}" if root else None,
            "runs": f"{root}/{RUNS}" if root else None,
            "counts": {label: {k: row.get(k) for k in REPORT_COUNTS} for label, row in types.items()},
        }
    }

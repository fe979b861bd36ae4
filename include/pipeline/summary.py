"""The run summary: per-type counts from every stage, as data and as a printable table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from include.pipeline import jobs

#: (column, header) in table order. ``rejected`` counts values the pipeline refused (normalize, or the target's
#: documented limits before sending); ``tgt_rejected`` the items the target refused this run (quarantined),
#: ``quarantined`` the earlier refusals left unsent because their content did not change.
COLUMNS = (
    "extracted",
    "rejected",
    "deduplicated",
    "created",
    "updated",
    "retracted",
    "unchanged",
    "tgt_rejected",
    "quarantined",
    "healed",
    "failed",
    "verified",
    "expiring_7d",
)


def _sum(*values: Any) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def label(job: Mapping[str, Any]) -> str:
    """How a job document is named in the summary: its type, and its target when the run has several."""
    return jobs.label(str(job["indicator_type"]), job.get("target"), (job.get("config") or {}).get("targets") or [])


def summarize(
    done: Sequence[Mapping[str, Any]],
    planned_types: Sequence[str],
    approved: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Collect the counts of every stage's report, one row per label (type, or type → target).

    Args:
        done: the documents of the deliveries that finished (``VerifiedJob.to_xcom``).
        planned_types: the label of every (type, target) the run planned; those without a verify report count as
            failed.
        approved: what the ``retract`` task did with retractions a person approved (one entry per label).
    """
    by_label = {a["label"]: a for a in approved}
    rows = {}
    for job in done:
        load = job.get("load", {})
        verify = job.get("verify", {})
        rows[label(job)] = {
            "extracted": job.get("extract", {}).get("extracted"),
            "rejected": _sum(job.get("normalize", {}).get("rejected"), load.get("rejected_before_sending")),
            "deduplicated": job.get("dedupe", {}).get("deduplicated"),
            "created": load.get("created"),
            "updated": (load.get("updated") or 0) + (load.get("refreshed") or 0) if "updated" in load else None,
            "retracted": load.get("retracted"),
            "unchanged": load.get("unchanged"),
            "tgt_rejected": load.get("rejected_by_target"),
            "quarantined": load.get("quarantined"),
            "healed": load.get("healed"),
            "failed": load.get("failed"),
            "expiring_7d": load.get("expiring_7d"),
            "verified": verify.get("verified"),
            "verified_by": verify.get("verified_by"),
            "capacity": load.get("capacity"),
            "watermark": verify.get("watermark"),
            "held": (load.get("held_retractions") or {}).get("retractions"),
        }
        after = by_label.get(label(job))
        if after is not None:
            rows[label(job)]["retracted"] = (load.get("retracted") or 0) + after["retracted"]
            rows[label(job)]["held"] = after["held"] - after["retracted"] or None
            if after["complete"]:
                rows[label(job)]["watermark"] = verify.get("watermark_after_retractions") or verify.get("watermark")
    failed = [t for t in planned_types if t not in rows or rows[t]["verified"] is None]
    for indicator_type in planned_types:
        rows.setdefault(indicator_type, dict.fromkeys((*COLUMNS, "verified_by", "capacity", "watermark")))
    return {"types": rows, "failed_types": failed}


def render(result: dict[str, Any]) -> str:
    """A fixed-width table of the summary; ``verified`` says ``(ack)`` where only acknowledgements were checked."""
    width = max([14, *(len(name) + 2 for name in result["types"])])
    header = f"{'type':<{width}}" + "".join(f"{c:>13}" for c in COLUMNS) + "  watermark"
    lines = [header, "-" * len(header)]
    for indicator_type, row in result["types"].items():
        cells = []
        for column in COLUMNS:
            value = "-" if row.get(column) is None else str(row[column])
            if column == "verified" and row.get("verified_by") == "acknowledged" and row.get(column) is not None:
                value += " (ack)"
            cells.append(f"{value:>13}")
        lines.append(f"{indicator_type:<{width}}{''.join(cells)}  {row.get('watermark') or '-'}")
    if any(row.get("verified_by") == "acknowledged" for row in result["types"].values()):
        lines.append("verified (ack): acknowledged by the target, not read back (no management-plane coordinates)")
    if any(row.get("tgt_rejected") for row in result["types"].values()):
        lines.append(
            "tgt_rejected: refused by the target for their content; quarantined until they change in "
            "ThreatConnect (the loaded snapshot has the target's message, status 'rejected')"
        )
    for indicator_type, row in result["types"].items():
        capacity = row.get("capacity")
        if capacity:
            lines.append(
                f"capacity after {indicator_type}: {capacity['used']:,} / {capacity['capacity']:,} live "
                f"indicators of ours in the target; {capacity['over_capacity']:,} left out or retracted by "
                "priority"
            )
    for indicator_type, row in result["types"].items():
        if row.get("held"):
            lines.append(
                f"held for approval: {row['held']:,} {indicator_type} retractions past the retraction guard were not "
                "sent (rejected, timed out or failed); they stay live and a later run asks again"
            )
    if result["failed_types"]:
        lines.append(f"FAILED: {', '.join(result['failed_types'])}")
    return "\n".join(lines)

"""The run summary: per-type counts from every stage, as data and as a printable table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("extracted", "rejected", "deduplicated", "created", "updated", "retracted", "unchanged", "failed",
           "verified", "expiring_7d")


def summarize(jobs: Sequence[dict[str, Any]], planned_types: Sequence[str]) -> dict[str, Any]:
    """Collect the counts each stage left in the job dicts; types without a verify result count as failed."""
    rows = {}
    for job in jobs:
        rows[job["indicator_type"]] = {
            "extracted": job.get("extract", {}).get("extracted"),
            "rejected": job.get("normalize", {}).get("rejected"),
            "deduplicated": job.get("dedupe", {}).get("deduplicated"),
            "created": job.get("load", {}).get("created"),
            "updated": (job.get("load", {}).get("updated") or 0) + (job.get("load", {}).get("refreshed") or 0)
            if "updated" in job.get("load", {}) else None,
            "retracted": job.get("load", {}).get("retracted"),
            "unchanged": job.get("load", {}).get("unchanged"),
            "failed": job.get("load", {}).get("failed"),
            "expiring_7d": job.get("load", {}).get("expiring_7d"),
            "verified": job.get("verify", {}).get("verified"),
            "watermark": job.get("verify", {}).get("watermark"),
        }
    failed = [t for t in planned_types if t not in rows or rows[t]["verified"] is None]
    for indicator_type in planned_types:
        rows.setdefault(indicator_type, dict.fromkeys((*COLUMNS, "watermark")))
    return {"types": rows, "failed_types": failed}


def render(result: dict[str, Any]) -> str:
    """A fixed-width table of the summary."""
    header = f"{'type':<14}" + "".join(f"{c:>13}" for c in COLUMNS) + "  watermark"
    lines = [header, "-" * len(header)]
    for indicator_type, row in result["types"].items():
        cells = "".join(f"{'-' if row[c] is None else row[c]:>13}" for c in COLUMNS)
        lines.append(f"{indicator_type:<14}{cells}  {row.get('watermark') or '-'}")
    if result["failed_types"]:
        lines.append(f"FAILED: {', '.join(result['failed_types'])}")
    return "\n".join(lines)

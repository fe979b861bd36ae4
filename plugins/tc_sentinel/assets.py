"""The Airflow assets the DAG produces (one per snapshot stage, and the run report), and how a task fills in its
events' ``extra``. Names, URIs and the ``extra`` documents come from ``include/pipeline/asset_events.py``.

A data team's DAG subscribes with ``schedule=[NORMALIZED]`` (or ``Asset.ref(name="tc_sentinel.normalized")`` from
another repository) and reads ``triggering_asset_events[NORMALIZED]``: see ``dags/examples/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset

from include.pipeline import asset_events

GROUP = "tc-sentinel"


def _asset(stage: str) -> Asset:
    return Asset(name=asset_events.asset_name(stage), uri=asset_events.asset_uri(stage), group=GROUP)


RAW = _asset("raw")
NORMALIZED = _asset("normalized")
REJECTED = _asset("rejected")
DEDUPED = _asset("deduped")
PLAN = _asset("plan")
LOADED = _asset("loaded")
VERIFIED = _asset("verified")
REPORT = _asset(asset_events.REPORT)
BY_STAGE: dict[str, Asset] = {
    "raw": RAW,
    "normalized": NORMALIZED,
    "rejected": REJECTED,
    "deduped": DEDUPED,
    "plan": PLAN,
    "loaded": LOADED,
    "verified": VERIFIED,
    asset_events.REPORT: REPORT,
}


def announce(context: Mapping[str, Any], extras: Mapping[str, Mapping[str, Any]]) -> None:
    """Give this task instance's event on each stage's asset its ``extra`` (sent when the task succeeds).

    Every mapped instance has its own ``outlet_events``: each type's (and target's) instance adds one event to the
    stage's asset, with that type's partition and counts.
    """
    events = context["outlet_events"]
    for stage, extra in extras.items():
        events[BY_STAGE[stage]].extra = dict(extra)

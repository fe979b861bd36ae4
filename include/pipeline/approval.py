"""The approval gate for mass retraction: what a person is asked, and the held retractions done once approved.

When a (type, target)'s load would retract more than the retraction guard allows, ``load`` sends everything else
and plans those retractions ``held for approval`` (in the ``plan`` snapshot, reason prefixed
:data:`include.pipeline.lifecycle.HELD`); verify holds that (type, target)'s watermark before the earliest of them,
so a run that is not approved leaves them for a later run to plan again. This module builds the request the run's
gate shows (numbers and a sample per held (type, target)) and, after a person approved, performs the held
retractions, records them in ``loaded`` and ``verified`` beside the load's own rows, and says whether the watermark
may move past them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import pandas as pd
import pyarrow as pa

from include.pipeline import frames, lifecycle
from include.pipeline.delivery import _compare, _outcomes
from include.pipeline.ports import OK, Sink
from include.pipeline.schema import LOADED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

log = logging.getLogger(__name__)

#: How many held retractions of each (type, target) the request lists.
SAMPLE = 10


class Held(TypedDict):
    """One (type, target) whose retractions wait for approval: what the gate and the retract task need."""

    label: str
    indicator_type: str
    target: str
    owner: str
    run_id: str
    data_root: str
    watermark_key: str
    retractions: int
    live: int
    allowed: int
    guard: float


class Retracted(TypedDict):
    """What the retract task did for one held (type, target)."""

    label: str
    watermark_key: str
    held: int
    retracted: int
    failed: int
    verified: int
    complete: bool


def held_deliveries(verified: Sequence[Mapping[str, Any]]) -> list[Held]:
    """The (type, target)s of a run whose load held retractions, from the verified job documents."""
    found: list[Held] = []
    for job in verified:
        load = job.get("load") or {}
        trip = load.get("held_retractions")
        if not trip or load.get("dry_run"):  # a dry run only shows, in its plan, what it would hold
            continue
        targets = job["config"]["targets"]
        target = job["target"]
        label = f"{job['indicator_type']} → {target}" if len(targets) > 1 else job["indicator_type"]
        key = job["indicator_type"] if len(targets) == 1 else f"{job['indicator_type']} → {target}"
        found.append(
            Held(
                label=label,
                indicator_type=job["indicator_type"],
                target=target,
                owner=job["owner"],
                run_id=job["run_id"],
                data_root=job["config"]["data_root"],
                watermark_key=key,
                retractions=int(trip["retractions"]),
                live=int(trip["live"]),
                allowed=int(trip["allowed"]),
                guard=float(trip["guard"]),
            )
        )
    return found


def held_rows(store: SnapshotStore, held: Held) -> pd.DataFrame:
    """The plan rows of one (type, target)'s held retractions, ready for the sink (``indicator_type`` set)."""
    plan = store.read("plan", held["indicator_type"], held["run_id"]).to_pandas()
    rows = plan[(plan["sink"] == held["target"]) & (plan["action"] == "retract") & lifecycle.is_held(plan["reason"])]
    rows = rows.reset_index(drop=True)
    rows["indicator_type"] = held["indicator_type"]
    return rows


def request(store: SnapshotStore, held: Sequence[Held], sample: int = SAMPLE) -> dict[str, str]:
    """The subject and Markdown body a person decides on: per (type, target) the numbers and a sample."""
    total = sum(h["retractions"] for h in held)
    subject = f"Approve {total:,} retractions past the retraction guard ({', '.join(h['label'] for h in held)})?"
    lines = [
        "This run would retract more of the delivered live indicators than the retraction guard allows. An outage,",
        "an expired API key or a wrong owner upstream looks exactly like this. Creates and updates were sent; only",
        "these retractions wait. **Approve** retracts them now; **Reject** (or no answer before the timeout) leaves",
        "them live, and a later run asks again.",
        "",
        "| type | target | retract | delivered live | guard allows |",
        "|---|---|---|---|---|",
    ]
    for h in held:
        lines.append(
            f"| {h['indicator_type']} | {h['target']} | {h['retractions']:,} | {h['live']:,} | "
            f"{h['allowed']:,} ({h['guard']:.0%}) |"
        )
    for h in held:
        rows = held_rows(store, h).head(sample)
        shown = min(sample, h["retractions"])
        lines += ["", f"**{h['indicator_type']} → {h['target']}**, {shown} of {h['retractions']:,}:", ""]
        for row in rows.itertuples():
            reason = str(row.reason).removeprefix(f"{lifecycle.HELD}: ")
            lines.append(f"- `{row.value}` ({reason})")
    lines += ["", f"Run `{held[0]['run_id']}`; every held row is in the `plan` snapshot (reason `{lifecycle.HELD}`)."]
    return {"subject": subject, "body": "\n".join(lines)}


def retract_held(sink: Sink, store: SnapshotStore, held: Held) -> Retracted:
    """Perform one (type, target)'s held retractions (a person approved), record them, and read them back.

    The outcomes join the load's own rows in the target's ``loaded`` file and the read-back findings its
    ``verified`` file, so the delivered state of later runs and the run's report count them like any retraction.
    ``complete`` is True when every one was accepted and found retracted: only then may the watermark pass them.
    """
    rows = held_rows(store, held)
    name, indicator_type, run_id = held["target"], held["indicator_type"], held["run_id"]
    frame = _outcomes(rows, sink.retract(rows), sink) if len(rows) else rows.assign(status=[], error=[])
    _append(store, "loaded", indicator_type, run_id, name, frame, LOADED_SCHEMA)
    ok = frame[frame["status"] == OK]
    records = frames.records(ok)
    found = sink.fetch([r["external_id"] for r in records]) if sink.read_back and records else {}
    findings = []
    for row in records:
        finding = _compare(sink, row, found.get(row["external_id"])) if sink.read_back else None
        status = ("read back" if sink.read_back else "acknowledged") if finding is None else str(finding[0])
        findings.append((row["external_id"], "retract", status, None if finding is None else str(finding[1:])))
    verified = pd.DataFrame(findings, columns=["external_id", "action", "status", "detail"]).assign(sink=name)
    _append(store, "verified", indicator_type, run_id, name, verified, lifecycle.VERIFIED_SCHEMA)
    good = sum(1 for f in findings if f[2] in ("read back", "acknowledged"))
    result = Retracted(
        label=held["label"],
        watermark_key=held["watermark_key"],
        held=len(rows),
        retracted=len(ok),
        failed=len(frame) - len(ok),
        verified=good,
        complete=good == len(rows),
    )
    log.info("approved retractions: %s", result)
    return result


def _append(
    store: SnapshotStore, stage: str, indicator_type: str, run_id: str, target: str, rows: pd.DataFrame, schema: Any
) -> None:
    """Add rows to one target's file of a run's partition (rewritten whole, so readers see it before or after)."""
    frames = []
    if store.exists(stage, indicator_type, run_id):
        earlier = store.read(stage, indicator_type, run_id).to_pandas()
        # A retry of the retract task replaces what an earlier attempt recorded for the same retractions.
        again = earlier["external_id"].isin(set(rows["external_id"])) & (earlier["action"] == "retract")
        frames.append(earlier[(earlier["sink"] == target) & ~again])
    frames.append(rows)
    merged = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else rows
    merged = merged.assign(indicator_type=indicator_type) if "indicator_type" in schema.names else merged
    table = pa.Table.from_pandas(merged[[n for n in schema.names if n in merged]], preserve_index=False)
    store.write_table(stage, indicator_type, run_id, table.select(schema.names).cast(schema), part=target)

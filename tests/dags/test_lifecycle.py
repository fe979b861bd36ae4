"""The indicator lifecycle through whole DAG runs against the simulators (Graph sink, then Sentinel).

One scenario per sink runs the DAG several times in one Airflow home (``airflow dags test`` per date) and records
what each run did; the tests below each check one promise of the lifecycle against those records.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest

from devtools.airflow_env import AirflowEnv
from include.pipeline.snapshots import SnapshotStore
from simulators.dataset import generate
from simulators.stack import OWNER, Stack, start_stack

pytestmark = [pytest.mark.dag, pytest.mark.integration]

DAG_ID = "threatconnect_to_sentinel"
D1 = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)  # the first run covers [D1 - 1 day, D1)
TYPES = ["Address", "Host"]


def day(offset: int) -> str:
    return (D1 + dt.timedelta(days=offset)).strftime("%Y-%m-%d")


@dataclass
class Observed:
    """What one scenario saw: per run, the return code, Graph write requests, and snapshots of the target."""

    returncodes: dict[str, int] = field(default_factory=dict)
    writes: dict[str, list[Any]] = field(default_factory=dict)
    targets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)
    data_root: Path | None = None
    home: Path | None = None


def live_valid(stack: Stack, indicator_type: str, count: int, skip: int = 0) -> list[dict[str, Any]]:
    """Indicators of a type that the first run delivered (valid, active, not false positives, not duplicates)."""
    records = [
        r
        for r in stack.tc._records.values()
        if r["type"] == indicator_type
        and r["active"]
        and not r.get("falsePositives")
        and not r.get("_invalid")
        and r.get("_duplicate_of") is None
    ]
    records.sort(key=lambda r: r["id"])
    return records[skip : skip + count]


def graph_state(stack: Stack) -> dict[str, dict[str, Any]]:
    return {i["externalId"]: i for i in stack.graph.owned_by(stack_client(stack))}


def stack_client(stack: Stack) -> str:
    return stack.connections()["msgraph_default"]["login"]


def run(
    airflow: AirflowEnv,
    observed: Observed,
    name: str,
    stack: Stack,
    date: str,
    conf: dict | None = None,
    sink: str = "graph",
) -> None:
    before = len(stack.graph.writes()) if sink == "graph" else len(stack.sentinel.upload_requests)
    result = airflow.dags_test(DAG_ID, date, conf)
    observed.returncodes[name] = result.returncode
    observed.outputs[name] = result.stdout + result.stderr
    if sink == "graph":
        observed.writes[name] = stack.graph.writes()[before:]
        observed.targets[name] = graph_state(stack)
    else:
        observed.writes[name] = stack.sentinel.upload_requests[before:]
        observed.targets[name] = dict(stack.sentinel_objects())


def run_paused(airflow: AirflowEnv, observed: Observed, name: str, stack: Stack, date: str, answer: str) -> None:
    """A run that pauses at the approval gate: record what the target holds while it waits, then answer."""
    before = len(stack.graph.writes())
    output = airflow.home / f"{name}.out"
    process = airflow.dags_test_in_background(DAG_ID, date, output)
    try:
        run_id = wait_for_gate(observed.home, process, output)
        observed.writes[f"{name} (waiting)"] = stack.graph.writes()[before:]
        observed.targets[f"{name} (waiting)"] = graph_state(stack)
        observed.chosen[f"{name} run"] = {"run_id": run_id}
        airflow.answer_hitl(DAG_ID, run_id, "approve_retractions", answer)
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    observed.returncodes[name] = process.returncode
    observed.outputs[name] = output.read_text(errors="replace")
    observed.writes[name] = stack.graph.writes()[before:]
    observed.targets[name] = graph_state(stack)


def wait_for_gate(home: Path | None, process: Any, output: Path, timeout: float = 900) -> str:
    """Poll the metadata database until the run's approval gate waits for a person; return the run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before its gate asked:\n{output.read_text()[-5000:]}")
        with sqlite3.connect(home / "airflow.db") as db:
            row = db.execute(
                "SELECT run_id FROM task_instance WHERE dag_id = ? AND task_id = 'approve_retractions' "
                "AND state = 'awaiting_input'",
                (DAG_ID,),
            ).fetchone()
        if row:
            return row[0]
        time.sleep(2)
    raise AssertionError(f"the approval gate did not ask within {timeout}s")


@pytest.fixture(scope="module")
def graph_scenario(tmp_path_factory) -> Observed:
    work = tmp_path_factory.mktemp("lifecycle-graph")
    indicators = generate(seed=41, count=400, owner=OWNER, start=D1 - dt.timedelta(days=1), end=D1, types=tuple(TYPES))
    stack = start_stack(work, indicators)
    observed = Observed(data_root=work / "data", home=work / "home")
    airflow = AirflowEnv(observed.home, extra=stack.env(str(observed.data_root), "graph", TYPES))
    try:
        airflow.migrate()
        run(airflow, observed, "first", stack, day(0))
        run(airflow, observed, "rerun", stack, day(0))

        changed, inactive, false_positive, deleted = live_valid(stack, "Address", 4)
        observed.chosen = {
            "changed": changed,
            "inactive": inactive,
            "false_positive": false_positive,
            "deleted": deleted,
        }
        stack.tc.put({**changed, "confidence": 7, "lastModified": D1 + dt.timedelta(hours=1)})
        stack.tc.put({**inactive, "active": False, "lastModified": D1 + dt.timedelta(hours=2)})
        stack.tc.put({**false_positive, "falsePositives": 1, "lastModified": D1 + dt.timedelta(hours=3)})
        stack.tc.delete(deleted["id"], D1 + dt.timedelta(hours=4))
        run(airflow, observed, "lifecycle", stack, day(1))

        # Retired without a lastModified bump: only the periodic reconciliation (due on this date) can see it.
        silent = live_valid(stack, "Address", 1, skip=10)[0]
        observed.chosen["silent"] = silent
        stack.tc.put({**silent, "active": False})
        planned_only = live_valid(stack, "Host", 1)[0]
        observed.chosen["dry_run"] = planned_only
        stack.tc.put({**planned_only, "confidence": 3, "lastModified": D1 + dt.timedelta(days=1, hours=1)})
        run(airflow, observed, "dry_run", stack, day(2), {"dry_run": True})

        # An upstream "outage": most Host indicators turn inactive at once.
        hosts = live_valid(stack, "Host", 150, skip=1)
        for offset, record in enumerate(hosts):
            stack.tc.put({**record, "active": False, "lastModified": D1 + dt.timedelta(days=2, minutes=offset + 1)})
        observed.chosen["mass"] = {"ids": [r["id"] for r in hosts]}
        # A Host changed in the same run (the one the dry run only planned): an update of the very (type, target)
        # whose retractions are held.
        observed.chosen["mass_late"] = {"record": planned_only}
        late = observed.chosen["mass_late"]["record"]
        stack.tc.put({**late, "confidence": 9, "lastModified": D1 + dt.timedelta(days=2, hours=5)})
        run_paused(airflow, observed, "mass_retraction", stack, day(3), answer="Reject")

        # Four weeks later nothing changed upstream: Address indicators (30 days) are refreshed before expiry.
        observed.chosen["refresh_sources"] = [dict(r) for r in stack.tc._records.values() if r["type"] == "Address"]
        run(airflow, observed, "refresh", stack, day(28), {"indicator_types": ["Address"]})
        yield observed
    finally:
        stack.stop()


def xcom_value(raw: str | bytes) -> Any:
    """An XCom value from the metadata DB (JSON text, sometimes JSON-encoded twice)."""
    value = json.loads(raw if isinstance(raw, str) else raw.decode())
    return json.loads(value) if isinstance(value, str) else value


def succeeded(observed: Observed, name: str) -> bool:
    """True when the run succeeded; otherwise the assertion shows the run's errors."""
    if observed.returncodes[name] == 0:
        return True
    errors = [line for line in observed.outputs[name].splitlines() if "Error" in line or "error" in line]
    raise AssertionError(f"run {name!r} failed:\n" + "\n".join(errors[-40:]))


def items(requests: list[Any], action: str) -> int:
    return sum(r.items for r in requests if r.path.endswith(action) and r.status in (200, 206))


def test_the_first_run_creates_every_indicator_once(graph_scenario) -> None:
    assert succeeded(graph_scenario, "first")
    target = graph_scenario.targets["first"]
    assert len(target) > 200
    assert items(graph_scenario.writes["first"], "submitTiIndicators") == len(target)


def test_an_unchanged_rerun_sends_zero_indicator_writes(graph_scenario) -> None:
    assert succeeded(graph_scenario, "rerun")
    assert graph_scenario.writes["rerun"] == []
    assert graph_scenario.targets["rerun"] == graph_scenario.targets["first"]


def test_a_changed_confidence_costs_one_update_request(graph_scenario) -> None:
    assert succeeded(graph_scenario, "lifecycle")
    updates = [r for r in graph_scenario.writes["lifecycle"] if r.path.endswith("updateTiIndicators")]
    assert [r.items for r in updates] == [1]
    changed = [
        i
        for i in graph_scenario.targets["lifecycle"].values()
        if i.get("networkIPv4") == graph_scenario.chosen["changed"]["ip"]
        or i.get("networkIPv6") == graph_scenario.chosen["changed"]["ip"]
    ]
    assert [i["confidence"] for i in changed] == [7]


@pytest.mark.parametrize("signal", ["inactive", "false_positive", "deleted"])
def test_a_retired_indicator_is_retracted_from_graph_on_the_next_run(graph_scenario, signal) -> None:
    value = graph_scenario.chosen[signal]["ip"]
    before = [
        i for i in graph_scenario.targets["rerun"].values() if value in (i.get("networkIPv4"), i.get("networkIPv6"))
    ]
    after = [
        i for i in graph_scenario.targets["lifecycle"].values() if value in (i.get("networkIPv4"), i.get("networkIPv6"))
    ]
    assert len(before) == 1
    assert after == []
    assert items(graph_scenario.writes["lifecycle"], "deleteTiIndicatorsByExternalId") == 3


def test_a_dry_run_writes_the_plan_and_leaves_the_target_untouched(graph_scenario) -> None:
    assert succeeded(graph_scenario, "dry_run")
    assert graph_scenario.writes["dry_run"] == []
    assert graph_scenario.targets["dry_run"] == graph_scenario.targets["lifecycle"]
    plan = SnapshotStore(str(graph_scenario.data_root)).dataset("plan").to_table().to_pandas()
    updates = plan[(plan["action"] == "update") & (plan["indicator_type"].astype(str) == "Host")]
    assert graph_scenario.chosen["dry_run"]["hostName"].lower().rstrip(".") in set(updates["value"])
    assert "dry run: nothing sent" in graph_scenario.outputs["dry_run"]


def test_reconciliation_plans_the_retraction_of_an_indicator_retired_without_a_change_date(graph_scenario) -> None:
    plan = SnapshotStore(str(graph_scenario.data_root)).dataset("plan").to_table().to_pandas()
    orphans = plan[plan["reason"].str.startswith("orphan", na=False)]
    assert list(orphans["value"]) == [graph_scenario.chosen["silent"]["ip"]]


def test_a_mass_retraction_waits_for_a_person_and_retracts_nothing_while_it_waits(graph_scenario) -> None:
    waiting = graph_scenario.writes["mass_retraction (waiting)"]
    assert not [r for r in waiting if "delete" in r.path.lower()]
    hosts_before = {k for k, v in graph_scenario.targets["dry_run"].items() if v.get("domainName")}
    hosts_waiting = {k for k, v in graph_scenario.targets["mass_retraction (waiting)"].items() if v.get("domainName")}
    assert hosts_waiting == hosts_before


def test_creates_and_updates_of_the_run_are_not_held_back_by_the_gate(graph_scenario) -> None:
    host = graph_scenario.chosen["mass_late"]["record"]["hostName"].lower().rstrip(".")
    held = [i for i in graph_scenario.targets["mass_retraction (waiting)"].values() if i.get("domainName") == host]
    assert [i["confidence"] for i in held] == [9]


def test_a_rejected_mass_retraction_retracts_nothing_and_the_run_finishes(graph_scenario) -> None:
    assert succeeded(graph_scenario, "mass_retraction")
    assert not [r for r in graph_scenario.writes["mass_retraction"] if "delete" in r.path.lower()]
    hosts_before = {k for k, v in graph_scenario.targets["dry_run"].items() if v.get("domainName")}
    hosts_after = {k for k, v in graph_scenario.targets["mass_retraction"].items() if v.get("domainName")}
    assert hosts_after == hosts_before
    assert "held for approval" in graph_scenario.outputs["mass_retraction"]


def test_a_rejected_mass_retraction_holds_the_watermark_before_the_first_held_retraction(graph_scenario) -> None:
    run_id = graph_scenario.chosen["mass_retraction run"]["run_id"]
    db = sqlite3.connect(graph_scenario.home / "airflow.db")
    (raw,) = db.execute(
        "select value from xcom where task_id = 'commit_watermarks' and key = 'watermarks' and run_id = ?", (run_id,)
    ).fetchone()
    marks = xcom_value(raw)
    first_retired = D1 + dt.timedelta(days=2, minutes=1)  # the earliest of the Host indicators turned inactive
    assert dt.datetime.fromisoformat(marks["Host"].replace("Z", "+00:00")) <= first_retired
    assert dt.datetime.fromisoformat(marks["Host"].replace("Z", "+00:00")) < D1 + dt.timedelta(days=2, hours=5)


def test_still_live_indicators_are_refreshed_before_they_expire(graph_scenario) -> None:
    assert succeeded(graph_scenario, "refresh")
    refreshed = [r for r in graph_scenario.writes["refresh"] if r.path.endswith("updateTiIndicators")]
    assert sum(r.items for r in refreshed) > 50
    # Before the run most Address indicators (30 days from their change) had expired or were about to; after it,
    # nothing live expires within the refresh window (3 days) of the run's interval end, except where ThreatConnect
    # set the expiry itself (externalDateExpires; the Address mapping uses it): that date stands, as at normalize.
    horizon = D1 + dt.timedelta(days=28 + 3)
    own_expiry: dict[Any, set[dt.datetime]] = {}
    for record in graph_scenario.chosen["refresh_sources"]:
        if record.get("externalDateExpires") and not record.get("_invalid"):
            own_expiry.setdefault(ipaddress.ip_address(record["ip"].strip()), set()).add(record["externalDateExpires"])
    addresses = [i for i in graph_scenario.targets["refresh"].values() if i.get("networkIPv4") or i.get("networkIPv6")]
    assert addresses
    early = {}
    for indicator in addresses:
        expires = dt.datetime.fromisoformat(indicator["expirationDateTime"].replace("Z", "+00:00"))
        if expires < horizon:
            early[ipaddress.ip_address(indicator.get("networkIPv4") or indicator["networkIPv6"])] = expires
    assert [ip for ip, expires in early.items() if expires not in own_expiry.get(ip, set())] == []
    assert len(early) < len(addresses) / 2  # most were refreshed past the horizon


def test_the_summary_reports_indicators_expiring_within_seven_days(graph_scenario) -> None:
    db = sqlite3.connect(graph_scenario.home / "airflow.db")
    rows = db.execute(
        "select value from xcom where task_id = 'load' and key = 'return_value' and dag_id = ?", (DAG_ID,)
    ).fetchall()
    loads = [xcom_value(v) for (v,) in rows]
    assert any("expiring_7d" in (job.get("load") or {}) for job in loads)
    assert "expiring_7d" in graph_scenario.outputs["refresh"]


@pytest.fixture(scope="module")
def sentinel_scenario(tmp_path_factory) -> Observed:
    work = tmp_path_factory.mktemp("lifecycle-sentinel")
    indicators = generate(seed=43, count=150, owner=OWNER, start=D1 - dt.timedelta(days=1), end=D1, types=("Address",))
    stack = start_stack(work, indicators)
    observed = Observed(data_root=work / "data", home=work / "home")
    airflow = AirflowEnv(observed.home, extra=stack.env(str(observed.data_root), "sentinel", ["Address"]))
    try:
        airflow.migrate()
        run(airflow, observed, "first", stack, day(0), sink="sentinel")
        run(airflow, observed, "rerun", stack, day(0), sink="sentinel")
        inactive = live_valid(stack, "Address", 1)[0]
        observed.chosen["inactive"] = inactive
        stack.tc.put({**inactive, "active": False, "lastModified": D1 + dt.timedelta(hours=5)})
        run(airflow, observed, "lifecycle", stack, day(1), sink="sentinel")
        yield observed
    finally:
        stack.stop()


def test_sentinel_rerun_over_an_unchanged_source_uploads_nothing(sentinel_scenario) -> None:
    assert succeeded(sentinel_scenario, "first")
    assert succeeded(sentinel_scenario, "rerun")
    assert sentinel_scenario.writes["rerun"] == []


def test_sentinel_retraction_reuploads_the_object_revoked_with_a_newer_modified(sentinel_scenario) -> None:
    assert succeeded(sentinel_scenario, "lifecycle")
    value = sentinel_scenario.chosen["inactive"]["ip"]
    before = [o for o in sentinel_scenario.targets["rerun"].values() if f"'{value}'" in o["pattern"]]
    after = [o for o in sentinel_scenario.targets["lifecycle"].values() if f"'{value}'" in o["pattern"]]
    assert len(before) == len(after) == 1
    assert before[0].get("revoked") in (None, False)
    assert after[0]["revoked"] is True
    assert after[0]["modified"] > before[0]["modified"]
    assert [r.object_count for r in sentinel_scenario.writes["lifecycle"] if r.status == 200] == [1]


def test_loaded_snapshots_record_every_write_with_its_reason(graph_scenario) -> None:
    loaded = SnapshotStore(str(graph_scenario.data_root)).dataset("loaded").to_table()
    retracts = loaded.filter(pc.equal(loaded["action"], "retract"))
    reasons = set(retracts["reason"].to_pylist())
    assert {"inactive in ThreatConnect", "reported as a false positive", "deleted in ThreatConnect"} <= reasons

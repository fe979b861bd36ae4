"""Lifecycle planning: delta against the delivered state, retractions, orphans, refresh, the guard."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from include.microsoft.graph import GraphSink
from include.microsoft.sentinel import SentinelSink
from include.pipeline import lifecycle
from include.pipeline.capacity import held_count
from include.pipeline.schema import LOADED_SCHEMA
from include.pipeline.snapshots import SnapshotStore
from tests.unit.microsoft.graph_rows import BASE_TIME, ip_rows, normalized_row, rows_frame

GRAPH = GraphSink(client=None)
POLICY = lifecycle.Policy(
    interval_start=BASE_TIME - dt.timedelta(days=1), interval_end=BASE_TIME + dt.timedelta(days=1)
)


def plan(candidates: pd.DataFrame, state: pd.DataFrame, policy=POLICY, sink=GRAPH, inventory=None) -> pd.DataFrame:
    return lifecycle.plan(candidates, state, sink.payload, sink.name, policy, sink.volatile_fields, inventory)


def deliver(tmp_path, planned: pd.DataFrame, run_id: str = "run-1", status: str = "ok") -> pd.DataFrame:
    """Record the plan's writes as a successful load, then read the delivered state back."""
    store = SnapshotStore(str(tmp_path))
    writes = planned[planned["action"].isin(lifecycle.WRITE_ACTIONS)].copy()
    writes["status"], writes["target_id"], writes["attempts"], writes["error"] = status, None, 1, None
    store.write_table(
        "loaded", "Address", run_id, pa.Table.from_pandas(writes, schema=LOADED_SCHEMA, preserve_index=False)
    )
    return lifecycle.delivered_state(store, "Address", "graph")


def actions(planned: pd.DataFrame) -> dict[str, int]:
    return planned["action"].value_counts().to_dict()


def test_everything_is_created_the_first_time(tmp_path) -> None:
    state = lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")
    assert actions(plan(ip_rows(5), state)) == {"create": 5}


def test_an_unchanged_rerun_plans_zero_writes(tmp_path) -> None:
    rows = ip_rows(5)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    assert actions(plan(rows, state)) == {"skip": 5}


def test_a_changed_confidence_is_one_update(tmp_path) -> None:
    rows = ip_rows(5)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    changed = rows.copy()
    changed.loc[2, "confidence"] = 15
    changed.loc[2, "last_modified"] = changed.loc[2, "last_modified"] + pd.Timedelta(hours=1)
    planned = plan(changed, state)
    assert actions(planned) == {"skip": 4, "update": 1}
    assert planned.loc[planned["action"] == "update", "external_id"].item() == rows.loc[2, "external_id"]


def test_a_newer_last_modified_without_a_real_change_sends_nothing(tmp_path) -> None:
    rows = rows_frame([normalized_row("ipv4", 1, expiration=BASE_TIME + dt.timedelta(days=90))])
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    bumped = rows.copy()
    bumped["last_modified"] = bumped["last_modified"] + pd.Timedelta(minutes=5)
    assert actions(plan(bumped, state)) == {"skip": 1}


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"false_positive": True}, "false positive"),
        ({"deleted": True, "active": False}, "deleted"),
    ],
)
def test_a_retired_indicator_that_was_delivered_is_retracted(tmp_path, flags, reason) -> None:
    rows = ip_rows(3)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    retired = rows.copy()
    for column, value in flags.items():
        retired.loc[0, column] = value
    retired.loc[0, "last_modified"] = retired.loc[0, "last_modified"] + pd.Timedelta(hours=2)
    planned = plan(retired, state)
    row = planned[planned["action"] == "retract"].iloc[0]
    assert row["external_id"] == rows.loc[0, "external_id"]
    assert reason in row["reason"]
    assert row["stix_modified"] > state.loc[row["external_id"], "stix_modified"]


@pytest.mark.parametrize(
    ("deleted_added", "action"),
    [
        (-dt.timedelta(days=10), "skip"),  # an indicator added before the delivered one: deleted, then created again
        (dt.timedelta(0), "retract"),  # the listing's dateAdded is when the deleted one was added: the delivered one
        (dt.timedelta(days=40), "retract"),  # ... or when it was deleted: after the delivered one was added
        (None, "retract"),  # a deletion without a date holds
    ],
)
def test_a_deletion_retracts_the_delivered_indicator_unless_it_deleted_an_earlier_one_with_that_value(
    tmp_path, deleted_added, action
) -> None:
    rows = ip_rows(2)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    # a backfill over the deletion: its window (and so the deletion's version) is before the delivered version
    deletion = rows.iloc[[0]].copy()
    deletion["deleted"], deletion["active"] = True, False
    deletion["last_modified"] = deletion["last_modified"] - pd.Timedelta(days=3)
    added = rows.loc[0, "date_added"]
    deletion["date_added"] = pd.NaT if deleted_added is None else added + deleted_added
    planned = plan(deletion, state)
    assert planned["action"].tolist() == [action]
    expected = "stale: deletion of an earlier indicator" if action == "skip" else "deleted in ThreatConnect"
    assert planned["reason"].item().startswith(expected)


def test_a_retired_indicator_never_delivered_is_not_sent_at_all(tmp_path) -> None:
    state = lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")
    planned = plan(ip_rows(2, active=False), state)
    assert actions(planned) == {"skip": 2}


def test_an_older_version_from_a_backfill_never_overwrites_a_newer_one(tmp_path) -> None:
    rows = ip_rows(2)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    old = rows.copy()
    old["last_modified"] = old["last_modified"] - pd.Timedelta(days=3)
    old["confidence"] = 5
    planned = plan(old, state)
    assert actions(planned) == {"skip": 2}
    assert planned["reason"].str.startswith("stale").all()


def test_reconciliation_retracts_delivered_indicators_missing_from_the_active_set(tmp_path) -> None:
    rows = ip_rows(4)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    still_live = set(rows["external_id"][:3])
    planned = plan(rows.iloc[:0], state, inventory=still_live)
    assert actions(planned) == {"retract": 1}
    assert planned["external_id"].item() == rows.loc[3, "external_id"]
    assert planned["reason"].item().startswith("orphan")


def test_still_live_indicators_are_refreshed_before_they_expire(tmp_path) -> None:
    soon = BASE_TIME + dt.timedelta(days=2)
    rows = ip_rows(3, expiration=soon)
    rows.loc[0, "expiration"] = BASE_TIME + dt.timedelta(days=60)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    policy = lifecycle.Policy(
        interval_start=BASE_TIME,
        interval_end=BASE_TIME + dt.timedelta(days=1),
        refresh_within=dt.timedelta(days=3),
        expiry_days=lambda severity: 30,
    )
    planned = plan(rows.iloc[:0], state, policy=policy)
    assert actions(planned) == {"refresh": 2}
    assert (planned["expiration"] == pd.Timestamp(BASE_TIME + dt.timedelta(days=31))).all()


def test_the_guard_trips_on_a_mass_retraction_unless_explicitly_allowed(tmp_path) -> None:
    rows = ip_rows(50)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    planned = plan(rows.iloc[:0], state, inventory=set())
    assert actions(planned) == {"retract": 50}
    trip = lifecycle.retraction_guard(planned, state, POLICY)
    assert trip == lifecycle.GuardTrip(retractions=50, live=50, allowed=10, guard=0.2)
    assert "would retract 50 of 50" in trip.describe("Address")
    allowed = lifecycle.Policy(POLICY.interval_start, POLICY.interval_end, allow_mass_retraction=True)
    assert lifecycle.retraction_guard(planned, state, allowed) is None


def test_the_guard_lets_a_few_retractions_through(tmp_path) -> None:
    rows = ip_rows(50)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    planned = plan(rows.iloc[:0], state, inventory=set(rows["external_id"][:45]))
    assert lifecycle.retraction_guard(planned, state, POLICY) is None


def test_holding_marks_every_retraction_and_nothing_else(tmp_path) -> None:
    rows = ip_rows(50)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    planned = plan(rows.iloc[:40], state, inventory=set(rows["external_id"][:30]))
    held = lifecycle.hold_retractions(planned)
    assert lifecycle.is_held(held["reason"]).sum() == 10  # the ten delivered ids this run neither saw nor listed
    assert (held.loc[lifecycle.is_held(held["reason"]), "action"] == "retract").all()
    assert held.loc[held["action"] == "retract", "reason"].str.endswith("(reconciliation)").all()


def test_failed_writes_are_not_part_of_the_delivered_state(tmp_path) -> None:
    rows = ip_rows(3)
    state = deliver(
        tmp_path,
        plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")),
        status="failed",
    )
    assert state.empty
    assert actions(plan(rows, state)) == {"create": 3}


def test_sentinel_versions_strictly_increase_on_every_write(tmp_path) -> None:
    sentinel = SentinelSink(client=None, sourcesystem="ThreatConnect-Example Org")
    rows = ip_rows(1)
    first = plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph"), sink=sentinel)
    first["sink"] = "graph"  # stored under the test's sink name
    state = deliver(tmp_path, first)
    changed = rows.copy()
    changed["confidence"] = 10  # a change whose lastModified did not move
    second = plan(changed, state, sink=sentinel)
    assert second["action"].item() == "update"
    assert second["stix_modified"].item() > first["stix_modified"].item()
    modified = [sentinel.payload(p.iloc[0].to_dict())["modified"] for p in (first, second)]
    assert modified[1] > modified[0]


def test_expiring_counts_live_indicators_expiring_within_the_horizon(tmp_path) -> None:
    rows = ip_rows(4, expiration=BASE_TIME + dt.timedelta(days=3))
    rows.loc[0, "expiration"] = BASE_TIME + dt.timedelta(days=30)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    assert lifecycle.expiring(state, state.iloc[:0], BASE_TIME, dt.timedelta(days=7)) == 3


def _view(state: pd.DataFrame, found: dict, read: set | None = None, compare=None) -> lifecycle.TargetView:
    def same(row, stored):
        if stored is None:
            return ("missing", "not held")
        return None if stored.get("confidence") == row["confidence"] else ("different", "confidence", 0, 1)

    return lifecycle.TargetView(set(state["external_id"]) if read is None else read, compare or same, found)


def test_a_delivered_indicator_missing_in_the_target_is_created_again(tmp_path) -> None:
    rows = ip_rows(3)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    held = {e: {"confidence": c} for e, c in zip(rows["external_id"], rows["confidence"], strict=True)}
    gone = rows["external_id"][1]
    del held[gone]
    planned = lifecycle.plan(
        rows, state, GRAPH.payload, "graph", POLICY, GRAPH.volatile_fields, target=_view(state, held)
    )
    by_id = planned.set_index("external_id")
    assert by_id.loc[gone, "action"] == "create"
    assert by_id.loc[gone, "reason"] == "heal: missing in the target"
    assert actions(planned) == {"skip": 2, "create": 1}


def test_a_delivered_indicator_different_in_the_target_is_updated(tmp_path) -> None:
    rows = ip_rows(2)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    held = {e: {"confidence": c} for e, c in zip(rows["external_id"], rows["confidence"], strict=True)}
    altered = rows["external_id"][0]
    held[altered] = {"confidence": 1}
    planned = lifecycle.plan(
        rows, state, GRAPH.payload, "graph", POLICY, GRAPH.volatile_fields, target=_view(state, held)
    ).set_index("external_id")
    assert planned.loc[altered, "action"] == "update"
    assert planned.loc[altered, "reason"].startswith("heal: different in the target")
    assert planned.loc[rows["external_id"][1], "action"] == "skip"


def test_ids_the_target_was_not_asked_about_are_planned_from_the_log_alone(tmp_path) -> None:
    rows = ip_rows(2)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    planned = lifecycle.plan(
        rows, state, GRAPH.payload, "graph", POLICY, GRAPH.volatile_fields, target=_view(state, {}, read=set())
    )
    assert actions(planned) == {"skip": 2}


def test_reconciliation_heals_delivered_indicators_outside_the_window(tmp_path) -> None:
    rows = ip_rows(3)
    state = deliver(tmp_path, plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    held = {rows["external_id"][0]: {"confidence": int(rows["confidence"][0])}}
    planned = lifecycle.plan(
        rows.iloc[:0],
        state,
        GRAPH.payload,
        "graph",
        POLICY,
        GRAPH.volatile_fields,
        inventory=set(rows["external_id"]),
        target=_view(state, held),
    )
    assert sorted(planned["action"]) == ["create", "create"]
    assert set(planned["external_id"]) == set(rows["external_id"][1:])


def _ranked_rows(severities: list[int]) -> pd.DataFrame:
    return rows_frame([normalized_row("ipv4", i + 1, severity=s) for i, s in enumerate(severities)])


def test_capacity_loads_the_highest_priority_and_reports_the_rest_over_capacity(tmp_path) -> None:
    rows = _ranked_rows([1, 5, 3, 4])
    planned = plan(rows, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph"))
    adjusted, info = lifecycle.apply_capacity(
        planned,
        lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph"),
        capacity=3,
        others_live=1,
        sink="defender",
    )
    by_id = adjusted.set_index("external_id")
    kept = set(by_id.index[by_id["action"] == "create"])
    assert kept == set(rows["external_id"][[1, 3]])  # severity 5 and 4: two fit beside the other types' one
    assert by_id.loc[rows["external_id"][0], "reason"].startswith("over defender capacity")
    assert info == {"capacity": 3, "used": 3, "over_capacity": 2}


def test_a_higher_priority_arrival_retracts_the_lowest_priority_live_indicator_to_make_room(tmp_path) -> None:
    held = _ranked_rows([2, 4])
    state = deliver(tmp_path, plan(held, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    arrival = rows_frame([normalized_row("ipv4", 9, severity=5)])
    adjusted, info = lifecycle.apply_capacity(plan(arrival, state), state, capacity=2, others_live=0, sink="defender")
    actions_by_id = dict(zip(adjusted["external_id"], adjusted["action"], strict=True))
    assert actions_by_id == {arrival["external_id"][0]: "create", held["external_id"][0]: "retract"}
    assert info["used"] == 2


def test_delivered_indicators_that_expired_take_no_room(tmp_path) -> None:
    soon = BASE_TIME + dt.timedelta(days=17)
    held = rows_frame([normalized_row("ipv4", i + 1, expiration=soon) for i in range(3)])
    state = deliver(tmp_path, plan(held, lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")))
    arrival = rows_frame([normalized_row("ipv4", 9, severity=1, expiration=BASE_TIME + dt.timedelta(days=90))])
    later = BASE_TIME + dt.timedelta(days=60)  # Defender deleted the three when they expired
    adjusted, info = lifecycle.apply_capacity(
        plan(arrival, state), state, capacity=3, others_live=0, sink="defender", expired_before=later
    )
    assert adjusted["action"].tolist() == ["create"]
    assert info == {"capacity": 3, "used": 1, "over_capacity": 0}
    # the same day they still hold their room: the arrival (lowest priority) stays out
    adjusted, info = lifecycle.apply_capacity(
        plan(arrival, state), state, capacity=3, others_live=0, sink="defender", expired_before=BASE_TIME
    )
    assert adjusted["action"].tolist() == ["skip"]
    assert info == {"capacity": 3, "used": 3, "over_capacity": 1}
    # the other types' counts follow the same rule
    assert [held_count(state, at) for at in (later, BASE_TIME, None)] == [0, 3, 3]


def test_within_capacity_the_plan_is_unchanged(tmp_path) -> None:
    rows = _ranked_rows([1, 2])
    state = lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "graph")
    planned = plan(rows, state)
    adjusted, info = lifecycle.apply_capacity(planned, state, capacity=10, others_live=3, sink="defender")
    assert adjusted.equals(planned)
    assert info == {"capacity": 10, "used": 5, "over_capacity": 0}


def test_a_value_the_target_cannot_hold_is_skipped_never_rejected(tmp_path) -> None:
    from include.pipeline.errors import NotSupported

    def payload(row):
        raise NotSupported("not supported by defender: internal address")

    planned = lifecycle.plan(
        ip_rows(1), lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "x"), payload, "defender", POLICY
    )
    assert list(zip(planned["action"], planned["reason"], strict=True)) == [
        ("skip", "not supported by defender: internal address")
    ]


def test_a_plan_of_nothing_but_skips_still_writes_with_its_schema(tmp_path) -> None:
    from include.pipeline.errors import NotSupported

    def payload(row):
        raise NotSupported("not supported by defender: EmailAddress")

    planned = lifecycle.plan(
        ip_rows(3), lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "x"), payload, "defender", POLICY
    )
    table = lifecycle.plan_table(planned)
    assert table.num_rows == 3
    assert table.column("stix_modified").null_count == 3


def test_a_target_that_refuses_past_expirations_is_not_sent_what_has_already_expired(tmp_path) -> None:
    rows = ip_rows(2)
    rows.loc[0, "expiration"] = POLICY.interval_end - dt.timedelta(days=1)
    planned = lifecycle.plan(
        rows,
        lifecycle.delivered_state(SnapshotStore(str(tmp_path)), "Address", "x"),
        GRAPH.payload,
        "defender",
        POLICY,
        expired_before=POLICY.interval_end,
    )
    assert list(planned["action"]) == ["skip", "create"]
    assert planned["reason"][0].startswith("expired: defender refuses")

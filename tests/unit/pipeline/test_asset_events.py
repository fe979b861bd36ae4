"""The asset names, URIs and event ``extra`` documents: small, JSON, and naming the partition of the stage's own
(type, run) as the README's snapshot layout spells it."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import quote

import pytest

from include.pipeline import asset_events
from tests.unit.pipeline.test_jobs import type_job, verified

ROOT = "/data/tc-sentinel"


def _job():
    job = type_job()
    return verified(dataclasses.replace(job, config=dataclasses.replace(job.config, data_root=ROOT)))


def test_every_stage_and_the_report_have_a_name_and_a_logical_uri_of_the_custom_scheme() -> None:
    stages = (*asset_events.SNAPSHOT_STAGES, asset_events.REPORT)
    assert [asset_events.asset_name(s) for s in stages] == [f"tc_sentinel.{s}" for s in stages]
    assert all(asset_events.asset_uri(s).startswith("x-tc-sentinel://") for s in stages)
    assert len({asset_events.asset_uri(s) for s in stages}) == len(stages)


def test_a_stage_without_an_asset_is_refused() -> None:
    with pytest.raises(ValueError, match="inventory"):
        asset_events.asset_name("inventory")


def test_each_event_names_its_own_partition_in_the_documented_layout() -> None:
    job = _job()
    extras = {
        **asset_events.extracted(job),
        **asset_events.normalized(job),
        **asset_events.deduped(job),
        **asset_events.loaded(job),
        **asset_events.verified(job),
    }
    assert sorted(extras) == sorted(asset_events.SNAPSHOT_STAGES)
    for stage, extra in extras.items():
        assert extra["partition"] == f"{ROOT}/{stage}/indicator_type=Host/run_id={quote(job.run_id, safe='')}"
        assert (extra["run_id"], extra["indicator_type"], extra["data_root"]) == (job.run_id, "Host", ROOT)
        assert json.loads(json.dumps(extra)) == extra  # what Airflow stores: plain JSON


def test_the_counts_are_the_stage_reports_counts() -> None:
    job = _job()
    assert asset_events.normalized(job)["normalized"]["rows"] == 4
    assert asset_events.normalized(job)["rejected"]["rows"] == 1
    assert asset_events.deduped(job)["deduped"]["rows"] == 3
    assert asset_events.loaded(job)["plan"]["actions"]["create"] == 3
    assert asset_events.loaded(job)["loaded"]["target"] == job.target


def test_a_dry_run_names_no_loaded_or_verified_partition() -> None:
    job = _job()
    load = {**job.load, "dry_run": True}
    for key in ("created", "sent"):
        load.pop(key, None)
    dry = dataclasses.replace(job, load=load, verify={**job.verify, "dry_run": True, "expected": 0})
    assert asset_events.loaded(dry)["loaded"]["partition"] is None
    assert asset_events.loaded(dry)["loaded"]["rows"] == 0
    assert asset_events.verified(dry)["verified"]["partition"] is None
    assert asset_events.loaded(dry)["plan"]["partition"] is not None


def test_the_report_event_says_where_the_report_and_the_runs_dataset_are() -> None:
    job = _job()
    (extra,) = asset_events.reported(job.run_id, [job.to_xcom()], {"Host": {"verified": 3}}).values()
    assert extra["report"] == f"{ROOT}/reports/{quote(job.run_id, safe='')}.html"
    assert extra["runs"] == f"{ROOT}/runs"
    assert extra["counts"]["Host"]["verified"] == 3
    assert asset_events.reported(job.run_id, [], {})["report"]["report"] is None

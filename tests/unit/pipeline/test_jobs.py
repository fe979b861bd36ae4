"""The jobs the DAG's tasks hand each other: typed, immutable, and carried through XCom as plain JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from include.pipeline.config import DEFAULT_INDICATOR_TYPES, resolve
from include.pipeline.jobs import DeliveryJob, PreparedJob, TypeJob, VerifiedJob
from include.pipeline.watermarks import Window, iso

END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
START = END - dt.timedelta(days=1)
MARK = "2026-05-31T22:00:00Z"


def type_job(sink: str = '["sentinel", "defender"]', marks: dict | None = None) -> TypeJob:
    cfg = resolve({"sink": sink}, lambda key: None, DEFAULT_INDICATOR_TYPES)
    marks = {"sentinel": MARK, "defender": MARK} if marks is None else marks
    return TypeJob(
        "Host",
        "scheduled__2026-06-02T00:00:00+00:00",
        True,
        cfg,
        Window(START, END, "the interval"),
        START,
        END,
        False,
        marks,
    )


def verified(job: TypeJob) -> VerifiedJob:
    extracted = job.extracted(
        "Example Org",
        {
            "indicator_type": "Host",
            "run_id": job.run_id,
            "window": {},
            "extracted": 5,
            "deleted": 0,
            "pages": 1,
            "max_last_modified": MARK,
            "raw": "/data/raw",
        },
    )
    prepared = extracted.normalized(
        {
            "indicator_type": "Host",
            "run_id": job.run_id,
            "raw": 5,
            "normalized": 4,
            "rejected": 1,
            "normalized_path": "n",
            "rejected_path": "r",
        }
    ).deduped(
        {
            "indicator_type": "Host",
            "run_id": job.run_id,
            "normalized": 4,
            "deduplicated": 3,
            "duplicates": 1,
            "deduped_path": "d",
        }
    )
    delivery = prepared.deliveries()[-1]
    loaded = delivery.loaded(
        {
            "indicator_type": "Host",
            "run_id": job.run_id,
            "sink": delivery.target,
            "dry_run": False,
            "planned": {"create": 3},
            "plan_path": "p",
            "reconciled": False,
            "read_back_before_planning": 0,
            "capacity": None,
            "created": 3,
        }
    )
    return loaded.verified(
        {
            "indicator_type": "Host",
            "run_id": job.run_id,
            "expected": 3,
            "verified": 3,
            "missing": 0,
            "different": 0,
            "watermark": MARK,
            "verified_by": "read back",
        }
    )


def test_a_job_survives_the_round_trip_through_xcom_json_unchanged() -> None:
    done = verified(type_job())
    document = json.loads(json.dumps(done.to_xcom()))
    assert VerifiedJob.from_xcom(document) == done


def test_the_plan_document_keeps_the_keys_its_readers_use() -> None:
    document = type_job().to_xcom()
    assert document["indicator_type"] == "Host"
    assert (document["window"]["start"], document["window"]["end"]) == (iso(START), iso(END))
    assert document["previous_watermark"] == MARK


def test_each_target_gets_its_own_delivery_with_its_own_previous_watermark() -> None:
    job = type_job(marks={"sentinel": MARK, "defender": None})
    prepared = PreparedJob(**{f.name: getattr(verified(job), f.name) for f in dataclasses.fields(PreparedJob)})
    deliveries = prepared.deliveries()
    assert [d.target for d in deliveries] == ["sentinel", "defender"]
    assert [d.previous_watermark for d in deliveries] == [MARK, None]
    assert [d.label for d in deliveries] == ["Host → sentinel", "Host → defender"]
    # the one extraction starts where the newest target needs it: from the beginning
    assert job.previous_watermark == "1970-01-01T00:00:00Z"


def test_a_single_target_run_labels_and_keys_by_type_alone() -> None:
    job = type_job(sink="graph", marks={"graph": MARK})
    delivery = verified(job)
    assert (delivery.label, delivery.watermark_key) == ("Host", "Host")
    assert job.delivery_labels() == ["Host"]


def test_a_document_missing_a_stage_report_is_refused_by_name() -> None:
    document = verified(type_job()).to_xcom()
    del document["load"]
    with pytest.raises(KeyError, match="load"):
        VerifiedJob.from_xcom(document)


def test_jobs_are_immutable() -> None:
    job = type_job()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.indicator_type = "URL"  # type: ignore[misc]
    assert isinstance(verified(job), DeliveryJob)

"""The run summary: counts per type from the stages, and the types that did not finish."""

from __future__ import annotations

from include.pipeline.summary import render, summarize


def job(indicator_type: str, verified: int | None = 3) -> dict:
    result = {
        "indicator_type": indicator_type,
        "extract": {"extracted": 5},
        "normalize": {"rejected": 1},
        "dedupe": {"deduplicated": 4},
        "load": {
            "created": 2,
            "updated": 1,
            "refreshed": 1,
            "retracted": 1,
            "unchanged": 0,
            "failed": 0,
            "expiring_7d": 2,
            "rejected_before_sending": 1,
            "rejected_by_target": 2,
            "quarantined": 1,
            "healed": 1,
        },
    }
    if verified is not None:
        result["verify"] = {"verified": verified, "watermark": "2026-03-01T00:00:00Z", "verified_by": "read back"}
    return result


def test_every_stage_count_lands_in_the_summary_row() -> None:
    row = summarize([job("Host")], ["Host"])["types"]["Host"]
    assert row == {
        "extracted": 5,
        "rejected": 2,
        "deduplicated": 4,
        "created": 2,
        "updated": 2,
        "retracted": 1,
        "unchanged": 0,
        "tgt_rejected": 2,
        "quarantined": 1,
        "healed": 1,
        "failed": 0,
        "verified": 3,
        "verified_by": "read back",
        "capacity": None,
        "expiring_7d": 2,
        "watermark": "2026-03-01T00:00:00Z",
        "held": None,
    }


def held_job() -> dict:
    held = job("Host")
    held["load"]["held_retractions"] = {"retractions": 40, "live": 50, "allowed": 10, "guard": 0.2}
    held["verify"]["watermark_after_retractions"] = "2026-03-02T00:00:00Z"
    return held


def test_retractions_held_and_not_approved_are_named_under_the_table() -> None:
    result = summarize([held_job()], ["Host"])
    assert result["types"]["Host"]["held"] == 40
    assert result["types"]["Host"]["watermark"] == "2026-03-01T00:00:00Z"
    assert "held for approval: 40 Host retractions" in render(result)


def test_approved_retractions_count_as_retracted_and_move_the_watermark_past_them() -> None:
    done = {"label": "Host", "watermark_key": "Host", "held": 40, "retracted": 40, "failed": 0, "complete": True}
    row = summarize([held_job()], ["Host"], [{**done, "verified": 40}])["types"]["Host"]
    assert (row["retracted"], row["held"], row["watermark"]) == (41, None, "2026-03-02T00:00:00Z")


def test_a_type_that_never_verified_is_reported_as_failed() -> None:
    result = summarize([job("Host"), job("URL", verified=None)], ["Host", "URL", "File"])
    assert result["failed_types"] == ["URL", "File"]
    assert "FAILED: URL, File" in render(result)


def test_the_table_has_a_line_per_planned_type() -> None:
    text = render(summarize([job("Host")], ["Host", "URL"]))
    # header, rule, two types, the note on target rejections, FAILED
    assert len(text.splitlines()) == 6
    assert text.splitlines()[0].split()[:3] == ["type", "extracted", "rejected"]


def test_a_type_verified_only_by_acknowledgements_is_marked_so_in_the_table() -> None:
    acknowledged = job("Host")
    acknowledged["verify"]["verified_by"] = "acknowledged"
    text = render(summarize([acknowledged], ["Host"]))
    assert "3 (ack)" in text
    assert "not read back" in text


def test_a_target_with_a_capacity_shows_used_and_capacity() -> None:
    capped = job("Host")
    capped["load"]["capacity"] = {"capacity": 15000, "used": 14990, "over_capacity": 12}
    assert "14,990 / 15,000" in render(summarize([capped], ["Host"]))

"""GraphSink.payload and same_value: the tiIndicator built from one normalized row."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.microsoft.graph import OBSERVABLE_FIELDS, GraphSink
from include.microsoft.graph.payload import iso_utc
from simulators.graph import validate_new
from tests.unit.microsoft.graph_rows import SAMPLES, normalized_row, rows_frame


def _row(sample: str, **overrides: object) -> dict[str, object]:
    """The row as the sink sees it: through a DataFrame built on NORMALIZED_SCHEMA."""
    return rows_frame([normalized_row(sample, **overrides)]).to_dict("records")[0]


@pytest.mark.parametrize(
    ("sample", "observable"),
    [
        ("ipv4", "networkIPv4"),
        ("ipv6", "networkIPv6"),
        ("host", "domainName"),
        ("url", "url"),
        ("email", "emailSenderAddress"),
        ("md5", "fileHashValue"),
        ("sha1", "fileHashValue"),
        ("sha256", "fileHashValue"),
    ],
)
def test_each_type_carries_its_value_in_its_observable_property(
    offline_sink: GraphSink, sample: str, observable: str
) -> None:
    payload = offline_sink.payload(_row(sample))
    assert payload[observable] == SAMPLES[sample][3]
    other_observables = {"networkIPv4", "networkIPv6", "domainName", "url", "emailSenderAddress", "fileHashValue"}
    assert not (other_observables - {observable}) & payload.keys()


@pytest.mark.parametrize("sample", ["md5", "sha1", "sha256"])
def test_a_file_hash_names_its_hash_type(offline_sink: GraphSink, sample: str) -> None:
    assert offline_sink.payload(_row(sample))["fileHashType"] == sample


@pytest.mark.parametrize("sample", ["ipv4", "host", "url", "email"])
def test_only_hashes_carry_a_file_hash_type(offline_sink: GraphSink, sample: str) -> None:
    assert "fileHashType" not in offline_sink.payload(_row(sample))


def test_the_fixed_fields_follow_the_sentinel_tip_doc(offline_sink: GraphSink) -> None:
    row = _row("ipv4")
    payload = offline_sink.payload(row)
    assert payload["action"] == "alert"
    assert payload["targetProduct"] == "Azure Sentinel"
    assert payload["externalId"] == row["external_id"]
    assert payload["threatType"] == "C2"
    assert payload["tlpLevel"] == "amber"
    assert payload["confidence"] == 80
    assert payload["severity"] == 4
    assert payload["tags"] == ["apt-x", "phishing-wave"]
    assert payload["additionalInformation"] == row["web_link"]
    assert payload["expirationDateTime"] == "2026-04-10T08:30:00Z"
    assert payload["lastReportedDateTime"] == "2026-01-10T08:30:00Z"
    assert payload["isActive"] is True


def test_sub_second_timestamps_keep_their_microseconds_in_utc(offline_sink: GraphSink) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    payload = offline_sink.payload(_row("ipv4", expiration=dt.datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=plus_two)))
    assert payload["expirationDateTime"] == "2026-05-01T10:00:00.25Z"


def test_the_payload_is_deterministic(offline_sink: GraphSink) -> None:
    assert offline_sink.payload(_row("url")) == offline_sink.payload(_row("url"))


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_payload_passes_the_simulated_graph_validation(offline_sink: GraphSink, sample: str) -> None:
    validate_new(offline_sink.payload(_row(sample)))


def test_a_long_description_is_cut_to_graphs_100_characters(offline_sink: GraphSink) -> None:
    payload = offline_sink.payload(_row("host", description="x" * 250))
    assert payload["description"] == "x" * 100


@pytest.mark.parametrize(
    ("active", "false_positive", "expected"), [(True, False, True), (False, False, False), (True, True, False)]
)
def test_is_active_means_active_and_not_a_false_positive(
    offline_sink: GraphSink, active: bool, false_positive: bool, expected: bool
) -> None:
    payload = offline_sink.payload(_row("ipv4", active=active, false_positive=false_positive))
    assert payload["isActive"] is expected


def test_unset_confidence_and_severity_are_left_to_graphs_defaults(offline_sink: GraphSink) -> None:
    payload = offline_sink.payload(_row("ipv4", confidence=None, severity=None))
    assert "confidence" not in payload
    assert "severity" not in payload


def test_out_of_range_scores_are_clamped(offline_sink: GraphSink) -> None:
    payload = offline_sink.payload(_row("ipv4", confidence=140, severity=9))
    assert (payload["confidence"], payload["severity"]) == (100, 5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"observable": "networkCidr"}, "observable"),
        ({"expiration": None}, "expiration"),
        ({"threat_type": None}, "threat_type"),
        ({"hash_type": "ssdeep"}, "hash type"),
    ],
)
def test_rows_graph_cannot_take_are_refused(
    offline_sink: GraphSink, overrides: dict[str, object], message: str
) -> None:
    sample = "sha1" if "hash_type" in overrides else "ipv4"
    with pytest.raises(ValueError, match=message):
        offline_sink.payload(_row(sample, **overrides))


@pytest.mark.parametrize(
    ("field", "sent", "stored"),
    [
        ("expirationDateTime", "2026-04-10T08:30:00Z", "2026-04-10T08:30:00Z"),
        ("expirationDateTime", "2026-04-10T08:30:00.25Z", "2026-04-10T08:30:00.2500000Z"),
        ("expirationDateTime", "2026-04-10T08:30:00Z", "2026-04-10T10:30:00+02:00"),
        ("expirationDateTime", "2026-04-10T08:30:00Z", "2026-04-10T08:30:00+0000"),
        ("confidence", 75, "75"),
        ("fileHashValue", "ABCDEF", "abcdef"),
        ("networkIPv4", None, None),
    ],
)
def test_same_value_accepts_graphs_equivalent_formats(field: str, sent: object, stored: object) -> None:
    assert GraphSink.same_value(field, sent, stored)


@pytest.mark.parametrize(
    ("field", "sent", "stored"),
    [
        ("expirationDateTime", "2026-04-10T08:30:00Z", "2026-04-10T08:30:01Z"),
        ("expirationDateTime", "2026-04-10T08:30:00Z", None),
        ("confidence", 75, 74),
        ("isActive", True, False),
        ("networkIPv4", "10.0.0.1", None),
    ],
)
def test_same_value_tells_real_differences(field: str, sent: object, stored: object) -> None:
    assert not GraphSink.same_value(field, sent, stored)


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_verify_fields_cover_every_field_that_identifies_and_scores_the_indicator(
    offline_sink: GraphSink, sample: str
) -> None:
    payload = offline_sink.payload(_row(sample))
    core = set(GraphSink.verify_fields) - set(OBSERVABLE_FIELDS) - {"fileHashType"}
    assert core <= payload.keys()
    assert SAMPLES[sample][1] in GraphSink.verify_fields


_GRAPH_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?Z$")
_ZONES = st.sampled_from(
    [None, dt.UTC, zoneinfo.ZoneInfo("UTC"), zoneinfo.ZoneInfo("Asia/Kolkata"), dt.timezone(dt.timedelta(hours=-7))]
)


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=dt.datetime(1000, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    zone=_ZONES,
    boxed=st.sampled_from(["datetime", "pandas", "text"]),
)
def test_a_moment_is_written_as_the_same_instant_in_utc_with_z_and_no_trailing_zeros(
    moment: dt.datetime, zone: dt.tzinfo | None, boxed: str
) -> None:
    """However the row holds the moment (a datetime in any zone or none, a pandas Timestamp, ISO text), Graph gets
    one spelling: the same instant (a naive moment is UTC), in UTC with ``Z``, a fraction only when there is one."""
    local = moment.replace(tzinfo=zone)
    value: object = {"datetime": local, "pandas": pd.Timestamp(local), "text": local.isoformat()}[boxed]
    text = iso_utc(value)
    assert text is not None
    assert _GRAPH_INSTANT.match(text), text
    instant = local if zone is not None else local.replace(tzinfo=dt.UTC)
    assert dt.datetime.fromisoformat(text.replace("Z", "+00:00")) == instant


@pytest.mark.parametrize("missing", [None, pd.NaT, float("nan"), pd.NA])
def test_a_missing_moment_is_none(missing: object) -> None:
    assert iso_utc(missing) is None

"""The STIX 2.1 indicator builder: valid for stix2, atomic patterns, deterministic, Sentinel's field rules."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import stix2
from hypothesis import given
from hypothesis import strategies as st
from stix2patterns.pattern import Pattern
from stix2patterns.validator import run_validator

from include.microsoft.sentinel.stix import (
    EXPIRED_AT_BIRTH_STEP,
    TLP_MARKINGS,
    build_indicator,
    escape_pattern_value,
    external_id_of,
    format_timestamp,
    parse_timestamp,
    pattern_for,
    source_system,
    stix_id,
)
from tests.unit.microsoft.graph_rows import BASE_TIME, SAMPLES, normalized_row, rows_frame

EXPECTED_PATTERNS = {
    "ipv4": "[ipv4-addr:value = '198.51.100.7']",
    "ipv6": "[ipv6-addr:value = '2001:db8::7']",
    "host": "[domain-name:value = 'bad.example.com']",
    "url": "[url:value = 'https://bad.example.com/login?x=1']",
    "email": "[email-addr:value = 'phish@bad.example.com']",
    "md5": "[file:hashes.'MD5' = 'd41d8cd98f00b204e9800998ecf8427e']",
    "sha1": "[file:hashes.'SHA-1' = 'da39a3ee5e6b4b0d3255bfef95601890afd80709']",
    "sha256": "[file:hashes.'SHA-256' = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
}
STIX_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _pattern_literal(pattern: str) -> str:
    """The single comparison value of an atomic pattern, unescaped, as stix2-patterns parsed it."""
    comparisons = Pattern(pattern).inspect().comparisons
    [(_, [(_, operator, literal)])] = comparisons.items()
    assert operator == "="
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_indicator_kind_gets_its_one_atomic_pattern(sample: str) -> None:
    assert build_indicator(normalized_row(sample))["pattern"] == EXPECTED_PATTERNS[sample]


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_every_pattern_passes_the_stix_pattern_validator(sample: str) -> None:
    assert run_validator(build_indicator(normalized_row(sample))["pattern"], stix_version="2.1") == []


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_stix2_parses_every_kind_without_custom_properties(sample: str) -> None:
    obj = build_indicator(normalized_row(sample))
    parsed = stix2.parse(json.dumps(obj), allow_custom=False)
    assert parsed.id == obj["id"]
    assert parsed.pattern == obj["pattern"]


def test_rows_read_back_from_a_snapshot_frame_build_the_same_object_as_plain_dicts() -> None:
    row = normalized_row("sha256")
    from_frame = rows_frame([row]).to_dict("records")[0]
    assert build_indicator(from_frame) == build_indicator(row)


def test_quotes_and_backslashes_in_a_value_are_escaped_and_survive_parsing() -> None:
    value = "https://bad.example.com/a'b\\c?q='x'\\"
    pattern = build_indicator(normalized_row("url", value=value))["pattern"]
    assert pattern == "[url:value = 'https://bad.example.com/a\\'b\\\\c?q=\\'x\\'\\\\']"
    assert run_validator(pattern) == []
    assert _pattern_literal(pattern) == value


def test_escaping_puts_backslashes_before_quotes() -> None:
    assert escape_pattern_value("\\'") == "\\\\\\'"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_any_url_text_yields_a_valid_pattern_carrying_the_same_value(value: str) -> None:
    pattern = pattern_for({"external_id": "x", "kind": "url", "value": value})
    assert run_validator(pattern) == []
    assert _pattern_literal(pattern) == value


def test_a_kind_without_a_stix_object_is_refused() -> None:
    with pytest.raises(ValueError, match="no STIX pattern"):
        build_indicator(normalized_row("ipv4", kind="asn"))


def test_an_unknown_hash_type_is_refused() -> None:
    with pytest.raises(ValueError, match="hash type"):
        build_indicator(normalized_row("md5", hash_type="ssdeep"))


def test_the_id_is_the_external_id_behind_the_indicator_prefix() -> None:
    row = normalized_row("ipv4")
    obj = build_indicator(row)
    assert obj["id"] == f"indicator--{row['external_id']}" == stix_id(row["external_id"])
    assert external_id_of(obj["id"]) == row["external_id"]


def test_external_id_of_refuses_an_id_of_another_type() -> None:
    with pytest.raises(ValueError, match="not an indicator id"):
        external_id_of("malware--6ba7b810-9dad-51d1-80b4-00c04fd430c8")


def test_the_object_carries_the_fixed_common_fields() -> None:
    row = normalized_row("ipv4")
    obj = build_indicator(row)
    assert obj["type"] == "indicator"
    assert obj["spec_version"] == "2.1"
    assert obj["pattern_type"] == "stix"
    assert obj["pattern_version"] == "2.1"
    assert obj["name"] == row["value"]
    assert obj["confidence"] == 80
    assert obj["description"] == row["description"]
    assert obj["indicator_types"] == ["malicious-activity"]
    assert obj["external_references"] == [
        {"source_name": "ThreatConnect", "external_id": "1000", "url": row["web_link"]}
    ]


def test_timestamps_have_millisecond_precision_and_a_z_suffix() -> None:
    row = normalized_row("ipv4", last_modified=dt.datetime(2026, 2, 3, 4, 5, 6, 789987, tzinfo=dt.UTC))
    obj = build_indicator(row)
    for field in ("created", "modified", "valid_from", "valid_until"):
        assert STIX_TIMESTAMP.match(obj[field]), (field, obj[field])
    assert obj["modified"] == "2026-02-03T04:05:06.789Z"


def test_created_is_date_added_and_modified_is_last_modified() -> None:
    row = normalized_row("ipv4")
    obj = build_indicator(row)
    assert obj["created"] == format_timestamp(row["date_added"])
    assert obj["modified"] == format_timestamp(row["last_modified"])


def test_stix_modified_from_the_lifecycle_stage_wins_over_last_modified() -> None:
    bumped = BASE_TIME + dt.timedelta(days=3, milliseconds=5)
    obj = build_indicator(normalized_row("ipv4", stix_modified=bumped))
    assert obj["modified"] == format_timestamp(bumped)


def test_a_missing_stix_modified_falls_back_to_last_modified() -> None:
    row = normalized_row("ipv4", stix_modified=None)
    assert build_indicator(row)["modified"] == format_timestamp(row["last_modified"])


def test_modified_is_clamped_to_created_when_threatconnect_reports_it_earlier() -> None:
    row = normalized_row("ipv4", date_added=BASE_TIME, last_modified=BASE_TIME - dt.timedelta(days=2))
    obj = build_indicator(row)
    assert obj["modified"] == obj["created"] == format_timestamp(BASE_TIME)
    stix2.parse(obj, allow_custom=False)


def test_valid_until_is_the_expiration_when_it_is_after_valid_from() -> None:
    obj = build_indicator(normalized_row("ipv4"))
    assert obj["valid_from"] == format_timestamp(BASE_TIME)
    assert obj["valid_until"] == format_timestamp(BASE_TIME + dt.timedelta(days=90))


@pytest.mark.parametrize("offset", [dt.timedelta(0), -dt.timedelta(days=5), dt.timedelta(microseconds=300)])
def test_an_expiration_not_after_valid_from_becomes_one_step_after_it(offset: dt.timedelta) -> None:
    obj = build_indicator(normalized_row("ipv4", expiration=BASE_TIME + offset))
    assert parse_timestamp(obj["valid_until"]) == BASE_TIME + EXPIRED_AT_BIRTH_STEP
    assert parse_timestamp(obj["valid_until"]) > parse_timestamp(obj["valid_from"])
    stix2.parse(obj, allow_custom=False)


def test_no_expiration_means_no_valid_until() -> None:
    assert "valid_until" not in build_indicator(normalized_row("ipv4", expiration=None))


def test_a_missing_valid_from_falls_back_to_created() -> None:
    obj = build_indicator(normalized_row("ipv4", valid_from=None))
    assert obj["valid_from"] == obj["created"]


@pytest.mark.parametrize(
    ("tlp", "marking"),
    [
        ("white", "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"),
        ("clear", "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"),
        ("green", "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"),
        ("amber", "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"),
        ("RED", "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"),
        ("TLP:AMBER", "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"),
    ],
)
def test_tlp_becomes_the_standard_stix_marking_definition(tlp: str, marking: str) -> None:
    assert build_indicator(normalized_row("ipv4", tlp=tlp))["object_marking_refs"] == [marking]


def test_the_tlp_table_matches_the_stix_2_1_specification() -> None:
    # Markings stix2 itself ships with are the spec's: a typo here would mislabel every indicator.
    assert TLP_MARKINGS == {
        "white": stix2.TLP_WHITE.id,
        "green": stix2.TLP_GREEN.id,
        "amber": stix2.TLP_AMBER.id,
        "red": stix2.TLP_RED.id,
    }


def test_no_tlp_means_no_marking() -> None:
    assert "object_marking_refs" not in build_indicator(normalized_row("ipv4", tlp=None))


def test_labels_are_the_tags_sorted_and_unique() -> None:
    obj = build_indicator(normalized_row("ipv4", tags=["zeta", "alpha", "zeta", " "]))
    assert obj["labels"] == ["alpha", "zeta"]


def test_no_tags_means_no_labels() -> None:
    assert "labels" not in build_indicator(normalized_row("ipv4", tags=[]))


@pytest.mark.parametrize(
    ("active", "false_positive", "revoked"),
    [(True, False, False), (False, False, True), (True, True, True), (None, None, False)],
)
def test_revoked_means_inactive_or_false_positive(
    active: bool | None, false_positive: bool | None, revoked: bool
) -> None:
    obj = build_indicator(normalized_row("ipv4", active=active, false_positive=false_positive))
    assert obj["revoked"] is revoked


def test_the_same_row_always_builds_the_same_json() -> None:
    row = normalized_row("url", tags=["b", "a"])
    first = json.dumps(build_indicator(row), sort_keys=True)
    assert all(json.dumps(build_indicator(dict(row)), sort_keys=True) == first for _ in range(3))


def test_reordered_tags_do_not_change_the_object() -> None:
    assert build_indicator(normalized_row("ipv4", tags=["a", "b"])) == build_indicator(
        normalized_row("ipv4", tags=["b", "a"])
    )


def test_a_row_without_any_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="neither date_added nor last_modified"):
        build_indicator(normalized_row("ipv4", date_added=None, last_modified=None))


def test_the_sourcesystem_follows_threatconnects_own_convention() -> None:
    assert source_system("Example Org") == "ThreatConnect-Example Org"
    with pytest.raises(ValueError, match="owner"):
        source_system("  ")


def test_parse_timestamp_reads_offsets_and_long_fractions() -> None:
    assert parse_timestamp("2026-01-10T09:30:00.123456789+01:00") == dt.datetime(
        2026, 1, 10, 8, 30, 0, 123456, tzinfo=dt.UTC
    )


@pytest.mark.parametrize(("value", "object_type"), [("203.0.113.0/24", "ipv4-addr"), ("2001:db8::/32", "ipv6-addr")])
def test_cidr_blocks_stay_in_the_address_value(value: str, object_type: str) -> None:
    obj = build_indicator(normalized_row("ipv4", value=value))
    assert obj["pattern"] == f"[{object_type}:value = '{value}']"
    stix2.parse(obj, allow_custom=False)

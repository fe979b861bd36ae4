"""The Defender indicator built from a normalized row, judged against the published contract (import-ti-indicators.md,
ti-indicator.md): documented field names and enum spellings only, 8-segment IPv6, internal addresses and email refused.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from include.microsoft.defender import DefenderClient, DefenderSink
from include.microsoft.defender.payload import build_payload, same_value, severity_name, tagged_id
from tests.unit.microsoft.graph_rows import normalized_row

# Copied from the docs (ti-indicator.md / post-ti-indicator.md), not from the code under test.
DOCUMENTED_FIELDS = {
    "indicatorValue",
    "indicatorType",
    "action",
    "title",
    "description",
    "expirationTime",
    "severity",
    "recommendedActions",
    "generateAlert",
    "rbacGroupNames",
    "application",
    "educateUrl",
}
DOCUMENTED_TYPES = {"FileSha1", "FileMd5", "CertificateThumbprint", "FileSha256", "IpAddress", "DomainName", "Url"}
DOCUMENTED_ACTIONS = {"Alert", "Warn", "Block", "Audit", "BlockAndRemediate", "AlertAndBlock", "Allowed"}
DOCUMENTED_SEVERITIES = {"Informational", "Low", "Medium", "High"}


class _Tokens:
    def token(self) -> str:
        return "unused"


@pytest.fixture
def sink() -> DefenderSink:
    return DefenderSink(DefenderClient("https://defender.invalid", _Tokens(), client_id="app"))


def _row(sample: str, **overrides: Any) -> dict[str, Any]:
    return normalized_row(sample, **overrides)


@pytest.mark.parametrize(
    ("sample", "value", "expected_type"),
    [
        ("ipv4", "198.51.100.7", "IpAddress"),
        ("host", "bad.example.com", "DomainName"),
        ("url", "https://bad.example.com/login?x=1", "Url"),
        ("md5", "d41d8cd98f00b204e9800998ecf8427e", "FileMd5"),
        ("sha1", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "FileSha1"),
        ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "FileSha256"),
    ],
)
def test_each_kind_becomes_its_documented_indicator_type(
    sink: DefenderSink, sample: str, value: str, expected_type: str
) -> None:
    body = sink.payload(_row(sample))
    assert body["indicatorType"] == expected_type
    assert body["indicatorValue"] == value
    assert body["indicatorType"] in DOCUMENTED_TYPES


@pytest.mark.parametrize("sample", ["ipv4", "ipv6", "host", "url", "md5", "sha1", "sha256"])
def test_the_payload_uses_only_documented_field_names_and_enum_spellings(sink: DefenderSink, sample: str) -> None:
    body = sink.payload(_row(sample))
    assert set(body) <= DOCUMENTED_FIELDS
    assert {"indicatorValue", "indicatorType", "action", "title", "description"} <= set(body)
    assert body["action"] in DOCUMENTED_ACTIONS
    assert body["severity"] in DOCUMENTED_SEVERITIES
    assert body["application"] == "ThreatConnect"


def test_the_default_action_is_alert_spelled_as_the_docs_spell_it(sink: DefenderSink) -> None:
    assert sink.payload(_row("ipv4"))["action"] == "Alert"
    assert "generateAlert" not in sink.payload(_row("ipv4"))


def test_audit_always_asks_for_an_alert_because_defender_requires_it() -> None:
    body = build_payload(_row("ipv4"), action="Audit")
    assert body["action"] == "Audit"
    assert body["generateAlert"] is True
    with pytest.raises(ValueError, match="generateAlert"):
        DefenderSink(
            DefenderClient("https://defender.invalid", _Tokens(), client_id="app"), action="Audit", generate_alert=False
        )


def test_an_action_in_the_wrong_case_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="unknown Defender action"):
        build_payload(_row("ipv4"), action="alert")


def test_block_and_remediate_is_for_files_only() -> None:
    assert build_payload(_row("sha256"), action="BlockAndRemediate")["action"] == "BlockAndRemediate"
    with pytest.raises(ValueError, match="not supported by defender"):
        build_payload(_row("host"), action="BlockAndRemediate")


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (0, "Informational"),
        (1, "Informational"),
        (2, "Low"),
        (3, "Medium"),
        (4, "High"),
        (5, "High"),
    ],
)
def test_the_0_to_5_severity_maps_onto_defenders_four_levels(severity: int, expected: str) -> None:
    assert severity_name(severity) == expected
    assert build_payload(_row("ipv4", severity=severity))["severity"] == expected


def test_a_row_without_severity_sends_none(sink: DefenderSink) -> None:
    assert "severity" not in sink.payload(_row("ipv4", severity=None))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2a02:c7f::1", "2a02:c7f:0:0:0:0:0:1"),  # the docs' own example
        ("2001:DB8:0:0:8:800:200C:417A", "2001:db8:0:0:8:800:200c:417a"),
        ("2001:0db8:0000:0000:0000:0000:0000:0007", "2001:db8:0:0:0:0:0:7"),
        ("2606:4700::", "2606:4700:0:0:0:0:0:0"),
    ],
)
def test_ipv6_is_written_with_all_eight_segments(sink: DefenderSink, value: str, expected: str) -> None:
    body = sink.payload(_row("ipv6", value=value))
    assert body["indicatorValue"] == expected
    assert "::" not in body["indicatorValue"]
    assert len(body["indicatorValue"].split(":")) == 8


@pytest.mark.parametrize(
    "value",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.10.10",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104
        "224.0.0.1",
        "fe80::1",
        "fd00::1",
        "::1",
    ],
)
def test_internal_addresses_are_refused_before_sending(sink: DefenderSink, value: str) -> None:
    sample = "ipv6" if ":" in value else "ipv4"
    with pytest.raises(ValueError, match="not supported by defender: internal address"):
        sink.payload(_row(sample, value=value))


def test_cidr_blocks_are_refused_before_sending(sink: DefenderSink) -> None:
    with pytest.raises(ValueError, match="not supported by defender"):
        sink.payload(_row("ipv4", value="198.51.100.0/24"))


def test_email_addresses_are_refused_because_defender_has_no_such_type(sink: DefenderSink) -> None:
    with pytest.raises(ValueError, match=r"^not supported by defender: EmailAddress$"):
        sink.payload(_row("email"))


def test_the_description_ends_with_the_external_id_tag_and_stays_within_100_characters(sink: DefenderSink) -> None:
    row = _row("url", description="x" * 500)
    body = sink.payload(row)
    assert body["description"].endswith(f"[tc:{row['external_id']}]")
    assert len(body["description"]) <= 100
    assert tagged_id(body["description"]) == row["external_id"]


def test_the_title_names_the_indicator_and_stays_within_100_characters(sink: DefenderSink) -> None:
    long_url = "https://bad.example.com/" + "a" * 300
    body = sink.payload(_row("url", value=long_url))
    assert body["title"].startswith("ThreatConnect URL: https://bad.example.com/")
    assert len(body["title"]) <= 100


def test_a_row_without_description_still_gets_a_readable_one(sink: DefenderSink) -> None:
    body = sink.payload(_row("host", description=None))
    assert body["description"].startswith("Host from ThreatConnect [tc:")


def test_the_expiration_becomes_expiration_time_in_utc(sink: DefenderSink) -> None:
    expiration = dt.datetime(2026, 4, 10, 8, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert sink.payload(_row("ipv4", expiration=expiration))["expirationTime"] == "2026-04-10T06:30:15Z"
    assert "expirationTime" not in sink.payload(_row("ipv4", expiration=None))


def test_the_payload_is_deterministic(sink: DefenderSink) -> None:
    assert sink.payload(_row("sha256")) == sink.payload(_row("sha256"))


def test_device_groups_are_sent_only_when_configured() -> None:
    assert "rbacGroupNames" not in build_payload(_row("ipv4"))
    assert build_payload(_row("ipv4"), rbac_group_names=["Servers"])["rbacGroupNames"] == ["Servers"]


def test_stored_values_compare_by_meaning_not_formatting() -> None:
    assert same_value("expirationTime", "2026-04-10T06:30:15Z", "2026-04-10T06:30:15.0000000+00:00")
    assert same_value("indicatorValue", "bad.example.com", "BAD.example.com")
    assert not same_value("severity", "High", "Low")

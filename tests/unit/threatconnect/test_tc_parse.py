"""Parsing pages of ThreatConnect JSON (v2 typed branches and v3) into the raw Arrow schema."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from include.pipeline.schema import RAW_SCHEMA
from include.threatconnect.parse import parse_page, parse_timestamp, summary_of

UTC = dt.UTC


def _row(batch: pa.RecordBatch, index: int = 0) -> dict:
    return batch.slice(index, 1).to_pylist()[0]


def test_an_empty_page_has_the_raw_schema() -> None:
    batch = parse_page([], "Host")
    assert batch.schema.equals(RAW_SCHEMA)
    assert batch.num_rows == 0


def test_a_v2_typed_address_takes_type_from_the_branch_and_summary_from_ip() -> None:
    item = {
        "id": 4222035,
        "ownerName": "System",
        "dateAdded": "2019-03-28T10:32:05-04:00",
        "lastModified": "2019-03-28T11:02:46-04:00",
        "rating": 4,
        "confidence": 90,
        "threatAssessScore": 281,
        "webLink": "https://tc/x",
        "ip": "221.123.32.14",
    }
    batch = parse_page([item], "Address", page=3)
    assert batch.schema.equals(RAW_SCHEMA)
    row = _row(batch)
    assert row["tc_id"] == 4222035
    assert row["indicator_type"] == "Address"
    assert row["summary"] == "221.123.32.14"
    assert row["owner"] == "System"
    assert row["date_added"] == dt.datetime(2019, 3, 28, 14, 32, 5, tzinfo=UTC)
    assert row["last_modified"] == dt.datetime(2019, 3, 28, 15, 2, 46, tzinfo=UTC)
    assert row["rating"] == 4.0
    assert row["confidence"] == 90
    assert row["threat_assess_score"] == 281
    assert row["active"] is True  # v2 without includeAdditional: listings are active-only
    assert row["false_positive_count"] is None
    assert row["page"] == 3


@pytest.mark.parametrize(
    ("indicator_type", "fields", "summary"),
    [
        ("Host", {"hostName": "Bad.Example.COM."}, "Bad.Example.COM."),
        ("URL", {"text": "http://Example.com/login.php?a=1"}, "http://Example.com/login.php?a=1"),
        ("EmailAddress", {"address": "bad@example.com"}, "bad@example.com"),
        ("Address", {"ip": "2001:db8::1"}, "2001:db8::1"),
    ],
)
def test_each_v2_typed_branch_value_field_becomes_the_summary(indicator_type: str, fields: dict, summary: str) -> None:
    item = {"id": 1, "ownerName": "O", "dateAdded": "2020-01-01T00:00:00Z", "lastModified": "2020-01-01T00:00:00Z"}
    assert _row(parse_page([item | fields], indicator_type))["summary"] == summary


def test_a_v2_file_joins_the_present_hashes_in_md5_sha1_sha256_order() -> None:
    item = {
        "id": 9,
        "dateAdded": "2020-01-01T00:00:00Z",
        "lastModified": "2020-01-01T00:00:00Z",
        "sha256": "B" * 64,
        "md5": "a" * 32,
    }
    row = _row(parse_page([item], "File", owner="Fallback Org"))
    assert row["summary"] == f"{'a' * 32} : {'B' * 64}"
    assert (row["md5"], row["sha1"], row["sha256"]) == ("a" * 32, None, "B" * 64)
    assert row["owner"] == "Fallback Org"


def test_a_file_with_only_a_summary_gets_its_hashes_back_by_length() -> None:
    item = {
        "id": 9,
        "type": "File",
        "dateAdded": "2020-01-01T00:00:00Z",
        "lastModified": "2020-01-01T00:00:00Z",
        "summary": f"{'a' * 32} : {'b' * 40} : {'c' * 64}",
    }
    row = _row(parse_page([item]))
    assert (row["md5"], row["sha1"], row["sha256"]) == ("a" * 32, "b" * 40, "c" * 64)


def test_v2_tags_labels_active_and_false_positives_come_from_their_v2_keys() -> None:
    item = {
        "id": "77",
        "dateAdded": "2020-01-01T00:00:00Z",
        "lastModified": "2020-01-01T00:00:00Z",
        "hostName": "x.example",
        "active": False,
        "falsePositiveCount": 3,
        "tag": [{"name": "APT28", "webLink": "w"}, {"name": "C2"}],
        "securityLabel": [{"name": "TLP:AMBER", "description": "d", "dateAdded": "2016-08-31T00:00:00Z"}],
    }
    row = _row(parse_page([item], "Host"))
    assert row["tc_id"] == 77
    assert row["tags"] == ["APT28", "C2"]
    assert row["security_labels"] == ["TLP:AMBER"]
    assert row["active"] is False
    assert row["false_positive_count"] == 3


def test_a_v3_item_reads_wrapped_tags_labels_false_positives_and_expiry() -> None:
    item = {
        "id": 19,
        "dateAdded": "2023-01-26T20:07:35Z",
        "ownerId": 2,
        "ownerName": "Demo Source",
        "webLink": "https://app/#/details/indicators/19/overview",
        "type": "EmailAddress",
        "lastModified": "2023-01-27T18:20:51Z",
        "summary": "verybadguy@bad.com",
        "privateFlag": False,
        "active": True,
        "activeLocked": False,
        "address": "verybadguy@bad.com",
        "rating": 3.00,
        "description": "phish sender",
        "tags": {"data": [{"id": 11, "name": "Targeted Attack", "lastUsed": "2023-01-27T18:20:51Z"}]},
        "securityLabels": {"data": [{"id": 3, "name": "TLP:AMBER+STRICT", "color": "FFC000"}]},
        "threatAssessScore": 500,
        "falsePositives": 2,
        "externalDateExpires": "2024-01-01T00:00:00Z",
    }
    row = _row(parse_page([item], "Host"))  # the item's own type wins over the argument
    assert row["indicator_type"] == "EmailAddress"
    assert row["owner"] == "Demo Source"
    assert row["summary"] == "verybadguy@bad.com"
    assert row["rating"] == 3.0
    assert row["confidence"] is None
    assert row["tags"] == ["Targeted Attack"]
    assert row["security_labels"] == ["TLP:AMBER+STRICT"]
    assert row["false_positive_count"] == 2
    assert row["threat_assess_score"] == 500
    assert row["description"] == "phish sender"
    assert row["web_link"] == "https://app/#/details/indicators/19/overview"
    assert row["external_date_expires"] == dt.datetime(2024, 1, 1, tzinfo=UTC)


def test_v3_empty_tag_and_label_blocks_become_empty_lists() -> None:
    item = {
        "id": 1,
        "type": "URL",
        "summary": "http://a/",
        "dateAdded": "2023-01-26T20:07:35Z",
        "lastModified": "2023-01-26T20:07:35Z",
        "tags": {"data": []},
        "securityLabels": {},
    }
    row = _row(parse_page([item]))
    assert row["tags"] == []
    assert row["security_labels"] == []


def test_zone_less_dates_are_taken_as_utc_even_mixed_with_zoned_ones_on_one_page() -> None:
    items = [
        {"id": 1, "hostName": "a", "dateAdded": "2017-07-13T17:50:17", "lastModified": "2017-07-13T17:50:17Z"},
        {
            "id": 2,
            "hostName": "b",
            "dateAdded": "2017-07-13T17:50:17-04:00",
            "lastModified": "2017-07-13T17:50:17.250Z",
        },
    ]
    batch = parse_page(items, "Host")
    assert batch.column("date_added").to_pylist() == [
        dt.datetime(2017, 7, 13, 17, 50, 17, tzinfo=UTC),
        dt.datetime(2017, 7, 13, 21, 50, 17, tzinfo=UTC),
    ]
    assert batch.column("last_modified").to_pylist()[1] == dt.datetime(2017, 7, 13, 17, 50, 17, 250000, tzinfo=UTC)


def test_missing_optional_fields_are_null_and_string_numbers_are_accepted() -> None:
    item = {
        "id": 5,
        "hostName": "h",
        "dateAdded": "2020-01-01T00:00:00Z",
        "lastModified": "2020-01-01T00:00:00Z",
        "rating": "2.50",
        "confidence": "70",
        "active": "false",
    }
    row = _row(parse_page([item], "Host"))
    assert row["rating"] == 2.5
    assert row["confidence"] == 70
    assert row["active"] is False
    assert row["description"] is None
    assert row["web_link"] is None
    assert row["external_date_expires"] is None


def test_a_single_result_owner_object_is_read_when_owner_name_is_absent() -> None:
    item = {
        "id": 5,
        "owner": {"id": 1, "name": "Example Org", "type": "Organization"},
        "hostName": "h",
        "dateAdded": "2020-01-01T00:00:00Z",
        "lastModified": "2020-01-01T00:00:00Z",
    }
    assert _row(parse_page([item], "Host", owner="ignored"))["owner"] == "Example Org"


def test_parse_timestamp_handles_each_shape() -> None:
    assert parse_timestamp("2019-03-28T10:32:05-04:00") == dt.datetime(2019, 3, 28, 14, 32, 5, tzinfo=UTC)
    assert parse_timestamp("2019-03-28T10:32:05") == dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)
    assert parse_timestamp("2019-03-28 10:32:05Z") == dt.datetime(2019, 3, 28, 10, 32, 5, tzinfo=UTC)
    assert parse_timestamp(None) is None


def test_summary_of_prefers_the_summary_that_threatconnect_sent() -> None:
    assert summary_of({"summary": "s", "hostName": "h"}, "Host") == "s"
    assert summary_of({"hostName": "h"}, "Host") == "h"
    assert summary_of({}, "Host") is None

"""normalize(): raw ThreatConnect rows to normalized and rejected rows, with nothing lost on the way."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from include.pipeline.dedupe import external_id
from include.pipeline.mappings import load_mapping
from include.pipeline.normalize import fit, normalize
from include.pipeline.schema import NORMALIZED_SCHEMA, RAW_SCHEMA, REJECTED_SCHEMA
from tests.unit.pipeline.pipeline_rows import T0, mixed_rows, raw_table

ADDRESS = load_mapping("Address")
FILE = load_mapping("File")
MD5 = "9e107d9d372bb6826bd81d3542a419d6"
SHA1 = "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"
SHA256 = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"


def one(table: pa.Table) -> dict:
    rows = table.to_pylist()
    assert len(rows) == 1, rows
    return rows[0]


def test_every_input_row_ends_up_normalized_or_rejected():
    raw = raw_table(mixed_rows(3000, bad_every=7))
    normalized, rejected = normalize(raw)
    ids_in = Counter(raw.column("tc_id").to_pylist())
    normalized_ids = set(normalized.column("tc_id").to_pylist())
    rejected_ids = set(rejected.column("tc_id").to_pylist())
    assert normalized_ids | rejected_ids == set(ids_in)
    files = {r["tc_id"] for r in raw.to_pylist() if r["indicator_type"] == "File"}
    # any other type yields exactly one row in exactly one output
    assert not (normalized_ids & rejected_ids) - files
    non_file_out = [i for i in normalized.column("tc_id").to_pylist() + rejected.column("tc_id").to_pylist()]
    assert all(n == 1 for i, n in Counter(non_file_out).items() if i not in files)
    # a File yields one output row per hash it carries (or one rejection when it has none)
    hashes = {r["tc_id"]: sum(bool(r[h]) for h in ("md5", "sha1", "sha256")) or 1 for r in raw.to_pylist()}
    out = Counter(non_file_out)
    assert all(out[i] == hashes[i] for i in files)
    assert rejected.num_rows > 0


def test_outputs_have_exactly_the_stage_schemas():
    normalized, rejected = normalize(raw_table(mixed_rows(200, bad_every=3)))
    assert normalized.schema.equals(NORMALIZED_SCHEMA)
    assert rejected.schema.equals(REJECTED_SCHEMA)


def test_an_empty_batch_gives_two_empty_tables():
    normalized, rejected = normalize(RAW_SCHEMA.empty_table(), ADDRESS)
    assert (normalized.num_rows, rejected.num_rows) == (0, 0)
    assert normalized.schema.equals(NORMALIZED_SCHEMA)


def test_a_record_batch_is_accepted_like_a_table(make_table):
    table = make_table({"summary": "192.0.2.7"})
    assert normalize(table.to_batches()[0], ADDRESS)[0].equals(normalize(table, ADDRESS)[0])


def test_an_input_without_a_raw_column_is_a_programming_error(make_table):
    with pytest.raises(ValueError, match="raw rows lack columns: rating"):
        normalize(make_table({}).drop_columns(["rating"]), ADDRESS)


def test_normalizing_twice_gives_identical_tables():
    raw = raw_table(mixed_rows(500))
    assert normalize(raw)[0].equals(normalize(raw)[0])


def test_an_address_row_becomes_a_full_indicator(make_table):
    row = one(
        normalize(
            make_table(
                {
                    "tc_id": 42,
                    "summary": " 2001:DB8::0:1 ",
                    "rating": 4.0,
                    "confidence": 80,
                    "tags": ["Emotet"],
                    "security_labels": ["TLP:GREEN"],
                    "description": "Seen in\ncampaign X",
                    "false_positive_count": 2,
                }
            ),
            ADDRESS,
        )[0]
    )
    assert row["value"] == "2001:db8::1"
    assert row["raw_value"] == " 2001:DB8::0:1 "
    assert (row["kind"], row["observable"], row["hash_type"]) == ("ip", "networkIPv6", None)
    assert row["external_id"] == external_id("Example Org", "Address", "2001:db8::1")
    assert (row["tc_id"], row["owner"], row["indicator_type"]) == (42, "Example Org", "Address")
    assert (row["confidence"], row["severity"], row["tlp"], row["threat_type"]) == (80, 4, "green", "C2")
    assert row["tags"] == ["Emotet", "ThreatConnect"]
    assert row["description"] == "Seen in campaign X"
    assert row["valid_from"] == T0 - timedelta(days=10)
    assert row["expiration"] == T0 + timedelta(days=60)  # rating 4 override in address.yaml
    assert (row["active"], row["false_positive"]) == (True, True)


def test_a_bad_value_is_rejected_with_its_reason(make_table):
    normalized, rejected = normalize(make_table({"tc_id": 7, "summary": "999.1.1.1"}), ADDRESS)
    assert normalized.num_rows == 0
    assert one(rejected) == {
        "tc_id": 7,
        "owner": "Example Org",
        "indicator_type": "Address",
        "raw_value": "999.1.1.1",
        "last_modified": T0,
        "reason": "invalid ipv4 address: octet 999 out of range",
    }


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"summary": None}, "missing Address value"),
        ({"summary": "   "}, "empty ip address"),
        ({"owner": None}, "missing owner"),
        ({"owner": " "}, "missing owner"),
        ({"date_added": None, "last_modified": None}, "missing dateAdded and lastModified"),
    ],
)
def test_rows_without_what_an_indicator_needs_are_rejected(make_table, override, reason):
    normalized, rejected = normalize(make_table(override), ADDRESS)
    assert normalized.num_rows == 0
    assert one(rejected)["reason"] == reason


def test_one_missing_timestamp_is_filled_from_the_other(make_table):
    normalized, _ = normalize(
        make_table({"tc_id": 1, "last_modified": None}, {"tc_id": 2, "date_added": None}), ADDRESS
    )
    first, second = normalized.to_pylist()
    assert first["last_modified"] == first["date_added"] == T0 - timedelta(days=10)
    assert second["date_added"] == second["valid_from"] == T0


def test_a_row_of_another_type_is_rejected_by_a_single_mapping(make_table):
    _, rejected = normalize(make_table({"indicator_type": "Host", "summary": "example.com"}), ADDRESS)
    assert one(rejected)["reason"] == "indicator type 'Host' does not match the 'Address' mapping"


def test_a_type_without_a_mapping_is_rejected_when_dispatching(make_table):
    normalized, rejected = normalize(
        make_table({"indicator_type": "CIDR", "summary": "10.0.0.0/8"}, {"indicator_type": None}),
    )
    assert normalized.num_rows == 0
    assert rejected.column("reason").to_pylist() == ["unsupported indicator type 'CIDR'", "missing indicator type"]


def test_a_mixed_batch_is_dispatched_to_each_type_mapping(make_table):
    normalized, rejected = normalize(
        make_table(
            {"tc_id": 1, "indicator_type": "Host", "summary": "Evil.Example."},
            {"tc_id": 2, "indicator_type": "URL", "summary": "HTTP://Evil.Example:80"},
            {"tc_id": 3, "indicator_type": "EmailAddress", "summary": "Boss@Evil.Example"},
            {"tc_id": 4, "indicator_type": "Address", "summary": "192.0.2.9"},
            {"tc_id": 5, "indicator_type": "Host", "summary": "also.evil.example"},
        )
    )
    assert rejected.num_rows == 0
    got = {r["tc_id"]: (r["value"], r["observable"], r["threat_type"]) for r in normalized.to_pylist()}
    assert got == {
        1: ("evil.example", "domainName", "C2"),
        2: ("http://evil.example/", "url", "MaliciousUrl"),
        3: ("boss@evil.example", "emailSenderAddress", "Phishing"),
        4: ("192.0.2.9", "networkIPv4", "C2"),
        5: ("also.evil.example", "domainName", "C2"),
    }
    assert normalized.column("tc_id").to_pylist() == [1, 5, 2, 3, 4]  # types by first appearance


# --- File -------------------------------------------------------------------------------------------------------


def test_a_file_becomes_one_indicator_per_hash(make_table):
    table = make_table(
        {"indicator_type": "File", "summary": "ignored", "md5": MD5.upper(), "sha1": SHA1, "sha256": SHA256}
    )
    normalized, rejected = normalize(table, FILE)
    assert rejected.num_rows == 0
    rows = normalized.to_pylist()
    assert [(r["value"], r["hash_type"], r["observable"]) for r in rows] == [
        (MD5, "md5", "fileHashValue"),
        (SHA1, "sha1", "fileHashValue"),
        (SHA256, "sha256", "fileHashValue"),
    ]
    assert rows[0]["raw_value"] == MD5.upper()
    assert len({r["external_id"] for r in rows}) == 3
    assert all(r["threat_type"] == "Malware" and r["tc_id"] == 1 for r in rows)


def test_a_file_keeps_its_good_hashes_and_rejects_each_bad_one(make_table):
    table = make_table(
        {"indicator_type": "File", "md5": "not-a-hash", "sha1": MD5, "sha256": SHA256},
    )
    normalized, rejected = normalize(table, FILE)
    assert normalized.column("value").to_pylist() == [SHA256]
    assert rejected.column("raw_value").to_pylist() == ["not-a-hash", MD5]
    assert rejected.column("reason").to_pylist() == [
        "invalid hash: non-hexadecimal characters",
        "invalid hash: sha1 holds 32 hex digits (a md5?)",
    ]


def test_a_file_without_any_hash_is_rejected_once(make_table):
    _, rejected = normalize(make_table({"indicator_type": "File", "summary": None, "md5": "  "}), FILE)
    assert one(rejected)["reason"] == "File has no hash"


def test_a_file_with_only_a_summary_takes_its_hashes_from_it(make_table):
    table = make_table({"indicator_type": "File", "summary": f"{MD5.upper()} : {SHA256}"})
    normalized, _ = normalize(table, FILE)
    assert [(r["value"], r["hash_type"]) for r in normalized.to_pylist()] == [(MD5, "md5"), (SHA256, "sha256")]


# --- mapped fields ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "tlp"),
    [
        ([], "amber"),
        (["TLP:WHITE"], "white"),
        (["TLP:CLEAR"], "white"),
        (["tlp:green"], "green"),
        (["TLP: Amber+Strict"], "amber"),
        (["TLP:GREEN", "TLP:RED", "TLP:WHITE"], "red"),
        (["TLP:WHITE", "TLP:AMBER"], "amber"),
        (["Customer Confidential"], "amber"),
        (["Customer Confidential", "TLP:WHITE"], "white"),
    ],
)
def test_tlp_is_the_most_restrictive_label_or_the_default(make_table, labels, tlp):
    assert one(normalize(make_table({"security_labels": labels}), ADDRESS)[0])["tlp"] == tlp


@pytest.mark.parametrize(
    ("rating", "severity"),
    [
        (None, 3),
        (0.0, 3),
        (0.5, 1),
        (1.0, 1),
        (2.49, 2),
        (2.5, 3),
        (4.5, 5),
        (5.0, 5),
        (7.0, 5),
        (-1.0, 3),
        (float("nan"), 3),
    ],
)
def test_severity_is_the_rating_rounded_half_up_with_unknown_as_default(make_table, rating, severity):
    assert one(normalize(make_table({"rating": rating}), ADDRESS)[0])["severity"] == severity


@pytest.mark.parametrize(("confidence", "expected"), [(None, 50), (0, 0), (85, 85), (100, 100), (250, 100), (-5, 0)])
def test_confidence_is_kept_within_0_100_with_a_default(make_table, confidence, expected):
    assert one(normalize(make_table({"confidence": confidence}), ADDRESS)[0])["confidence"] == expected


@pytest.mark.parametrize(
    ("rating", "expires", "expected"),
    [
        (None, None, T0 + timedelta(days=30)),
        (3.0, None, T0 + timedelta(days=30)),
        (4.2, None, T0 + timedelta(days=60)),
        (5.0, None, T0 + timedelta(days=90)),
        (5.0, datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
    ],
)
def test_expiration_follows_the_policy_from_last_modified_or_threatconnect(make_table, rating, expires, expected):
    table = make_table({"rating": rating, "external_date_expires": expires})
    assert one(normalize(table, ADDRESS)[0])["expiration"] == expected


def test_threatconnect_expiry_is_ignored_when_the_mapping_says_so(make_table):
    mapping = dataclasses.replace(
        ADDRESS, expiration=dataclasses.replace(ADDRESS.expiration, use_threatconnect_expiry=False)
    )
    table = make_table({"external_date_expires": datetime(2030, 1, 1, tzinfo=UTC)})
    assert one(normalize(table, mapping)[0])["expiration"] == T0 + timedelta(days=30)


def test_tags_are_trimmed_deduplicated_case_insensitively_and_sorted(make_table):
    table = make_table({"tags": ["zeus", " APT28 ", "apt28", "", "Botnet", "threatconnect"]}, {"tags": None})
    first, second = normalize(table, ADDRESS)[0].column("tags").to_pylist()
    assert first == ["APT28", "Botnet", "ThreatConnect", "zeus"]
    assert second == ["ThreatConnect"]


def test_tag_order_in_threatconnect_does_not_change_the_output(make_table):
    a = normalize(make_table({"tags": ["b", "A", "c"]}), ADDRESS)[0]
    b = normalize(make_table({"tags": ["c", "b", "A"]}), ADDRESS)[0]
    assert a.equals(b)


def test_a_row_without_a_description_gets_the_fallback_text(make_table):
    table = make_table({"rating": 5.0, "description": "  \n "}, {"rating": None, "description": None})
    assert normalize(table, ADDRESS)[0].column("description").to_pylist() == [
        "ThreatConnect Address (threat rating Very High) from Example Org",
        "ThreatConnect Address (threat rating Unknown) from Example Org",
    ]


def test_a_long_description_is_cut_to_graphs_limit(make_table):
    table = make_table({"description": "word " * 40}, {"description": "\U0001f600" * 60})
    plain, emoji = normalize(table, ADDRESS)[0].column("description").to_pylist()
    assert len(plain) == 100
    assert plain.endswith("word…")
    assert len(emoji.encode("utf-16-le")) // 2 <= 100
    assert emoji == "\U0001f600" * 49 + "…"


def test_inactive_and_unknown_activity_are_kept_apart(make_table):
    table = make_table({"active": False}, {"active": None, "false_positive_count": None})
    rows = normalize(table, ADDRESS)[0].to_pylist()
    assert [(r["active"], r["false_positive"]) for r in rows] == [(False, False), (True, False)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", "short"),
        ("x" * 100, "x" * 100),
        ("x" * 101, "x" * 99 + "…"),
        ("é" * 101, "é" * 99 + "…"),
        ("a" + "\U0001f600" * 50, "a" + "\U0001f600" * 49 + "…"),  # 101 units: the last pair is not split
        ("\U0001f600" * 50, "\U0001f600" * 50),  # exactly 100 units
        ("x" * 98 + " yyy", "x" * 98 + "…"),  # no dangling space before the ellipsis
    ],
)
def test_fit_counts_utf16_units_and_never_splits_a_surrogate_pair(text, expected):
    assert fit(text) == expected
    assert len(fit(text).encode("utf-16-le")) // 2 <= 100

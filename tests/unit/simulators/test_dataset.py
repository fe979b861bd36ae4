"""The synthetic ThreatConnect data set: deterministic, realistic, and dirty in known proportions."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections import Counter
from urllib.parse import urlsplit

import pytest

from simulators.dataset import DEFAULT_OWNER, TLP_LABELS, TYPES, generate

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 3, 8, tzinfo=dt.UTC)
COUNT = 20_000
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate(42, COUNT, DEFAULT_OWNER, START, END)


def _valid_host(value: str) -> bool:
    host = value.rstrip(".") if value.count("..") == 0 else value
    try:
        host = host.encode("idna").decode().lower()
    except UnicodeError:
        return False
    labels = host.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def _valid(record: dict) -> bool:
    """An independent validator, so that the ``_invalid`` ground truth is checked, not trusted."""
    kind = record["type"]
    if kind == "Address":
        try:
            ipaddress.ip_address(record["ip"].strip())
        except ValueError:
            return False
        return True
    if kind == "Host":
        return _valid_host(record["hostName"])
    if kind == "URL":
        parts = urlsplit(record["text"])
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and _valid_host(parts.hostname)
    if kind == "EmailAddress":
        user, at, domain = record["address"].partition("@")
        return bool(at) and bool(user) and " " not in user and _valid_host(domain)
    lengths = {"md5": 32, "sha1": 40, "sha256": 64}
    hashes = {name: record[name] for name in lengths if name in record}
    return bool(hashes) and all(
        len(value) == lengths[name] and re.fullmatch(r"[0-9a-fA-F]+", value) for name, value in hashes.items()
    )


def test_the_same_seed_gives_the_same_records_and_another_seed_does_not() -> None:
    first = generate(7, 500, DEFAULT_OWNER, START, END)
    assert first == generate(7, 500, DEFAULT_OWNER, START, END)
    assert [r["summary"] for r in first] != [r["summary"] for r in generate(8, 500, DEFAULT_OWNER, START, END)]


def test_every_type_is_present_with_its_value_fields(records: list[dict]) -> None:
    counts = Counter(record["type"] for record in records)
    assert set(counts) == set(TYPES)
    assert min(counts.values()) >= COUNT // len(TYPES) - 1
    for record in records:
        assert record["summary"]
        assert record["owner"] == DEFAULT_OWNER


def test_ids_are_unique(records: list[dict]) -> None:
    assert len({record["id"] for record in records}) == COUNT


def test_last_modified_is_inside_the_window_and_not_before_date_added(records: list[dict]) -> None:
    assert all(START <= record["lastModified"] < END for record in records)
    assert all(record["dateAdded"] <= record["lastModified"] for record in records)


def test_about_one_to_two_percent_are_invalid_and_the_ground_truth_agrees(records: list[dict]) -> None:
    invalid = [record for record in records if not _valid(record)]
    assert 0.01 <= len(invalid) / COUNT <= 0.02
    assert {record["id"] for record in invalid} == {record["id"] for record in records if record["_invalid"]}
    assert {record["type"] for record in invalid} == set(TYPES)


def test_some_values_canonicalise_to_an_earlier_indicator(records: list[dict]) -> None:
    by_id = {record["id"]: record for record in records}
    duplicates = [record for record in records if record["_duplicate_of"] is not None]
    assert 0.002 <= len(duplicates) / COUNT <= 0.01
    hosts = [(r, by_id[r["_duplicate_of"]]) for r in duplicates if r["type"] == "Host"]
    assert hosts
    for duplicate, original in hosts:
        assert duplicate["hostName"] != original["hostName"]
        assert duplicate["hostName"].lower().rstrip(".") == original["hostName"].lower().rstrip(".")


def test_realistic_variety_is_present(records: list[dict]) -> None:
    addresses = [r["ip"] for r in records if r["type"] == "Address" and not r["_invalid"]]
    assert any(":" in a and "::" not in a and len(a) == 39 for a in addresses)  # uncompressed IPv6
    assert any(":" in a and "::" in a for a in addresses)
    hosts = [r["hostName"] for r in records if r["type"] == "Host"]
    assert any(h.endswith(".") for h in hosts)
    assert any(not h.isascii() for h in hosts)
    assert any(h != h.lower() for h in hosts)
    urls = [r["text"] for r in records if r["type"] == "URL" and not r["_invalid"]]
    assert any("?" in u for u in urls)
    assert any(urlsplit(u).netloc != urlsplit(u).netloc.lower() for u in urls)
    files = [r for r in records if r["type"] == "File" and not r["_invalid"]]
    assert {sum(name in r for name in ("md5", "sha1", "sha256")) for r in files} == {1, 2, 3}
    assert any(r.get("sha256", "").isupper() for r in files)


def test_status_false_positives_and_labels_have_the_intended_shares(records: list[dict]) -> None:
    inactive = sum(not record["active"] for record in records) / COUNT
    false_positive = sum(record["falsePositives"] > 0 for record in records) / COUNT
    assert 0.04 <= inactive <= 0.06
    assert 0.01 <= false_positive <= 0.03
    labels = Counter(tuple(record["securityLabels"]) for record in records)
    assert set(labels) == {()} | {(label,) for label in TLP_LABELS}
    assert any(record["externalDateExpires"] is not None for record in records)
    assert any(record["rating"] is None for record in records)
    assert any(record["confidence"] is None for record in records)


def test_a_type_subset_is_honoured() -> None:
    assert {record["type"] for record in generate(1, 50, DEFAULT_OWNER, START, END, types=("File",))} == {"File"}

"""The canonicalisers judged by the data generator's recorded intent: each dirty value it made becomes the clean
value it started from, and each value it broke on purpose is refused."""

from __future__ import annotations

import datetime as dt

import pytest

from include.pipeline.canonical import canonical_hash, canonicalize
from include.pipeline.canonical_columns import canonicalize_many
from simulators.dataset import REJECTED, Dataset, generate_dataset

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
KIND = {"Address": "ip", "Host": "host", "URL": "url", "EmailAddress": "email"}
FIELD = {"Address": "ip", "Host": "hostName", "URL": "text", "EmailAddress": "address"}
HASHES = ("md5", "sha1", "sha256")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate_dataset(31, 20_000, "Example Org", START, START + dt.timedelta(days=7))


def _canonicalised(record: dict) -> list[tuple[str | None, str]]:
    if record["type"] == "File":
        return [canonical_hash(record[h], h) for h in HASHES if h in record]
    return [canonicalize(KIND[record["type"]], record[FIELD[record["type"]]])]


@pytest.mark.parametrize("indicator_type", [*sorted(KIND), "File"])
def test_every_generated_value_canonicalises_to_the_clean_value_it_was_made_from(dataset, indicator_type) -> None:
    wrong = []
    for record in (r for r in dataset.records if r["type"] == indicator_type):
        intent = dataset.intents[record["id"]]
        if intent.outcome == REJECTED:
            continue
        meant = [(o.value, o.variant) for o in intent.observables]
        if _canonicalised(record) != meant:
            wrong.append((record["summary"], _canonicalised(record), meant))
    assert wrong == []


def test_every_value_broken_on_purpose_is_refused(dataset) -> None:
    accepted = [
        (r["summary"], dataset.intents[r["id"]].reason)
        for r in dataset.records
        if dataset.intents[r["id"]].outcome == REJECTED and any(v is not None for v, _ in _canonicalised(r))
    ]
    assert accepted == []


@pytest.mark.parametrize("indicator_type", sorted(KIND))
def test_the_column_wise_path_gives_the_clean_values_too(dataset, indicator_type) -> None:
    # normalize canonicalises whole columns (canonicalize_many's RE2 fast path for hosts and email addresses)
    records = [r for r in dataset.records if r["type"] == indicator_type]
    results = canonicalize_many(KIND[indicator_type], [r[FIELD[indicator_type]] for r in records])
    wrong = []
    for record, (value, variant) in zip(records, results, strict=True):
        intent = dataset.intents[record["id"]]
        meant = [] if intent.outcome == REJECTED else [(o.value, o.variant) for o in intent.observables]
        if (meant and [(value, variant)] != meant) or (not meant and value is not None):
            wrong.append((record["summary"], value, meant))
    assert wrong == []

"""Normalization judged by a corpus written outside the code (tests/data/corpus, copied from the team's shared
corpus): every value must end in one of the outcomes a careful analyst accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.pipeline.canonical import canonical_hash, canonicalize
from include.pipeline.mappings import load_mapping

CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "indicators.jsonl"
LINES = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def test_the_corpus_covers_every_indicator_type() -> None:
    assert {line["type"] for line in LINES} == {"Address", "Host", "URL", "EmailAddress", "File"}


@pytest.mark.parametrize("line", LINES, ids=lambda line: f"{line['type']}:{line['value'][:40]}")
def test_every_corpus_value_ends_in_an_outcome_the_analyst_accepts(line: dict) -> None:
    if line["type"] == "File":
        value, reason = canonical_hash(line["value"], None)
    else:
        value, reason = canonicalize(load_mapping(line["type"]).kind, line["value"])
    got = "REJECT" if value is None else value
    assert got in line["outcomes"], f"{line['why']}: got {got!r} ({reason})"
    if value is None:
        assert reason, "a rejection carries its reason"

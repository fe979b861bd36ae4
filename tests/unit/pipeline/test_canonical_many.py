"""The column-wise fast path gives exactly the per-value canonicaliser's answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.pipeline.canonical import CANONICALISERS, canonicalize_many

# Characters that matter to host and email rules: case, dots, hyphens, digits, '@', whitespace, unicode, punycode.
ALPHABET = st.sampled_from([*"abcXYZ019.-@_+ ", "xn--", "é", "ß", "\t", "..", "com", "a" * 63, "１"])
VALUES = st.lists(ALPHABET, min_size=0, max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=64, max_size=120))
@pytest.mark.parametrize("kind", ["host", "email"])
def test_many_values_at_once_match_one_at_a_time(kind, values) -> None:
    assert canonicalize_many(kind, values) == [CANONICALISERS[kind](v) for v in values]


@pytest.mark.parametrize("kind", ["host", "email", "ip", "url"])
def test_realistic_values_match_one_at_a_time(kind) -> None:
    samples = {
        "host": ["Example.COM.", "bad host.com", "xn--fa-hia.de", "faß.de", "a" * 64 + ".com", "1.2.3.4",
                 "sub.example.co.uk", "-bad.com", "ok-1.example", "example.123", "x.y"],
        "email": ["Phish@Example.COM", "a@b", "no-at.example.com", "first.last+tag@mail.example.org.",
                  "x..y@example.com", "o'brien@example.ie", "user@xn--fa-hia.de", "u@faß.de", "a" * 65 + "@x.com"],
        "ip": ["1.2.3.4", "2001:DB8::1", "999.1.1.1"],
        "url": ["HTTP://Example.com/A?b=C", "example.com/x"],
    }[kind]
    values = samples * 10
    assert canonicalize_many(kind, values) == [CANONICALISERS[kind](v) for v in values]

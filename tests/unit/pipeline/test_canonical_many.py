"""The column-wise fast path gives exactly the per-value canonicaliser's answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.pipeline.canonical import CANONICALISERS
from include.pipeline.canonical_columns import canonicalize_many

# Characters that matter to host and email rules: case, dots, hyphens, digits, '@', whitespace, unicode, punycode.
ALPHABET = st.sampled_from([*"abcXYZ019.-@_+ ", "xn--", "é", "ß", "\t", "..", "com", "a" * 63, "１"])
VALUES = st.lists(ALPHABET, min_size=0, max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=64, max_size=120))
@pytest.mark.parametrize("kind", ["host", "email"])
def test_many_values_at_once_match_one_at_a_time(kind, values) -> None:
    assert canonicalize_many(kind, values) == [CANONICALISERS[kind](v) for v in values]


# URLs: scheme spellings, hosts, ports, userinfo, escapes in both cases, characters that need encoding.
URL_PARTS = st.sampled_from(["http://", "HTTPS://", "ftp://", "htp://", "Example.COM", "a.b", "xn--fa-hia.de",
                             "faß.de", "1.2.3.4", "[::1]", ":80", ":8443", "@", "/", "/a", "?q=1", "#f", "%2f",
                             "%2F", "%zz", "%", " ", "é", "..", ".", "-", "a" * 63, "{", "|", "'", "~"])
URLS = st.lists(URL_PARTS, min_size=0, max_size=8).map("".join)
IP_PARTS = st.sampled_from(["1", "0", "00", "01", "255", "256", "9", ".", ":", "::", "ff", " ", "/24", "%"])
IPS = st.lists(IP_PARTS, min_size=0, max_size=9).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(URLS, min_size=64, max_size=120), st.lists(IPS, min_size=64, max_size=120))
def test_many_urls_and_ips_at_once_match_one_at_a_time(urls, ips) -> None:
    assert canonicalize_many("url", urls) == [CANONICALISERS["url"](v) for v in urls]
    assert canonicalize_many("ip", ips) == [CANONICALISERS["ip"](v) for v in ips]


@pytest.mark.parametrize("kind", ["host", "email", "ip", "url"])
def test_realistic_values_match_one_at_a_time(kind) -> None:
    samples = {
        "host": ["Example.COM.", "bad host.com", "xn--fa-hia.de", "faß.de", "a" * 64 + ".com", "1.2.3.4",
                 "sub.example.co.uk", "-bad.com", "ok-1.example", "example.123", "x.y"],
        "email": ["Phish@Example.COM", "a@b", "no-at.example.com", "first.last+tag@mail.example.org.",
                  "x..y@example.com", "o'brien@example.ie", "user@xn--fa-hia.de", "u@faß.de", "a" * 65 + "@x.com"],
        "ip": ["1.2.3.4", "2001:DB8::1", "999.1.1.1", "0.0.0.0", "010.1.1.1", " 1.2.3.4"],  # noqa: S104
        "url": ["HTTP://Example.com/A?b=C", "example.com/x", "https://a.example/x%2fy", "https://a.example/x%2Fy",
                "http://a.example:80/", "https://a.example", "https://a.example./", "https://xn--fa-hia.de/",
                "https://A.example/ü", "https://a.example/" + "x" * 2070, "http://u@a.example/"],
    }[kind]
    values = samples * 10
    assert canonicalize_many(kind, values) == [CANONICALISERS[kind](v) for v in values]

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
URL_PARTS = st.sampled_from(
    [
        "http://",
        "HTTPS://",
        "ftp://",
        "htp://",
        "Example.COM",
        "a.b",
        "MiXeD.Example",
        "\u212a.com",  # the Kelvin sign: RE2's case-insensitive match folds it to "k"; UTS #46 maps it to "k"
        "\u017fite.com",  # the long s (folds to "s")
        "xn--fa-hia.de",
        "faß.de",
        "1.2.3.4",
        "[::1]",
        ":80",
        ":8443",
        "@",
        "/",
        "/a",
        "?q=1",
        "#f",
        "%2f",
        "%2F",
        "%zz",
        "%",
        " ",
        "é",
        "..",
        ".",
        "-",
        "a" * 63,
        "{",
        "|",
        "'",
        "~",
    ]
)
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
        "host": [
            "Example.COM.",
            "bad host.com",
            "xn--fa-hia.de",
            "faß.de",
            "a" * 64 + ".com",
            "1.2.3.4",
            "sub.example.co.uk",
            "-bad.com",
            "ok-1.example",
            "example.123",
            "x.y",
        ],
        "email": [
            "Phish@Example.COM",
            "a@b",
            "no-at.example.com",
            "first.last+tag@mail.example.org.",
            "x..y@example.com",
            "o'brien@example.ie",
            "user@xn--fa-hia.de",
            "u@faß.de",
            "a" * 65 + "@x.com",
        ],
        "ip": ["1.2.3.4", "2001:DB8::1", "999.1.1.1", "0.0.0.0", "010.1.1.1", " 1.2.3.4"],  # noqa: S104
        "url": [
            "HTTP://Example.com/A?b=C",
            "example.com/x",
            "https://a.example/x%2fy",
            "https://a.example/x%2Fy",
            "http://a.example:80/",
            "https://a.example",
            "https://a.example./",
            "https://xn--fa-hia.de/",
            "https://A.example/ü",
            "https://a.example/" + "x" * 2070,
            "http://u@a.example/",
            "HTTPS://WWW.Example.COM/Path/A?Q=B#F",
            "FTP://x.Y.z/",
            "http://exampl\u212a.com/a",
            "https://\u017fite.example/",
            "HTTP://\u212aELVIN.example/%aa",
        ],
    }[kind]
    values = samples * 10
    assert canonicalize_many(kind, values) == [CANONICALISERS[kind](v) for v in values]


# File rows: hashes in any case, blank, padded, all-zero, the empty file's, wrong lengths, missing; summaries only.
HEX = st.sampled_from(
    [
        "d41d8cd98f00b204e9800998ecf8427e",
        "0" * 32,
        "A" * 32,
        "ab" * 20,
        "0" * 40,
        "1f" * 32,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "F" * 64,
        "a" * 31,
        "zz" + "a" * 30,
        "",
        " ",
        " " + "b" * 32,
        "é" * 32,
        "c" * 40 + "\t",
    ]
)
HASH_FIELD = st.one_of(st.none(), HEX)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            HASH_FIELD,
            HASH_FIELD,
            HASH_FIELD,
            st.one_of(st.none(), st.sampled_from(["a" * 32 + " : " + "b" * 40, "", "x : " + "c" * 64])),
        ),
        min_size=1,
        max_size=90,
    )
)
def test_file_rows_column_wise_match_the_file_rules_row_by_row(rows) -> None:
    from include.pipeline.canonical import canonical_hash
    from include.pipeline.mappings import load_mapping
    from include.pipeline.normalize import normalize
    from tests.unit.pipeline.pipeline_rows import raw_row, raw_table

    table = raw_table(
        [
            raw_row(tc_id=i, indicator_type="File", summary=summary, md5=md5, sha1=sha1, sha256=sha256)
            for i, (md5, sha1, sha256, summary) in enumerate(rows)
        ]
    )
    expected_good, expected_bad = [], []
    for i, (md5, sha1, sha256, summary) in enumerate(rows):  # the rules as the mapping documents them
        found = [
            (raw, kind)
            for raw, kind in ((md5, "md5"), (sha1, "sha1"), (sha256, "sha256"))
            if raw is not None and raw.strip()
        ]
        if not found and summary:
            found = [(part.strip(), None) for part in summary.split(":") if part.strip()]
        if not found:
            expected_bad.append((i, summary, "File has no hash"))
        for raw, kind in found:
            value, why = canonical_hash(raw, kind)
            (expected_good.append((i, value, why)) if value is not None else expected_bad.append((i, raw, why)))
    normalized, rejected = normalize(table, load_mapping("File"))
    assert (
        list(
            zip(
                normalized["tc_id"].to_pylist(),
                normalized["value"].to_pylist(),
                normalized["hash_type"].to_pylist(),
                strict=True,
            )
        )
        == expected_good
    )
    assert list(
        zip(
            rejected["tc_id"].to_pylist(),
            rejected["raw_value"].to_pylist(),
            rejected["reason"].to_pylist(),
            strict=True,
        )
    ) == sorted(expected_bad, key=lambda r: r[0])

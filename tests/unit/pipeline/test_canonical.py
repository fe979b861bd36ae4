"""Canonical values per kind: tables of good and bad inputs, and properties (idempotence, round trips)."""

from __future__ import annotations

import ipaddress

import idna
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import domains, urls

from include.pipeline.canonical import (
    CANONICALISERS,
    canonical_email,
    canonical_hash,
    canonical_host,
    canonical_ip,
    canonical_url,
    canonicalize,
)
from include.pipeline.idn import plain_idna as _plain_idna

# --- good values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value", "variant"),
    [
        ("192.0.2.1", "192.0.2.1", "ipv4"),
        ("  10.0.0.1\n", "10.0.0.1", "ipv4"),  # private addresses stay: internal C2 is still C2
        ("255.255.255.255", "255.255.255.255", "ipv4"),
        ("0.0.0.1", "0.0.0.1", "ipv4"),
        ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1", "ipv6"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1", "ipv6"),
        ("1:0:1:1:1:1:1:1", "1:0:1:1:1:1:1:1", "ipv6"),  # RFC 5952: a single zero word is not compressed
        ("1:0:0:1:0:0:0:1", "1:0:0:1::1", "ipv6"),  # the longest run is compressed
        ("1:0:0:1:1:0:0:1", "1::1:1:0:0:1", "ipv6"),  # the first of equal runs
        ("::FFFF:192.0.2.1", "::ffff:192.0.2.1", "ipv6"),
        ("::ffff:c000:201", "::ffff:192.0.2.1", "ipv6"),
        ("::1", "::1", "ipv6"),
    ],
)
def test_ip_addresses_are_written_canonically_and_tell_v4_from_v6(raw, value, variant):
    assert canonical_ip(raw) == (value, variant)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("Example.COM", "example.com"),
        ("www.example.com.", "www.example.com"),
        ("  a-b.c0.example  ", "a-b.c0.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008 non-transitional, as browsers resolve it (not fass.de)
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("例え。テスト", "xn--r8jz45g.xn--zckzah"),  # ideographic full stop is a dot under UTS #46
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        ("1.2.3.example", "1.2.3.example"),
    ],
)
def test_hosts_are_lowercase_ascii_without_the_root_dot(raw, value):
    assert canonical_host(raw) == (value, "domain")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("HTTP://Example.COM/Path?Q=A#Frag", "http://example.com/Path?Q=A#Frag"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com?q=1", "http://example.com/?q=1"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("ftp://example.com:21/pub", "ftp://example.com/pub"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("http://example.com:08080/a", "http://example.com:8080/a"),
        ("https://example.com:/a", "https://example.com/a"),
        ("https://example.com:80/a", "https://example.com:80/a"),
        ("http://192.0.2.1/x", "http://192.0.2.1/x"),
        ("http://[2001:DB8::1]:8443/x", "http://[2001:db8::1]:8443/x"),
        ("http://bücher.example/straße?q=ü", "http://xn--bcher-kva.example/stra%C3%9Fe?q=%C3%BC"),
        ("http://example.com/a%2fb%7E", "http://example.com/a%2Fb%7E"),
        ("http://example.com/100%", "http://example.com/100%25"),
        ("http://example.com/a|b{c}<d>", "http://example.com/a%7Cb%7Bc%7D%3Cd%3E"),
        ("http://User:Pass@Example.com/", "http://User:Pass@example.com/"),
        ("http://google.com@evil.example/login", "http://google.com@evil.example/login"),
    ],
)
def test_urls_get_lowercase_scheme_and_host_and_keep_the_rest(raw, value):
    assert canonical_url(raw) == (value, "url")


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  first.last+tag@mail.example.org ", "first.last+tag@mail.example.org"),
        ("o'brien@example.com", "o'brien@example.com"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("Ünïcode@example.com", "ünïcode@example.com"),
    ],
)
def test_email_addresses_are_lowercased_with_a_canonical_domain(raw, value):
    assert canonical_email(raw) == (value, "email")


@pytest.mark.parametrize(
    ("raw", "value", "variant"),
    [
        (" 9E107D9D372BB6826BD81D3542A419D6 ", "9e107d9d372bb6826bd81d3542a419d6", "md5"),
        ("2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12", "sha1"),
        (
            "D7A8FBB307D7809469CA9ABCB0082E4F8D5651E46D3CDB762D02D0BF37C9E592",
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592",
            "sha256",
        ),
    ],
)
def test_hashes_are_lowercase_hex_typed_by_length(raw, value, variant):
    assert canonical_hash(raw) == (value, variant)
    assert canonical_hash(raw, expected=variant) == (value, variant)


def test_canonicalize_dispatches_on_the_mapping_kind():
    assert set(CANONICALISERS) == {"ip", "host", "url", "email", "hash"}
    assert canonicalize("host", "Example.com") == ("example.com", "domain")


# --- bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canon", "raw", "reason"),
    [
        (canonical_ip, "999.1.1.1", "invalid ipv4 address: octet 999 out of range"),
        (canonical_ip, "1.2.3.256", "invalid ipv4 address: octet 256 out of range"),
        (canonical_ip, "010.0.0.1", "octet 010 has a leading zero (ambiguous octal)"),
        (canonical_ip, "1.2.3", "expected 4 octets, got 3"),
        (canonical_ip, "1.2.3.4.5", "expected 4 octets, got 5"),
        (canonical_ip, "0x7f.0.0.1", "octet '0x7f' is not a decimal number"),
        (canonical_ip, "1.2.3.-4", "octet '-4' is not a decimal number"),
        (canonical_ip, "١.2.3.4", "is not a decimal number"),  # Arabic-Indic digit one
        (canonical_ip, "1. 2.3.4", "is not a decimal number"),
        (canonical_ip, "192.0.2.0/24", "CIDR block '192.0.2.0/24' is not an Address"),
        (canonical_ip, "2001:db8::/32", "is not an Address"),
        (canonical_ip, "0.0.0.0", "unspecified address 0.0.0.0"),  # noqa: S104
        (canonical_ip, "::", "unspecified address ::"),
        (canonical_ip, "0:0:0:0:0:0:0:0", "unspecified address ::"),
        (canonical_ip, "fe80::1%eth0", "zone index"),
        (canonical_ip, "1::2::3", "invalid ipv6 address"),
        (canonical_ip, "12345::1", "invalid ipv6 address"),
        (canonical_ip, "::ffff:01.2.3.4", "invalid ipv6 address"),
        (canonical_ip, "[2001:db8::1]", "invalid ipv6 address"),
        (canonical_ip, "example.com", "expected 4 octets, got 2"),
        (canonical_ip, "   ", "empty ip address"),
        (canonical_host, "localhost", "single label"),
        (canonical_host, "bad_host.example", "character '_' not allowed"),
        (canonical_host, "-lead.example", "starts or ends with a hyphen"),
        (canonical_host, "trail-.example", "starts or ends with a hyphen"),
        (canonical_host, "a..example", "empty label"),
        (canonical_host, "example.com..", "empty label"),
        (canonical_host, "a" * 64 + ".example", "label of 64 characters"),
        (canonical_host, ("a" * 62 + ".") * 4 + "com", "characters (at most 253)"),
        (canonical_host, "exa mple.com", "character ' ' not allowed"),
        (canonical_host, "*.example.com", "character '*' not allowed"),
        (canonical_host, "192.0.2.1", "ip address literal '192.0.2.1' is not a host"),
        (canonical_host, "2001:db8::1", "ip address literal"),
        (canonical_host, "1.2.3.999", "numeric top-level label"),
        (canonical_host, "xn--zz.example", "bad punycode label"),
        (canonical_host, "ex\u200dample.com", "invalid internationalised host"),  # zero-width joiner
        (canonical_host, "", "empty host"),
        (canonical_url, "example.com/path", "no scheme"),
        (canonical_url, "//example.com/path", "no scheme"),
        (canonical_url, "http:/example.com", "no scheme"),
        (canonical_url, "javascript://alert(1)", "unsupported scheme 'javascript'"),
        (canonical_url, "hxxp://evil.example/", "unsupported scheme 'hxxp'"),
        (canonical_url, "http://exa mple.com/", "whitespace or control characters"),
        (canonical_url, "http://example.com/a b", "whitespace or control characters"),
        (canonical_url, "http://example.com/a\tb", "whitespace or control characters"),
        (canonical_url, "http://example.com/\x00", "whitespace or control characters"),
        (canonical_url, "http://example.com/a\u3000b", "whitespace or control characters"),
        (canonical_url, "http:///path", "no host"),
        (canonical_url, "http://localhost/", "invalid url host: invalid host"),
        (canonical_url, "http://bad_host.example/", "invalid url host: invalid host: character '_'"),
        (canonical_url, "http://999.1.1.1/", "invalid url host: invalid ipv4 address: octet 999 out of range"),
        (canonical_url, "http://example.com:99999/", "port '99999' is not 1-65535"),
        (canonical_url, "http://example.com:0/", "port '0' is not 1-65535"),
        (canonical_url, "http://example.com:http/", "port 'http' is not 1-65535"),
        (canonical_url, "http://2001:db8::1/", "ipv6 host without brackets"),
        (canonical_url, "http://[2001:db8::1/", "unterminated ipv6 literal"),
        (canonical_url, "http://[192.0.2.1]/", "brackets around an ipv4 address"),
        (canonical_url, "http://[::1]x/", "junk after ipv6 literal"),
        (canonical_url, "", "empty url"),
        (canonical_email, "no-at-sign.example.com", "exactly one '@'"),
        (canonical_email, "a@b@example.com", "exactly one '@'"),
        (canonical_email, "@example.com", "empty local part"),
        (canonical_email, "user@", "empty domain"),
        (canonical_email, "us er@example.com", "whitespace or control characters"),
        (canonical_email, '"quoted"@example.com', "quoted local parts are not supported"),
        (canonical_email, ".user@example.com", "is not a dot-atom"),
        (canonical_email, "a..b@example.com", "is not a dot-atom"),
        (canonical_email, "a(b)@example.com", "is not a dot-atom"),
        (canonical_email, "x" * 65 + "@example.com", "local part of 65 characters"),
        (canonical_email, "user@localhost", "invalid email domain: invalid host"),
        (canonical_email, "user@[192.0.2.1]", "invalid email domain"),
        (canonical_email, "", "empty email address"),
        (canonical_hash, "xyz", "non-hexadecimal"),
        (canonical_hash, "0x9e107d9d372bb6826bd81d3542a419d6", "non-hexadecimal"),
        (canonical_hash, "9e107d9d 372bb6826bd81d3542a419d6", "non-hexadecimal"),
        (canonical_hash, "abc123", "6 hex digits"),
        (canonical_hash, "0" * 32, "all-zero placeholder"),
        (canonical_hash, "D41D8CD98F00B204E9800998ECF8427E", "md5 of the empty file"),
        (canonical_hash, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256 of the empty"),
        (canonical_hash, "", "empty hash"),
    ],
)
def test_bad_values_are_refused_with_a_reason(canon, raw, reason):
    value, why = canon(raw)
    assert value is None
    assert reason in why


def test_a_hash_in_the_wrong_column_is_refused():
    value, why = canonical_hash("9e107d9d372bb6826bd81d3542a419d6", expected="sha1")
    assert value is None
    assert why == "invalid hash: sha1 holds 32 hex digits (a md5?)"


def test_a_long_bad_value_is_shortened_in_the_reason():
    _, why = canonical_ip("10.0.0.0/" + "8" * 500)
    assert len(why) < 120


# --- properties -------------------------------------------------------------------------------------------------


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_but_the_unspecified_round_trips(addr):
    if int(addr) == 0:
        assert canonical_ip(str(addr))[0] is None
    else:
        assert canonical_ip(str(addr)) == (str(addr), "ipv4")


@given(st.ip_addresses(v=6))
@example(ipaddress.IPv6Address("::ffff:192.0.2.1"))
@example(ipaddress.IPv6Address("1:0:0:1:1:0:0:1"))
def test_every_ipv6_address_round_trips_through_its_compressed_and_exploded_forms(addr):
    if addr.is_unspecified:
        assert canonical_ip(addr.exploded)[0] is None
        return
    expected = f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped else addr.compressed
    assert canonical_ip(addr.exploded) == (expected, "ipv6")
    assert canonical_ip(addr.compressed.upper()) == (expected, "ipv6")
    assert ipaddress.IPv6Address(expected) == addr


def _assert_idempotent(canon, raw: str) -> None:
    value, detail = canon(raw)
    if value is not None:
        assert canon(value) == (value, detail)


_host_text = st.text(alphabet=st.sampled_from("aZ09-._ üßÄ。xn"), max_size=30)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=40), st.ip_addresses().map(str), st.ip_addresses().map(lambda a: a.exploded)))
def test_ip_canonicalisation_is_idempotent(raw):
    _assert_idempotent(canonical_ip, raw)


@settings(max_examples=300)
@given(st.one_of(domains(), _host_text, domains().map(str.upper), domains().map(lambda d: d + ".")))
def test_host_canonicalisation_is_idempotent(raw):
    _assert_idempotent(canonical_host, raw)


@given(domains())
def test_every_ascii_domain_is_accepted_lowercased(domain):
    assert canonical_host(domain.upper()) == (domain.lower(), "domain")


_url_tail = st.text(alphabet=st.sampled_from("aZ/?#%=&~:@!ü|{}<>^`\\\"'é2F"), max_size=20)


@settings(max_examples=300)
@given(
    st.one_of(
        urls(),
        st.builds(lambda d, t: f"HTTP://{d}{t}", domains(), _url_tail),
        st.builds(lambda t: f"https://[2001:DB8::1]:443{t}", _url_tail),
        st.text(max_size=40),
    )
)
def test_url_canonicalisation_is_idempotent(raw):
    _assert_idempotent(canonical_url, raw)


@settings(max_examples=300)
@given(st.one_of(st.emails(), st.emails().map(str.upper), st.text(max_size=30)))
def test_email_canonicalisation_is_idempotent(raw):
    _assert_idempotent(canonical_email, raw)


@given(
    st.one_of(
        st.binary(min_size=16, max_size=16), st.binary(min_size=20, max_size=20), st.binary(min_size=32, max_size=32)
    )
)
def test_any_digest_is_accepted_whatever_its_case(digest):
    h = digest.hex()
    value, variant = canonical_hash(h.upper())
    if value is not None:  # all-zero and empty-file digests are refused
        assert (value, variant) == (h, {32: "md5", 40: "sha1", 64: "sha256"}[len(h)])
        assert canonical_hash(value) == (value, variant)


def test_a_url_of_2083_characters_is_accepted_and_one_longer_is_rejected_with_the_limit_in_the_reason() -> None:
    from include.pipeline.canonical import canonical_url

    base = "https://example.com/"
    longest = base + "a" * (2083 - len(base))
    assert canonical_url(longest) == (longest, "url")
    value, reason = canonical_url(longest + "b")
    assert value is None
    assert "2,084 characters" in reason
    assert "2,083" in reason


def test_the_url_limit_counts_the_percent_encoded_form_that_is_sent() -> None:
    from include.pipeline.canonical import canonical_url

    # 700 non-ASCII characters become 2,100 bytes of %XX escapes: what Graph would see.
    value, reason = canonical_url("https://example.com/" + "é" * 700)
    assert value is None
    assert "2,083" in reason


# --- the plain-IDN shortcut against idna itself -----------------------------------------------------------------

# Letters of the scripts feeds use, and everything that must send a name to idna instead: upper case (ASCII and
# not), marks, joiners, right-to-left letters and digits, other full stops, fullwidth forms, contextual characters
# (middle dots, Greek keraia), characters UTS #46 maps (the Kelvin sign, the long s, 'ẞ'), deviations, emoji.
_IDN_ALPHABET = st.sampled_from(
    [
        *"abcxyz0189-.",
        *"ABC",
        *"üößéàçñøåæ",
        *"ÜÖÄÉ",
        "ẞ",
        *"παράδειγμαςΣΑ",
        *"пример\u0451рфЖЯ",
        *"例え日本語",
        *"ひらがなカタカナ",
        "\u30fb",  # katakana middle dot (CONTEXTO)
        "\u00b7",  # middle dot (CONTEXTO)
        "\u0375",  # Greek lower numeral sign (CONTEXTO)
        "\u0301",  # combining acute accent
        "e\u0301",  # not NFC
        "\u200d",  # zero width joiner (CONTEXTJ)
        "\u200c",  # zero width non-joiner (CONTEXTJ)
        *"אב",  # Hebrew
        *"عر",  # Arabic
        "\u0661",  # Arabic-Indic digit one
        "\u3002",  # ideographic full stop
        "\uff0e",  # fullwidth full stop
        "ｆ",  # fullwidth f
        "\u212a",  # Kelvin sign
        "\u017f",  # long s
        "İ",
        "\u00ad",  # soft hyphen (ignored by UTS #46)
        "😀",
        "xn--",
        "--",
        "a" * 60,
        "ü" * 30,
    ]
)


def _idna_answer(name: str) -> str | None:
    try:
        return idna.encode(name, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


@settings(max_examples=2000, deadline=None)
@given(st.lists(_IDN_ALPHABET, min_size=1, max_size=14).map("".join))
@example("bücher.de")
@example("παράδειγμα31.рф")
@example("例え.jp")
@example("ab--ü.com")
@example("-ü.com")
@example("ü-.com")
@example("ü..com")
@example("ü.com.")
@example("xn--ü.com")
@example(("ü" * 60) + ".com")
def test_the_plain_idn_shortcut_gives_idnas_answer_or_none(name):
    plain = _plain_idna(name)
    assert plain is None or plain == _idna_answer(name)


@pytest.mark.parametrize(
    "block", [(0x00A0, 0x0250), (0x0370, 0x0400), (0x0400, 0x0530), (0x3040, 0x3100), (0x4E00, 0x4F00)]
)
def test_every_character_the_shortcut_keeps_is_kept_by_idna(block):
    for cp in range(*block):
        for name in (f"a{chr(cp)}b.com", f"{chr(cp)}.example", f"x1{chr(cp)}{chr(cp)}.рф"):
            plain = _plain_idna(name)
            assert plain is None or plain == _idna_answer(name), name


def test_the_common_idns_take_the_shortcut():
    for name in ("bücher451.com", "παράδειγμα31.рф", "пример564.рф", "café313.com", "例え.jp", "ひらがな.jp"):
        assert _plain_idna(name) == _idna_answer(name) is not None
    assert canonical_host("Bücher.DE.") == ("xn--bcher-kva.de", "domain")  # upper case: idna's own path

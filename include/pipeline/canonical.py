"""Canonicalise and validate one indicator value per kind (ip, host, url, email, hash), fast enough for bulk use.

Every function returns a ``Result``: ``(canonical value, variant)`` on success, ``(None, reason)`` on failure.
No exceptions on bad data: rejects are ordinary in threat feeds, and a tuple is cheaper than a raise per row.
The variant says which target property carries the value (``ipv4``/``ipv6``, ``domain``, ``url``, ``email``,
``md5``/``sha1``/``sha256``). Every function is idempotent: canonicalising a canonical value returns it unchanged.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import struct
from collections.abc import Callable
from urllib.parse import quote

import idna  # IDNA 2008 + UTS #46 (what browsers resolve); a dependency of requests, pinned in requirements.lock

from include.pipeline.idn import plain_idna

Result = tuple[str | None, str]

_SHOW = 60  # longest excerpt of a bad value quoted in a reason


def _show(value: str) -> str:
    return repr(value if len(value) <= _SHOW else value[:_SHOW] + "...")


# --- ip ---------------------------------------------------------------------------------------------------------


def _ipv4_reason(s: str) -> str:
    """Why a string without a colon is not a plain IPv4 address (the slow path, rejects only)."""
    parts = s.split(".")
    if len(parts) != 4:
        return f"invalid ipv4 address: expected 4 octets, got {len(parts)}"
    for p in parts:
        if not (p.isascii() and p.isdigit()):
            return f"invalid ipv4 address: octet {_show(p)} is not a decimal number"
        if len(p) > 1 and p[0] == "0":
            # 010 is 8 to inet_aton (octal) and 10 to most parsers: an indicator must not be ambiguous
            return f"invalid ipv4 address: octet {p} has a leading zero (ambiguous octal)"
        if int(p) > 255:
            return f"invalid ipv4 address: octet {p} out of range"
    return f"invalid ipv4 address: {_show(s)}"


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: A dotted quad without leading zeros (each octet 0-255).
IPV4_PATTERN = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV4_RE = re.compile(IPV4_PATTERN)
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_V6_WORDS = struct.Struct("!8H")
_V6_UNSPECIFIED = bytes(16)


def _format_ipv6(packed: bytes) -> str:
    """RFC 5952 text of 16 address bytes, independent of the platform's ``inet_ntop`` and Python's version.

    Lowercase hex without leading zeros; the longest run of two or more zero words (the first on a tie) becomes
    ``::``; IPv4-mapped addresses end in dotted quad (section 5). Python's ``IPv6Address.compressed`` agrees
    except for IPv4-mapped addresses, whose ``str()`` changed in Python 3.13: the value feeds the stable id.
    """
    if packed[:12] == _V4_MAPPED:
        return "::ffff:" + ".".join(map(str, packed[12:]))
    words = _V6_WORDS.unpack(packed)
    best_start, best_len, start = -1, 1, -1
    for i, word in enumerate(words):
        if word == 0:
            if start < 0:
                start = i
            if i - start + 1 > best_len:
                best_start, best_len = start, i - start + 1
        else:
            start = -1
    hexes = ["%x" % w for w in words]  # noqa: UP031 - the fastest spelling in a per-value loop
    if best_start < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best_start]) + "::" + ":".join(hexes[best_start + best_len :])


def _parse_ipv6(s: str) -> bytes | str:
    """16 address bytes, or the reason the text is not an IPv6 address."""
    try:
        return socket.inet_pton(socket.AF_INET6, s)  # C speed for the common, valid case
    except (OSError, ValueError, UnicodeError):
        pass
    # Slow path for rejects: Python's parser has the better message (and the final say, whatever the platform).
    try:
        return ipaddress.IPv6Address(s).packed
    except ValueError as exc:
        return f"invalid ipv6 address: {exc}"


def canonical_ip(raw: str) -> Result:
    """Canonicalise an IP address: dotted-quad IPv4 or RFC 5952 (compressed, lowercase) IPv6.

    CIDR blocks, zone ids and the unspecified addresses are refused; private and other non-routable addresses
    are kept (an internal C2 address is still an indicator). IPv4 octets with a leading zero are refused as
    ambiguous (octal to ``inet_aton``). The variant tells IPv4 from IPv6 because Graph carries them in
    different properties.

    Returns:
        ``(address, "ipv4" | "ipv6")`` or ``(None, reason)``.
    """
    s = raw.strip()
    if not s:
        return None, "empty ip address"
    if ":" not in s:
        if _IPV4_RE.fullmatch(s):
            if s == "0.0.0.0":  # noqa: S104 - a value compared, not an address bound
                return None, "unspecified address 0.0.0.0 is not an indicator"
            return s, "ipv4"
        if "/" in s:
            return None, f"CIDR block {_show(s)} is not an Address"
        return None, _ipv4_reason(s)
    if "/" in s:
        return None, f"CIDR block {_show(s)} is not an Address"
    if "%" in s:
        return None, f"invalid ipv6 address: zone index in {_show(s)}"
    packed = _parse_ipv6(s)
    if isinstance(packed, str):
        return None, packed
    if packed == _V6_UNSPECIFIED:
        return None, "unspecified address :: is not an indicator"
    return _format_ipv6(packed), "ipv6"


# --- host -------------------------------------------------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _host_reason(s: str) -> str:
    """Explain why an ASCII, lower-cased name failed the host pattern (the slow path, rejects only)."""
    if len(s) > 253:
        return f"invalid host: {len(s)} characters (at most 253)"
    labels = s.split(".")
    if len(labels) < 2:
        return f"invalid host: {_show(s)} has a single label (need a registered domain)"
    for label in labels:
        if not label:
            return f"invalid host: empty label in {_show(s)}"
        if len(label) > 63:
            return f"invalid host: label of {len(label)} characters (at most 63)"
        bad = next((c for c in label if c not in _LDH), None)
        if bad is not None:
            return f"invalid host: character {bad!r} not allowed (letters, digits, hyphen)"
        if label[0] == "-" or label[-1] == "-":
            return f"invalid host: label {_show(label)} starts or ends with a hyphen"
    return f"invalid host: {_show(s)}"


def canonical_host(raw: str) -> Result:
    """Canonicalise a host name: lowercase ASCII, punycode for IDN, without the root dot.

    IDN labels are encoded with IDNA 2008 + UTS #46 non-transitional processing, the rules browsers resolve
    with (``faß.de`` -> ``xn--fa-hia.de``, not IDNA 2003's ``fass.de``). Labels must be LDH, 1-63 characters,
    not start or end with a hyphen; the name at most 253 characters with at least two labels; the top-level
    label not all digits (RFC 3696), which also refuses IPv4 literals.

    Returns:
        ``(host, "domain")`` or ``(None, reason)``.
    """
    s = raw.strip()
    if not s:
        return None, "empty host"
    # idna has already decoded (and re-encoded) every xn-- label of what it returns: only an ASCII name's
    # punycode labels are checked below.
    checked = not s.isascii()
    if not checked:
        s = s.lower()
    elif (plain := plain_idna(s)) is not None:
        s = plain
    else:
        try:
            s = idna.encode(s, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            return None, f"invalid internationalised host: {exc}"
    if s.endswith("."):
        s = s[:-1]  # the root label: "example.com." and "example.com" are one name
    if not _HOST_RE.fullmatch(s) or len(s) > 253:
        if ":" in s or s.startswith("["):
            return None, f"ip address literal {_show(s)} is not a host"
        return None, _host_reason(s)
    if s[s.rfind(".") + 1 :].isdigit():
        if canonical_ip(s)[0] is not None:
            return None, f"ip address literal {_show(s)} is not a host"
        return None, f"invalid host: numeric top-level label in {_show(s)}"
    if "xn--" in s and not checked:
        for label in s.split("."):
            if label.startswith("xn--"):
                try:
                    label[4:].encode("ascii").decode("punycode")
                except UnicodeError:
                    return None, f"invalid host: bad punycode label {_show(label)}"
    return s, "domain"


# Hosts inside URLs and email addresses repeat (many URLs on one site, many senders at one domain): memoise.
_host_in_value = functools.lru_cache(maxsize=1 << 16)(canonical_host)


# --- url --------------------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": "80", "https": "443", "ftp": "21"}
#: The longest URL Microsoft states it supports (KB 208427); Graph refuses longer ones per item ("must comply with
#: RFC 1738"), so they are rejected here, with the reason, instead of being sent and refused.
URL_MAX = 2083
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)  # scheme, authority, the rest
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")
# RFC 3986 unreserved + reserved + '%' may appear literally; anything else (non-ASCII, "<>\^`{|} ) is encoded.
_URL_SAFE = "!#$&'()*+,/:;=?@[]~%"
_NEEDS_QUOTE = re.compile(r"[^A-Za-z0-9\-._~!#$&'()*+,/:;=?@\[\]%]")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PERCENT_LOWER = re.compile(r"%(?:[0-9a-f][0-9A-Fa-f]|[0-9A-F][a-f])")


def _encode_part(part: str) -> str:
    """RFC 1738-safe text: non-ASCII and unsafe characters percent-encoded, escapes kept with upper-case hex."""
    if _NEEDS_QUOTE.search(part):
        part = quote(part, safe=_URL_SAFE)
    if "%" in part:
        part = _STRAY_PERCENT.sub("%25", part)
        part = _PERCENT_LOWER.sub(lambda m: m.group(0).upper(), part)
    return part


def canonical_url(raw: str) -> Result:
    """Canonicalise a URL for Graph's ``url`` property (RFC 1738 compatible).

    Requires an http, https or ftp scheme (none is ever guessed). Lower-cases the scheme and host, encodes an
    IDN host as punycode, writes IP hosts canonically, drops the scheme's default port and an empty port, makes
    an empty path ``/`` (RFC 3986 section 6.2.3), keeps the case of userinfo, path, query and fragment, and
    percent-encodes their non-ASCII and unsafe characters as UTF-8 (escapes get upper-case hex).

    Returns:
        ``(url, "url")`` or ``(None, reason)``.
    """
    s = raw.strip()
    if not s:
        return None, "empty url"
    if (not s.isprintable() or " " in s) and _SPACE_OR_CONTROL.search(s):
        return None, "invalid url: contains whitespace or control characters"
    parts = _URL_RE.fullmatch(s)
    if parts is None:
        return None, "invalid url: no scheme (expected http://, https:// or ftp://)"
    scheme, authority, tail = parts.groups()
    scheme = scheme.lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        return None, f"invalid url: unsupported scheme {_show(scheme)} (http, https or ftp)"

    userinfo = ""
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        userinfo = _encode_part(userinfo) + "@"

    port = ""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None, "invalid url: unterminated ipv6 literal"
        host_part, after = authority[1:close], authority[close + 1 :]
        if after and not after.startswith(":"):
            return None, "invalid url: junk after ipv6 literal"
        port = after[1:]
        value, variant = canonical_ip(host_part)
        if value is None:
            return None, f"invalid url host: {variant}"
        if variant != "ipv6":
            return None, "invalid url: brackets around an ipv4 address"
        host = f"[{value}]"
    else:
        host_part, _, port = authority.partition(":")
        if ":" in port:
            return None, "invalid url: ipv6 host without brackets"
        if not host_part:
            return None, "invalid url: no host"
        if host_part.replace(".", "").isdigit():
            host, reason = canonical_ip(host_part)
        else:
            host, reason = _host_in_value(host_part)
        if host is None:
            return None, f"invalid url host: {reason}"

    if port:
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
            return None, f"invalid url: port {_show(port)} is not 1-65535"
        port = str(int(port))
        port = "" if port == default_port else f":{port}"

    if not tail.startswith("/"):
        tail = "/" + tail  # "http://a.example?q" is "http://a.example/?q"
    url = f"{scheme}://{userinfo}{host}{port}{_encode_part(tail)}"
    if len(url) > URL_MAX:
        return None, (
            f"invalid url: {len(url):,} characters, more than the {URL_MAX:,} Microsoft's targets support (KB 208427)"
        )
    return url, "url"


# --- email ------------------------------------------------------------------------------------------------------

# dot-atom local part (RFC 5322) plus non-ASCII (RFC 6531); quoted local parts are refused.
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"
_LOCAL_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")


def canonical_email(raw: str) -> Result:
    """Canonicalise an email address: lower-cased local part ``@`` canonical host.

    The local part is lower-cased although RFC 5321 lets a server treat it case-sensitively: practically every
    mail system does not, ThreatConnect users enter the same sender in several spellings, and two spellings must
    not become two indicators (two external ids) for one sender.

    Returns:
        ``(address, "email")`` or ``(None, reason)``.
    """
    s = raw.strip()
    if not s:
        return None, "empty email address"
    # isprintable() is a fast C pre-check: False for every control and every space but " "
    if (not s.isprintable() or " " in s) and _SPACE_OR_CONTROL.search(s):
        return None, "invalid email address: contains whitespace or control characters"
    if s.count("@") != 1:
        return None, "invalid email address: needs exactly one '@'"
    local, _, domain = s.partition("@")
    if not local:
        return None, "invalid email address: empty local part"
    if not domain:
        return None, "invalid email address: empty domain"
    if local.startswith('"'):
        return None, "invalid email address: quoted local parts are not supported"
    if len(local) > 64:
        return None, f"invalid email address: local part of {len(local)} characters (at most 64)"
    if not _LOCAL_RE.fullmatch(local):
        return None, f"invalid email address: local part {_show(local)} is not a dot-atom"
    host, reason = _host_in_value(domain)
    if host is None:
        return None, f"invalid email domain: {reason}"
    return f"{local.lower()}@{host}", "email"


# --- hash -------------------------------------------------------------------------------------------------------

_HEX = "0123456789abcdef"
HASH_TYPES: dict[int, str] = {32: "md5", 40: "sha1", 64: "sha256"}
# Digests of the empty file: real hashes, but they match every empty file on every machine (false positives only).
EMPTY_FILE_DIGESTS = frozenset(
    {
        "d41d8cd98f00b204e9800998ecf8427e",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    }
)


def canonical_hash(raw: str, expected: str | None = None) -> Result:
    """Canonicalise a file hash: lowercase hex whose length says md5 (32), sha1 (40) or sha256 (64).

    Args:
        raw: the hash as ThreatConnect sent it.
        expected: the hash type of the column the value came from; a different length is refused.

    Returns:
        ``(hash, "md5" | "sha1" | "sha256")`` or ``(None, reason)``. All-zero placeholders and the empty
        file's digests are refused.
    """
    s = raw.strip().lower()
    if not s:
        return None, "empty hash"
    if s.strip(_HEX):  # what remains after removing hex digits from both ends is a non-hex character
        return None, "invalid hash: non-hexadecimal characters"
    kind = HASH_TYPES.get(len(s))
    if kind is None:
        return None, f"invalid hash: {len(s)} hex digits (md5 32, sha1 40, sha256 64)"
    if expected is not None and kind != expected:
        return None, f"invalid hash: {expected} holds {len(s)} hex digits (a {kind}?)"
    if not s.strip("0"):
        return None, "invalid hash: all-zero placeholder"
    if s in EMPTY_FILE_DIGESTS:
        return None, f"invalid hash: {kind} of the empty file"
    return s, kind


#: Canonicaliser per mapping kind; ``hash`` also takes the expected hash type.
CANONICALISERS: dict[str, Callable[..., Result]] = {
    "ip": canonical_ip,
    "host": canonical_host,
    "url": canonical_url,
    "email": canonical_email,
    "hash": canonical_hash,
}


def canonicalize(kind: str, raw: str) -> Result:
    """Canonicalise one value with the canonicaliser of a mapping kind (see ``CANONICALISERS``)."""
    return CANONICALISERS[kind](raw)

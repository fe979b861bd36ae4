"""A seeded generator of realistic ThreatConnect indicators (with deliberate dirt) for tests and benchmarks."""

from __future__ import annotations

import datetime as dt
import gc
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_OWNER = "Example Organization"
TYPES = ("Address", "Host", "URL", "EmailAddress", "File")
TLP_LABELS = ("TLP:WHITE", "TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")

INVALID_RATE = 0.015  # share of deliberately invalid values, per type
DUPLICATE_RATE = 0.005  # share of values that canonicalise to an earlier indicator's value
INACTIVE_RATE = 0.05
FALSE_POSITIVE_RATE = 0.02

_WORDS = (
    "alpha",
    "bravo",
    "cloud",
    "secure",
    "login",
    "update",
    "cdn",
    "mail",
    "portal",
    "account",
    "verify",
    "office",
    "files",
    "static",
    "api",
    "track",
    "pay",
    "bank",
    "shop",
    "news",
    "media",
    "sync",
    "drive",
    "support",
    "service",
    "online",
    "web",
    "my",
    "get",
    "free",
    "best",
    "global",
    "net",
    "data",
    "app",
)
_TLDS = ("com", "net", "org", "info", "ru", "cn", "io", "biz", "xyz", "top", "co.uk", "de", "fr", "online")
_IDN = ("bücher", "müller", "straße", "пример", "испытание", "例え", "münchen", "café", "παράδειγμα", "köln")
_IDN_TLDS = ("de", "рф", "com", "jp", "net")
_PATHS = (
    "login.php",
    "index.html",
    "wp-admin/admin.php",
    "download/setup.exe",
    "a/b/c",
    "update",
    "verify",
    "Account/Login.aspx",
    "images/logo.png",
    "api/v1/beacon",
    "gate.php",
    "invoice.pdf",
)
_QUERIES = ("", "", "", "?id=123", "?user=alice&token=ABC", "?q=test%20page", "?ref=mail&utm_source=x", "?a=1")
_TAGS = (
    "APT28",
    "APT29",
    "Phishing",
    "Malware",
    "C2",
    "Botnet",
    "Ransomware",
    "Emotet",
    "TrickBot",
    "Cobalt Strike",
    "Spam",
    "Scanner",
    "Tor Exit",
    "Credential Harvesting",
    "Targeted Attack",
)
_DESCRIPTIONS = (
    "Observed in phishing campaign",
    "C2 server for commodity malware",
    "Seen in honeypot logs",
    "Reported by partner feed",
    "Hosting exploit kit landing page",
    "A rather long analyst note that goes on to describe the infrastructure, its hosting provider, the "
    "campaign it belongs to and why it matters, well over a hundred characters long",
)
_USERS = ("admin", "info", "john.doe", "billing", "support", "no-reply", "Alice.Smith", "hr", "x123", "ceo")
_HEX = "0123456789abcdef"

# --- what the generator means each record to become -------------------------------------------------------------
# Written by construction: every value starts clean (lower-case host, compressed IPv6, lower-case hex...) and the
# dirt (case, a root dot, whitespace, another spelling) is added after, so the clean value is known without any
# canonicaliser. Nothing here may import the pipeline: the whole-DAG tests judge the pipeline with it.

LOADED = "loaded"  # delivered and live in the target (unless a newer record of the same value says otherwise)
NOT_LIVE = "not live"  # valid, but inactive or a false positive: never created, retracted if delivered
REJECTED = "rejected"  # refused at normalize, with one of REASON_CLASSES

#: Why a deliberately invalid value is invalid (the ``reason`` of a rejected ``Intent``).
REASON_CLASSES = {
    "ipv4-octet-out-of-range": "an IPv4 octet above 255",
    "ipv4-octet-count": "not four dot-separated octets",
    "ipv6-syntax": "an IPv6 group that is not hexadecimal",
    "host-bad-character": "a space or underscore in a host name",
    "host-empty-label": "two dots in a row",
    "host-hyphen": "a label starting with a hyphen",
    "host-single-label": "one label only (no top-level domain)",
    "url-no-scheme": "no http/https scheme",
    "url-no-host": "a scheme with an empty host",
    "url-whitespace": "a space inside the URL",
    "email-at-count": "no '@' or two of them",
    "email-empty-local-part": "nothing before the '@'",
    "email-bad-domain": "a domain that is not a host name",
    "email-whitespace": "a space inside the address",
    "hash-length": "a hex string of no hash's length",
    "hash-not-hex": "non-hexadecimal characters",
}


@dataclass(frozen=True)
class Observable:
    """One canonical value a target should observe, and which kind of value it is."""

    value: str
    #: ``ipv4``, ``ipv6``, ``domain``, ``url``, ``email``, ``md5``, ``sha1`` or ``sha256``.
    variant: str


@dataclass(frozen=True)
class Intent:
    """What the generator means one ThreatConnect record to become."""

    tc_id: int
    indicator_type: str
    last_modified: dt.datetime
    outcome: str  # LOADED, NOT_LIVE or REJECTED
    observables: tuple[Observable, ...]  # the canonical value(s); empty when REJECTED (a File: one per hash)
    reason: str | None  # REJECTED: a REASON_CLASSES key; NOT_LIVE: "inactive" or "false positive"
    duplicate_of: int | None  # id of an earlier record this one respells (same observables), or None


@dataclass(frozen=True)
class Dataset:
    """Records (as ``generate`` returns them) and, by ThreatConnect id, what each is meant to become."""

    records: list[dict[str, Any]]
    intents: dict[int, Intent]


def _ace(label: str) -> str:
    # The IDN words are lower-case NFC and valid under IDNA 2008 as they are, so their A-label is plain RFC 3492
    # punycode (Python's codec) behind "xn--": no mapping step (that is the canonicaliser's job on dirty input).
    return label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")


def _below(rng: random.Random, n: int) -> int:
    # ``int(random() * n)``: uniform enough here, and a third of ``randrange``'s cost.
    return int(rng.random() * n)


def _host(rng: random.Random) -> str:
    word = _WORDS[_below(rng, len(_WORDS))]
    label = f"{word}{_below(rng, 100000)}"
    if rng.random() < 0.3:
        label = f"{_WORDS[_below(rng, len(_WORDS))]}.{label}"
    return f"{label}.{_TLDS[_below(rng, len(_TLDS))]}"


def _mixed_case(rng: random.Random, value: str) -> str:
    roll = rng.random()
    if roll < 0.1:
        return value.upper()
    if roll < 0.25:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in value)
    return value


def _ipv6(rng: random.Random) -> str:
    groups = [rng.getrandbits(16) for _ in range(8)]
    groups[0] = 0x2001
    if rng.random() < 0.5:
        groups[2:5] = [0, 0, 0]
    if rng.random() < 0.3:
        # The uncompressed, zero-padded spelling that must canonicalise like the short one.
        return ":".join(f"{g:04x}" for g in groups)
    return ":".join(f"{g:x}" for g in groups).replace(":0:0:0:", "::", 1)


def _address(rng: random.Random) -> tuple[str, str]:
    """``(as ThreatConnect holds it, canonical)``."""
    if rng.random() < 0.1:
        value = _ipv6(rng)
        # RFC 5952 (compressed, lower-case) as the standard library writes it: these are never IPv4-mapped.
        return value, ipaddress.IPv6Address(value).compressed
    bits = rng.getrandbits(32)
    value = f"{(bits >> 24) % 223 + 1}.{(bits >> 16) & 255}.{(bits >> 8) & 255}.{bits & 255}"
    return value, value


# Each bad-value maker returns ``(value, reason class)``; the choice is over a tuple of the same length as before,
# so the random sequence (and every seeded data set) is unchanged.
def _bad_address(rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            (f"256.{_below(rng, 256)}.1.{_below(rng, 256)}", "ipv4-octet-out-of-range"),
            (f"10.{_below(rng, 256)}.1", "ipv4-octet-count"),
            ("1.2.3.999", "ipv4-octet-out-of-range"),
            ("192.168.1.1.5", "ipv4-octet-count"),
            ("2001:db8::g1", "ipv6-syntax"),
            ("not-an-ip", "ipv4-octet-count"),
            (f"300.300.300.{_below(rng, 256)}", "ipv4-octet-out-of-range"),
        )
    )


def _hostname(rng: random.Random) -> tuple[str, str]:
    """``(as ThreatConnect holds it, canonical)``."""
    roll = rng.random()
    if roll < 0.04:
        labels = (f"{_IDN[_below(rng, len(_IDN))]}{_below(rng, 1000)}", _IDN_TLDS[_below(rng, len(_IDN_TLDS))])
        return ".".join(labels), ".".join(_ace(label) for label in labels)
    clean = _host(rng)
    host = _mixed_case(rng, clean)
    return (host + "." if roll > 0.97 else host), clean


def _bad_host(rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            (f"bad host{_below(rng, 1000)}.com", "host-bad-character"),
            (f"___.{_host(rng)}", "host-bad-character"),
            (f"{_host(rng)}..", "host-empty-label"),
            ("-leading.example.com", "host-hyphen"),
            (f"exa mple{_below(rng, 1000)}.net", "host-bad-character"),
            ("no_tld", "host-single-label"),
        )
    )


def _url(rng: random.Random) -> tuple[str, str]:
    """``(as ThreatConnect holds it, canonical)``: only the host's case is dirt; no default port, path and query
    are already RFC 3986-clean and keep their case."""
    scheme = "https" if rng.random() < 0.6 else "http"
    clean = _host(rng)
    host = _mixed_case(rng, clean)
    port = f":{rng.choice((8080, 8443, 81))}" if rng.random() < 0.05 else ""
    path = _PATHS[_below(rng, len(_PATHS))]
    query = _QUERIES[_below(rng, len(_QUERIES))]
    return f"{scheme}://{host}{port}/{path}{query}", f"{scheme}://{clean}{port}/{path}{query}"


def _bad_url(rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            (f"www.{_host(rng)}/login.php", "url-no-scheme"),
            ("http:///path/only", "url-no-host"),
            (f"{_host(rng)}", "url-no-scheme"),
            ("http://", "url-no-host"),
            ("ht!tp://x y.com/", "url-whitespace"),
            (f"//{_host(rng)}/a", "url-no-scheme"),
        )
    )


def _email(rng: random.Random) -> tuple[str, str]:
    """``(as ThreatConnect holds it, canonical)``: the whole address lower-case (one sender, one indicator)."""
    user = f"{_USERS[_below(rng, len(_USERS))]}{_below(rng, 1000)}"
    clean = _host(rng)
    return f"{user}@{_mixed_case(rng, clean)}", f"{user.lower()}@{clean}"


def _bad_email(rng: random.Random) -> tuple[str, str]:
    return rng.choice(
        (
            (f"{_USERS[_below(rng, len(_USERS))]}.{_host(rng)}", "email-at-count"),
            (f"a@@{_host(rng)}", "email-at-count"),
            ("@example.com", "email-empty-local-part"),
            (f"user@{_below(rng, 1000)}", "email-bad-domain"),
            ("user name@example.com", "email-whitespace"),
        )
    )


def _hex(rng: random.Random, length: int) -> str:
    value = f"{rng.getrandbits(length * 4):0{length}x}"
    return value.upper() if rng.random() < 0.2 else value


def _hashes(rng: random.Random) -> dict[str, str]:
    roll = rng.random()
    if roll < 0.4:
        kinds = ("sha256",)
    elif roll < 0.6:
        kinds = ("md5",)
    elif roll < 0.7:
        kinds = ("sha1",)
    elif roll < 0.85:
        kinds = ("md5", "sha256")
    else:
        kinds = ("md5", "sha1", "sha256")
    return {kind: _hex(rng, {"md5": 32, "sha1": 40, "sha256": 64}[kind]) for kind in kinds}


def _bad_hashes(rng: random.Random) -> tuple[dict[str, str], str]:
    kind = rng.choice(("md5", "sha1", "sha256"))
    good = {"md5": 32, "sha1": 40, "sha256": 64}[kind]
    if rng.random() < 0.5:
        # never another hash's length: 29/31/33/37, 37/39/41/45, 61/63/65/69
        return {kind: _hex(rng, good + rng.choice((-3, -1, 1, 5)))}, "hash-length"
    return {kind: "zz" + _hex(rng, good - 2)}, "hash-not-hex"


_GOOD = {"Address": _address, "Host": _hostname, "URL": _url, "EmailAddress": _email}
_BAD = {"Address": _bad_address, "Host": _bad_host, "URL": _bad_url, "EmailAddress": _bad_email}
_VALUE_FIELD = {"Address": "ip", "Host": "hostName", "URL": "text", "EmailAddress": "address"}


def _variant(rng: random.Random, kind: str, record: dict[str, Any]) -> dict[str, str]:
    """A different spelling of an earlier record's value that canonicalises to the same thing."""
    if kind == "File":
        return {name: (value.upper() if value.islower() else value.lower()) for name, value in _file_values(record)}
    value = record[_VALUE_FIELD[kind]]
    if kind == "Host":
        # Only ASCII letters change case: "ß".upper() is "SS", another name, not another spelling of this one.
        upper = value.upper() if value.isascii() else "".join(c.upper() if c.isascii() else c for c in value)
        variant = upper + ("" if value.endswith(".") else ".")
    elif kind == "URL":
        scheme, _, rest = value.partition("://")
        host, slash, path = rest.partition("/")
        variant = f"{scheme.upper()}://{host.swapcase()}{slash}{path}"
    elif kind == "EmailAddress":
        user, _, domain = value.partition("@")
        variant = f"{user}@{domain.swapcase()}"
    elif ":" in value:  # IPv6: swap between zero-padded and compressed spellings
        address = ipaddress.IPv6Address(value)
        variant = address.exploded if value != address.exploded else address.compressed
        variant = variant.upper()
    else:  # IPv4: leading zeros would be invalid for strict parsers; use surrounding whitespace instead
        variant = f" {value} "
    return {_VALUE_FIELD[kind]: variant}


def _file_values(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, record[name]) for name in ("md5", "sha1", "sha256") if name in record]


def summary(record: dict[str, Any]) -> str:
    """ThreatConnect's summary of an internal record: the value, or a File's hashes joined by ``" : "``."""
    kind = record["type"]
    if kind == "File":
        return " : ".join(value for _, value in _file_values(record))
    return record[_VALUE_FIELD[kind]]


_HASH_NAMES = ("md5", "sha1", "sha256")
_VARIANT = {"Host": "domain", "URL": "url", "EmailAddress": "email"}


def generate(
    seed: int,
    count: int,
    owner: str = DEFAULT_OWNER,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    types: Sequence[str] = TYPES,
) -> list[dict[str, Any]]:
    """Make ``count`` internal indicator records, the same ones for the same arguments.

    Each record has ``id``, ``type``, ``owner``, the TC value field(s) (``ip``, ``hostName``, ``text``,
    ``address`` or ``md5``/``sha1``/``sha256``), ``summary``, ``dateAdded`` and ``lastModified`` (aware UTC
    datetimes, ``start <= lastModified < end`` at whole seconds), ``rating`` (0-5 or None), ``confidence``
    (0-100 or None), ``threatAssessScore``, ``active``, ``falsePositives``, ``tags``, ``securityLabels``
    (TLP names), ``description`` (or None), ``externalDateExpires`` (or None), and two ground-truth keys that
    the simulator ignores: ``_invalid`` (the value is deliberately malformed) and ``_duplicate_of`` (id of an
    earlier record whose value canonicalises to the same thing, or None). ``generate_dataset`` gives the same
    records with what each is meant to become.

    Args:
        seed: Seed of the private random generator.
        count: Number of records.
        owner: ThreatConnect owner name put on every record.
        start: Earliest lastModified (default 2024-01-01T00:00:00Z).
        end: lastModified upper bound, exclusive (default start + 30 days).
        types: Indicator types, used round-robin.

    Returns:
        The records, ids ascending.
    """
    return _generate(seed, count, owner, start, end, types, None)


def generate_dataset(
    seed: int,
    count: int,
    owner: str = DEFAULT_OWNER,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    types: Sequence[str] = TYPES,
) -> Dataset:
    """``generate``'s records (the same ones for the same arguments) and, for each, the ``Intent`` it was made
    with: its canonical value(s) and kind, and whether it is meant to be loaded, not live (inactive or a false
    positive, with which) or rejected (with a ``REASON_CLASSES`` key), and which earlier record it respells.

    Records of one (type, canonical value) fold into the newest (the pipeline's dedupe); an intent describes its
    own record only.
    """
    intents: dict[int, Intent] = {}
    return Dataset(_generate(seed, count, owner, start, end, types, intents), intents)


def _generate(
    seed: int,
    count: int,
    owner: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    types: Sequence[str],
    intents: dict[int, Intent] | None,
) -> list[dict[str, Any]]:
    start = start or dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    end = end or start + dt.timedelta(days=30)
    if end <= start:
        raise ValueError("end must be after start")
    rng = random.Random(seed)
    span = max(1, int((end - start).total_seconds()))
    start_epoch = int(start.timestamp())
    utc = dt.UTC
    from_ts = dt.datetime.fromtimestamp
    random_ = rng.random
    base_id = 1_000_000 + int(random_() * 1_000_000)
    by_type: dict[str, list[dict[str, Any]]] = {kind: [] for kind in types}
    records: list[dict[str, Any]] = []
    canonical: dict[int, tuple[Observable, ...]] = {}  # id -> observables of every valid record (with intents)
    n_types, n_tags, n_desc = len(types), len(_TAGS), len(_DESCRIPTIONS)
    # A million small dicts and lists trip the cyclic GC hundreds of times for nothing: none of them cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(count):
            kind = types[index % n_types]
            roll = random_()
            duplicate_of = None
            previous = by_type[kind]
            reason: str | None = None
            observables: tuple[Observable, ...] = ()
            if roll < INVALID_RATE:
                if kind == "File":
                    values, reason = _bad_hashes(rng)
                else:
                    bad, reason = _BAD[kind](rng)
                    values = {_VALUE_FIELD[kind]: bad}
            elif roll < INVALID_RATE + DUPLICATE_RATE and previous:
                original = previous[int(random_() * len(previous))]
                values = _variant(rng, kind, original)
                duplicate_of = original["id"]
                if intents is not None:
                    observables = canonical[duplicate_of]
            elif kind == "File":
                values = _hashes(rng)
                if intents is not None:
                    observables = tuple(Observable(values[h].lower(), h) for h in _HASH_NAMES if h in values)
            else:
                raw, clean = _GOOD[kind](rng)
                values = {_VALUE_FIELD[kind]: raw}
                if intents is not None:
                    variant = _VARIANT.get(kind) or ("ipv6" if ":" in clean else "ipv4")
                    observables = (Observable(clean, variant),)
            modified = start_epoch + int(random_() * span)
            added = modified - int(random_() * 7_776_000) if random_() < 0.7 else modified  # up to 90 days
            label_roll = random_()
            tag_count = int(random_() * 3.4)
            tags = (
                []
                if tag_count == 0
                else [_TAGS[int(random_() * n_tags)]]
                if tag_count == 1
                else sorted({_TAGS[int(random_() * n_tags)] for _ in range(tag_count)})
            )
            rating = random_()
            confidence = random_()
            if kind == "File":
                text = " : ".join(values[name] for name in ("md5", "sha1", "sha256") if name in values)
            else:
                text = values[_VALUE_FIELD[kind]]
            record: dict[str, Any] = {
                "id": base_id + index,
                "type": kind,
                "owner": owner,
                "summary": text,
                "dateAdded": from_ts(added, utc),
                "lastModified": from_ts(modified, utc),
                "rating": None if rating < 0.1 else float(int((rating - 0.1) * 6.666)),
                "confidence": None if confidence < 0.1 else int((confidence - 0.1) * 112.2),
                "threatAssessScore": int(random_() * 1001),
                "active": random_() >= INACTIVE_RATE,
                "falsePositives": 1 + int(random_() * 5) if random_() < FALSE_POSITIVE_RATE else 0,
                "tags": tags,
                "securityLabels": [] if label_roll < 0.25 else [TLP_LABELS[int((label_roll - 0.25) * 8)]],
                "description": _DESCRIPTIONS[int(random_() * n_desc)] if random_() < 0.3 else None,
                "externalDateExpires": (
                    from_ts(modified + 86400 * (1 + int(random_() * 365)), utc) if random_() < 0.2 else None
                ),
                "_invalid": roll < INVALID_RATE,
                "_duplicate_of": duplicate_of,
            }
            record.update(values)
            records.append(record)
            if roll >= INVALID_RATE:
                previous.append(record)
            if intents is not None:
                if reason is not None:
                    outcome = REJECTED
                elif not record["active"]:
                    outcome, reason = NOT_LIVE, "inactive"
                elif record["falsePositives"]:
                    outcome, reason = NOT_LIVE, "false positive"
                else:
                    outcome = LOADED
                if observables:
                    canonical[record["id"]] = observables
                intents[record["id"]] = Intent(
                    record["id"], kind, record["lastModified"], outcome, observables, reason, duplicate_of
                )
    finally:
        if gc_was_enabled:
            gc.enable()
    return records

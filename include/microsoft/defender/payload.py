"""Normalized row -> Defender for Endpoint indicator: the field mapping, value rules and the external-id tag.

Everything here is pure (no clock, no network), so the mapping is tested alone against the published contract
(``import-ti-indicators.md``, ``ti-indicator.md``; reference notes ``microsoft_api.md`` §8).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from include.pipeline import times
from include.pipeline.errors import NotSupported
from include.pipeline.mappings import DEFENDER_INDICATOR_TYPES, MappingError, mapping_for, variant_of

INDICATOR_TYPES = DEFENDER_INDICATOR_TYPES  # the registry validates the mapping files against the same list
ACTIONS = ("Alert", "Warn", "Block", "Audit", "BlockAndRemediate", "AlertAndBlock", "Allowed")
SEVERITIES = ("Informational", "Low", "Medium", "High")
FILE_TYPES = frozenset({"FileSha1", "FileMd5", "FileSha256", "CertificateThumbprint"})
APPLICATION = "ThreatConnect"
# The docs give no length for title or description (UNCONFIRMED). 100 is the strictest plausible limit (Graph's
# description rule, also applied by OpenCTI's Defender connector), so we stay within it; the simulator enforces it.
MAX_TITLE = 100
MAX_DESCRIPTION = 100
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427)
#: payload keys, in the order the contract lists them (fetch shapes what Defender holds to these keys)
PAYLOAD_FIELDS = (
    "indicatorValue",
    "indicatorType",
    "action",
    "title",
    "description",
    "expirationTime",
    "severity",
    "recommendedActions",
    "generateAlert",
    "rbacGroupNames",
    "application",
    "educateUrl",
)
# Internal ranges Defender refuses ("indicators can't be created for internal IPs"); our own list, from the IANA
# special-purpose registries: private, shared (CGNAT), loopback, link-local, multicast, reserved, unspecified,
# IPv4-mapped and unique-local IPv6.
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    )
)
_TAG = re.compile(r"\[tc:([^\]\s]+)\]\s*$")


def severity_name(value: Any) -> str | None:
    """Defender's severity for ThreatConnect's 0-5 rating scale (the normalized ``severity`` column).

    0-1 ``Informational`` (unrated or suspicious), 2 ``Low``, 3 ``Medium``, 4-5 ``High``: a 4 ("Dangerous") or
    5 ("Critical") rating is what an analyst acts on at once. None when the row has no severity.
    """
    if _missing(value):
        return None
    number = max(0, min(5, int(value)))
    return ("Informational", "Informational", "Low", "Medium", "High", "High")[number]


def expand_ipv6(address: ipaddress.IPv6Address) -> str:
    """All 8 segments, each without leading zeros (``2a02:c7f::1`` -> ``2a02:c7f:0:0:0:0:0:1``), as Defender wants."""
    return ":".join(f"{int(segment, 16):x}" for segment in address.exploded.split(":"))


def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for an address Defender will not take an indicator for."""
    return any(address in network for network in _INTERNAL if network.version == address.version)


def indicator_key(row: Mapping[str, Any]) -> tuple[str, str]:
    """``(indicatorType, indicatorValue)`` for one normalized row: the key Defender upserts on.

    Raises:
        ValueError: ``not supported by defender: ...`` for a kind or value Defender has no indicator for (email,
            internal or CIDR addresses, an unknown hash type), or a row without a value.
    """
    kind = str(_field(row, "kind") or "").lower()
    value = _field(row, "value")
    if _missing(value) or not str(value).strip():
        raise ValueError("the row has no value")
    value = str(value).strip()
    try:
        mapping = mapping_for(_field(row, "indicator_type"), kind)
        indicator_type = mapping.defender_type(variant_of(kind, value, _field(row, "hash_type")))
    except (MappingError, ValueError) as exc:
        raise NotSupported(f"not supported by defender: {exc}") from None
    if indicator_type is None:
        raise NotSupported(f"not supported by defender: {mapping.indicator_type}")
    if kind == "hash":
        return indicator_type, value.lower()
    if kind == "ip":
        if "/" in value:
            raise NotSupported("not supported by defender: CIDR")
        address = ipaddress.ip_address(value)  # ValueError for anything else
        if is_internal(address):
            raise NotSupported("not supported by defender: internal address")
        return indicator_type, expand_ipv6(address) if address.version == 6 else str(address)
    if kind == "url" and len(value) > MAX_URL:
        raise NotSupported(f"not supported by defender: URL longer than {MAX_URL} characters")
    return indicator_type, value


def tag(external_id: str) -> str:
    """The marker that carries the external id in ``description`` (Defender has no field of ours to keep it)."""
    return f"[tc:{external_id}]"


def tagged_id(description: Any) -> str | None:
    """The external id a description's trailing ``[tc:<id>]`` names, or None."""
    if not isinstance(description, str):
        return None
    match = _TAG.search(description)
    return match.group(1) if match else None


def build_payload(
    row: Mapping[str, Any],
    action: str = "Alert",
    generate_alert: bool | None = None,
    rbac_group_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The indicator sent to ``/api/indicators/import`` for one normalized row (deterministic: no clock reads).

    The external id rides at the end of ``description`` as ``[tc:<external_id>]``: the title is the alert title
    analysts read, the description is free text nobody keys on, and the tag is appended after the text is cut to the
    limit, so it always survives. ``fetch`` finds our indicators again by that tag when it has no rows.

    Raises:
        ValueError: the row cannot be a Defender indicator (see :func:`indicator_key`), or ``action`` does not suit
            its type.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown Defender action {action!r}; one of {', '.join(ACTIONS)}")
    indicator_type, value = indicator_key(row)
    if action == "BlockAndRemediate" and indicator_type not in FILE_TYPES:
        raise NotSupported(f"not supported by defender: action BlockAndRemediate for {indicator_type}")
    external_id = str(row["external_id"])
    label = str(_field(row, "indicator_type") or indicator_type)
    suffix = " " + tag(external_id)
    text = _field(row, "description")
    text = str(text).strip() if not _missing(text) and str(text).strip() else f"{label} from ThreatConnect"
    payload: dict[str, Any] = {
        "indicatorValue": value,
        "indicatorType": indicator_type,
        "action": action,
        "title": f"ThreatConnect {label}: {value}"[:MAX_TITLE],
        "description": text[: max(0, MAX_DESCRIPTION - len(suffix))].rstrip() + suffix,
        "application": APPLICATION,
    }
    expiration = iso_utc(_field(row, "expiration"))
    if expiration is not None:
        payload["expirationTime"] = expiration
    severity = severity_name(_field(row, "severity"))
    if severity is not None:
        payload["severity"] = severity
    if generate_alert is not None or action == "Audit":
        payload["generateAlert"] = True if generate_alert is None else bool(generate_alert)
    if rbac_group_names:
        payload["rbacGroupNames"] = [str(name) for name in rbac_group_names]
    return payload


def iso_utc(value: Any) -> str | None:
    """ISO 8601 in UTC with ``Z`` and whole seconds, or None for a missing timestamp."""
    return None if _missing(value) else times.iso(times.parse(value), "seconds")


def parse_time(value: Any) -> dt.datetime | None:
    """An aware UTC datetime from Defender's date-times (``Z``, offsets, 7 fractional digits), None if unreadable."""
    return times.parse_or_none(value) if isinstance(value, str) else None


def same_value(field: str, sent: Any, stored: Any) -> bool:
    """Whether Defender holds what was sent for ``field``, allowing its formats (fractions, offsets, value case)."""
    if sent in (None, "", []) and stored in (None, "", []):
        return True
    if field == "expirationTime":
        return parse_time(sent) is not None and parse_time(sent) == parse_time(stored)
    if field in ("indicatorValue", "indicatorType") and isinstance(sent, str) and isinstance(stored, str):
        # Whether Defender keeps the value's case is UNCONFIRMED; the upsert key ignores it either way.
        return sent.lower() == stored.lower()
    return bool(sent == stored)


def _field(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row[key]
    except KeyError:
        return None


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are values, not missing
        return False

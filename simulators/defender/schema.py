"""Defender's indicator contract: the import schema, the limits and the checks of indicator values."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from simulators import mslogin

PREFIX = "/api/indicators"
CONTEXT = "https://api.security.microsoft.com/api/$metadata#Indicators"
DEFENDER_AUDIENCE = "https://api.securitycenter.microsoft.com"
#: Scopes an app may ask the identity platform for (the API's app id URI "WindowsDefenderATP" has both names).
DEFENDER_SCOPES = (
    "https://api.securitycenter.microsoft.com/.default",
    "https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
)
MAX_IMPORT = 500
MAX_BATCH_DELETE = 500
MAX_TOP = 10_000
CAPACITY = 15_000  # "15,000 indicators per tenant. Increases to this limit are not supported."
MAX_TITLE = 100  # UNCONFIRMED (see the package docstring, simulators/defender/__init__.py)
MAX_DESCRIPTION = 100  # UNCONFIRMED
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427)
READ_WRITE, READ_WRITE_ALL = "Ti.ReadWrite", "Ti.ReadWrite.All"
#: Documented rate limits as (calls, per window in "minutes"): import and BatchDelete 30/min, the rest 100/min
#: and 1,500/h. Each API page states its own limit, so each API gets its own window per app.
DOCUMENTED_LIMITS: dict[str, tuple[tuple[int, float], ...]] = {
    "import": ((30, 1),),
    "batchdelete": ((30, 1), (1500, 60)),
    "list": ((100, 1), (1500, 60)),
    "delete": ((100, 1), (1500, 60)),
    "submit": ((100, 1), (1500, 60)),
}

INDICATOR_TYPES = ("FileSha1", "FileMd5", "CertificateThumbprint", "FileSha256", "IpAddress", "DomainName", "Url")
ACTIONS = ("Alert", "Warn", "Block", "Audit", "BlockAndRemediate", "AlertAndBlock", "Allowed")
SEVERITIES = ("Informational", "Low", "Medium", "High")
REQUIRED = ("indicatorValue", "indicatorType", "action", "title", "description")
STRINGS = ("indicatorValue", "title", "description", "recommendedActions", "application", "educateUrl")
WRITABLE = (
    *REQUIRED,
    "expirationTime",
    "severity",
    "recommendedActions",
    "rbacGroupNames",
    "application",
    "educateUrl",
    "generateAlert",
)
FILE_TYPES = ("FileSha1", "FileMd5", "FileSha256", "CertificateThumbprint")
_HASH_LENGTHS = {"FileMd5": 32, "FileSha1": 40, "FileSha256": 64, "CertificateThumbprint": 40}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_\-\u00a1-\uffff]{1,63}(?<!-)$")
#: "Indicators can't be created for internal IPs": private, shared, loopback, link-local, multicast, reserved and
#: unspecified ranges. Documentation ranges (TEST-NET, 2001:db8::/32) are not internal: Defender cannot know them.
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
FILTER_FIELDS = (
    "application",
    "createdByDisplayName",
    "expirationTime",
    "generateAlert",
    "title",
    "rbacGroupNames",
    "rbacGroupIds",
    "indicatorValue",
    "indicatorType",
    "creationTimeDateTimeUtc",
    "createdBy",
    "action",
    "severity",
)


def register_audience() -> None:
    """Teach the login simulator that the Defender scopes mint tokens for the Defender API audience."""
    for scope in DEFENDER_SCOPES:
        mslogin._AUDIENCES.setdefault(scope, DEFENDER_AUDIENCE)


register_audience()


class DefenderRequestError(ValueError):
    """The whole request is refused (400 unless ``status`` says otherwise)."""

    def __init__(self, message: str, code: str = "InvalidInput", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ItemError(ValueError):
    """One imported indicator is refused: ``isFailed`` with this ``failureReason``."""


def validate_schema(item: Any) -> dict[str, Any]:
    """The writable fields of one indicator, type-checked; unknown properties are dropped.

    Raises:
        DefenderRequestError: a required field is missing, a documented name or an enum value has the wrong case,
            or a value has the wrong JSON type.
    """
    if not isinstance(item, dict):
        raise DefenderRequestError("Each indicator must be a JSON object.", "InvalidRequestBody")
    by_lower = {name.lower(): name for name in WRITABLE}
    for key in item:
        if key not in WRITABLE and key.lower() in by_lower:
            raise DefenderRequestError(f"Unknown property '{key}'; did you mean '{by_lower[key.lower()]}'?")
    for name in REQUIRED:
        if item.get(name) in (None, ""):
            raise DefenderRequestError(f"The {name} field is required.", "MissingRequiredParameter")
    indicator: dict[str, Any] = {}
    for name in WRITABLE:
        if name not in item or item[name] is None:
            continue
        value = item[name]
        if name in STRINGS and not isinstance(value, str):
            raise DefenderRequestError(f"{name} must be a string.")
        indicator[name] = value
    for name, choices in (("indicatorType", INDICATOR_TYPES), ("action", ACTIONS), ("severity", SEVERITIES)):
        if name in indicator and indicator[name] not in choices:  # case-sensitive: "alert" is a 400 (OpenCTI #4075)
            raise DefenderRequestError(f"Requested value '{indicator[name]}' is not valid for {name}.")
    if "generateAlert" in indicator and not isinstance(indicator["generateAlert"], bool):
        raise DefenderRequestError("generateAlert must be a boolean.")
    names = indicator.get("rbacGroupNames")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DefenderRequestError("rbacGroupNames must be a list of strings.")
    if "expirationTime" in indicator:
        indicator["expirationTime"] = _normalize_time(indicator["expirationTime"])
    return indicator


def check_value(indicator_type: str, value: str) -> None:
    """Refuse an indicator value Defender cannot hold for its type.

    Raises:
        ItemError: with the reason, e.g. an internal IP, CIDR, compressed IPv6 or a malformed hash.
    """
    if indicator_type == "IpAddress":
        if "/" in value:
            raise ItemError("InvalidIpAddress: CIDR notation is not supported.")
        if "::" in value:
            raise ItemError("InvalidIpAddress: IPv6 addresses must be written with all 8 segments.")
        try:
            address = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ItemError(f"InvalidIpAddress: '{value}' is not an IP address.") from exc
        if any(address in network for network in _INTERNAL if network.version == address.version):
            raise ItemError("InvalidIpAddress: indicators can't be created for internal IPs.")
    elif indicator_type in _HASH_LENGTHS:
        if len(value) != _HASH_LENGTHS[indicator_type] or not _HEX.match(value):
            raise ItemError(f"InvalidHashValue: '{value}' is not a valid {indicator_type} value.")
    elif indicator_type == "DomainName":
        labels = value.rstrip(".").split(".")
        if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
            raise ItemError(f"InvalidDomainName: '{value}' is not a valid domain name.")
    elif indicator_type == "Url":
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if len(value) > MAX_URL or any(c.isspace() for c in value) or not parts.hostname:
            raise ItemError("InvalidUrl: the URL is malformed or longer than 2083 characters.")


def _normalize_time(value: Any) -> str:
    if not isinstance(value, str):
        raise DefenderRequestError("expirationTime must be a date-time string.")
    text = value.strip()
    text = text[:-1] + "+00:00" if text.endswith("Z") else text
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DefenderRequestError(f"'{value}' is not a valid expirationTime.") from exc
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(value: str | None) -> float | None:
    if value is None:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

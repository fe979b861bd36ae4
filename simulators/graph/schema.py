"""Graph's tiIndicator contract: the entity's properties and limits, and the validation of creates and updates."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

PREFIX = "/beta/security/tiIndicators"
CONTEXT = "https://graph.microsoft.com/beta/$metadata#Security/tiIndicators"
RESULT_INFO_CONTEXT = "https://graph.microsoft.com/beta/$metadata#Collection(microsoft.graph.resultInfo)"
MAX_BATCH = 100
DEFAULT_PAGE_SIZE = 100
MAX_TOP = 1000
MAX_SKIP = 500
MAX_DESCRIPTION = 100
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427); Graph's url "must comply with RFC 1738"
FAILED_CREATE_ID = "Failed to create, check Error element for reason"
FAILED_UPDATE_ID = "Failed to update, check Error element for reason"

ACTIONS = ("unknown", "allow", "block", "alert", "unknownFutureValue")
TLP_LEVELS = ("unknown", "white", "green", "amber", "red", "unknownFutureValue")
FILE_HASH_TYPES = ("unknown", "sha1", "sha256", "md5", "authenticodeHash256", "lsHash", "ctph", "unknownFutureValue")
DIAMOND_MODELS = ("unknown", "adversary", "capability", "infrastructure", "victim", "unknownFutureValue")
THREAT_TYPES = (
    "Botnet",
    "C2",
    "CryptoMining",
    "Darknet",
    "DDoS",
    "MaliciousUrl",
    "Malware",
    "Phishing",
    "Proxy",
    "PUA",
    "WatchList",
)
TARGET_PRODUCTS = ("Azure Sentinel", "Microsoft Defender ATP")

ENUMS: dict[str, tuple[str, ...]] = {
    "action": ACTIONS,
    "tlpLevel": TLP_LEVELS,
    "fileHashType": FILE_HASH_TYPES,
    "diamondModel": DIAMOND_MODELS,
}
EMAIL_OBSERVABLES = (
    "emailEncoding",
    "emailLanguage",
    "emailRecipient",
    "emailSenderAddress",
    "emailSenderName",
    "emailSourceDomain",
    "emailSourceIpAddress",
    "emailSubject",
    "emailXMailer",
)
FILE_OBSERVABLES = (
    "fileCompileDateTime",
    "fileCreatedDateTime",
    "fileHashType",
    "fileHashValue",
    "fileMutexName",
    "fileName",
    "filePacker",
    "filePath",
    "fileSize",
    "fileType",
)
NETWORK_OBSERVABLES = (
    "domainName",
    "url",
    "userAgent",
    "networkCidrBlock",
    "networkDestinationCidrBlock",
    "networkSourceCidrBlock",
    "networkIPv4",
    "networkIPv6",
    "networkDestinationIPv4",
    "networkDestinationIPv6",
    "networkSourceIPv4",
    "networkSourceIPv6",
    "networkPort",
    "networkDestinationPort",
    "networkSourcePort",
    "networkProtocol",
    "networkDestinationAsn",
    "networkSourceAsn",
)
OBSERVABLES = EMAIL_OBSERVABLES + FILE_OBSERVABLES + NETWORK_OBSERVABLES
# fileHashType qualifies a hash; on its own it observes nothing.
_QUALIFIERS = {"fileHashType"}
STRING_LISTS = ("activityGroupNames", "killChain", "malwareFamilyNames", "tags")
INTS = {
    "confidence": (0, 100),
    "severity": (0, 5),
    "fileSize": (0, 2**63 - 1),
    "networkPort": (0, 65535),
    "networkDestinationPort": (0, 65535),
    "networkSourcePort": (0, 65535),
    "networkProtocol": (0, 255),
    "networkDestinationAsn": (0, 2**32 - 1),
    "networkSourceAsn": (0, 2**32 - 1),
}
BOOLS = ("isActive", "passiveOnly")
DATETIMES = (
    "expirationDateTime",
    "lastReportedDateTime",
    "fileCompileDateTime",
    "fileCreatedDateTime",
    "ingestedDateTime",
)
CORE = (
    "id",
    "action",
    "activityGroupNames",
    "additionalInformation",
    "azureTenantId",
    "confidence",
    "description",
    "diamondModel",
    "expirationDateTime",
    "externalId",
    "ingestedDateTime",
    "isActive",
    "killChain",
    "knownFalsePositives",
    "lastReportedDateTime",
    "malwareFamilyNames",
    "passiveOnly",
    "severity",
    "tags",
    "targetProduct",
    "threatType",
    "tlpLevel",
)
PROPERTIES = CORE + OBSERVABLES
REQUIRED = ("action", "description", "expirationDateTime", "targetProduct", "threatType", "tlpLevel")
EDITABLE = (
    "action",
    "activityGroupNames",
    "additionalInformation",
    "confidence",
    "description",
    "diamondModel",
    "expirationDateTime",
    "externalId",
    "isActive",
    "killChain",
    "knownFalsePositives",
    "lastReportedDateTime",
    "malwareFamilyNames",
    "passiveOnly",
    "severity",
    "tags",
    "tlpLevel",
)
_STAMPED = ("id", "azureTenantId", "ingestedDateTime")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})$")


class GraphValidationError(ValueError):
    """An indicator the service refuses, with the Graph error code it answers."""

    def __init__(self, message: str, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.code = code


def validate_new(body: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce a tiIndicator for create/submit; returns the properties to store.

    Raises:
        GraphValidationError: a required field is missing or a value is out of its domain.
    """
    unknown = [k for k in body if k not in PROPERTIES and not k.startswith("@odata.")]
    if unknown:
        # tiIndicator is a closed OData type: unknown properties fail deserialisation on Graph.
        raise GraphValidationError(f"The property '{unknown[0]}' does not exist on type 'microsoft.graph.tiIndicator'.")
    indicator = {k: _coerce(k, v) for k, v in body.items() if k in PROPERTIES and k not in _STAMPED}
    for name in REQUIRED:
        if indicator.get(name) in (None, ""):
            raise GraphValidationError(f"Required property '{name}' is missing.")
    observed = [k for k in OBSERVABLES if k not in _QUALIFIERS and indicator.get(k) not in (None, "")]
    if not observed:
        raise GraphValidationError("At least one email, file or network observable is required.")
    if indicator.get("fileHashValue") not in (None, "") and indicator.get("fileHashType") in (None, ""):
        raise GraphValidationError("fileHashType is required with fileHashValue.")
    return indicator


def validate_update(body: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce an update against the stored indicator; returns the changes to apply.

    Raises:
        GraphValidationError: an unknown or non-editable property would change, or a value is invalid.
    """
    changes: dict[str, Any] = {}
    for name, raw in body.items():
        if name == "id" or name.startswith("@odata."):
            continue
        if name not in PROPERTIES:
            raise GraphValidationError(f"The property '{name}' does not exist on type 'microsoft.graph.tiIndicator'.")
        value = _coerce(name, raw)
        if name in EDITABLE:
            changes[name] = value
        elif value != stored.get(name):
            # threatType, targetProduct and the observables are fixed once created (the docs' editable list).
            raise GraphValidationError(f"The property '{name}' cannot be updated.")
    return changes


def _coerce(name: str, value: Any) -> Any:
    """Lenient scalar coercion as observed on Graph (security-api-solutions#113: "75", "true", +0000 dates)."""
    if value is None:
        return None
    if name in ENUMS:
        choices = {c.lower(): c for c in ENUMS[name]}
        if not isinstance(value, str) or value.lower() not in choices:
            raise GraphValidationError(f"Requested value '{value}' was not found for property '{name}'.")
        return choices[value.lower()]
    if name == "threatType":
        choices = {c.lower(): c for c in THREAT_TYPES}
        if not isinstance(value, str) or value.lower() not in choices:
            raise GraphValidationError(f"Invalid threatType '{value}'; expected one of {', '.join(THREAT_TYPES)}.")
        return choices[value.lower()]
    if name == "targetProduct":
        if value == "Microsoft Sentinel":
            raise GraphValidationError("Invalid targetProduct 'Microsoft Sentinel'; specify 'Azure Sentinel'.")
        if value not in TARGET_PRODUCTS:
            raise GraphValidationError(f"Invalid targetProduct '{value}'.")
        return value
    if name == "url" and isinstance(value, str) and len(value) > MAX_URL:
        raise GraphValidationError("'url' must comply with RFC 1738")
    if name == "description":
        if not isinstance(value, str):
            raise GraphValidationError("description must be a string.")
        if len(value) > MAX_DESCRIPTION:
            raise GraphValidationError(f"description must be {MAX_DESCRIPTION} characters or less.")
        return value
    if name in INTS:
        low, high = INTS[name]
        number = _to_int(name, value)
        if not low <= number <= high:
            raise GraphValidationError(f"{name} must be between {low} and {high}.")
        return number
    if name in BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.Boolean for property '{name}'.")
    if name in DATETIMES:
        return normalize_datetime(name, value)
    if name in STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GraphValidationError(f"{name} must be a collection of strings.")
        return list(value)
    if isinstance(value, bool | int | float):
        return str(value)
    if not isinstance(value, str):
        raise GraphValidationError(f"Cannot convert the value of property '{name}' to Edm.String.")
    return value


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.Int32 for property '{name}'.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise GraphValidationError(f"Cannot convert '{value}' to Edm.Int32 for property '{name}'.")


def normalize_datetime(name: str, value: Any) -> str:
    """Parse an ISO 8601 date-time (``Z``, ``+00:00`` or ``+0000``) and render it as Graph does (UTC, ``Z``)."""
    if not isinstance(value, str):
        raise GraphValidationError(f"Cannot convert the value of '{name}' to Edm.DateTimeOffset.")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    else:
        text = _OFFSET_RE.sub(lambda m: f"{m[1]}{m[2]}:{m[3]}", text)
    # Python's parser stops at 6 fractional digits; Graph writes 7 (ticks).
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.DateTimeOffset for property '{name}'.") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    parsed = parsed.astimezone(dt.UTC)
    if parsed.microsecond:
        return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond:06d}0Z"
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")

"""The tiIndicator body Graph is sent for one normalized row, and how to compare it with what Graph holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pandas as pd

from include.pipeline import times
from include.pipeline.mappings import DESCRIPTION_MAX, GRAPH_OBSERVABLES

TARGET_PRODUCT = "Azure Sentinel"  # "Microsoft Sentinel" is rejected by Graph (connect-threat-intelligence-tip.md)
# The registry validates the mapping files against Graph's vocabulary; the payload uses the same facts.
MAX_DESCRIPTION = DESCRIPTION_MAX
OBSERVABLE_FIELDS = GRAPH_OBSERVABLES
#: Graph's fileHashType names for the registry's hash kinds (the mapping files list the kinds).
HASH_TYPES = {"md5": "md5", "sha1": "sha1", "sha256": "sha256"}
# updateTiIndicators may change only these (tiindicator-updatetiindicators.md); threatType and observables are fixed.
# targetProduct is not editable but the update doc lists it as required, and the MS quickstart echoes it unchanged.
UPDATE_FIELDS = (
    "externalId",
    "action",
    "targetProduct",
    "tlpLevel",
    "confidence",
    "severity",
    "description",
    "expirationDateTime",
    "tags",
    "isActive",
    "additionalInformation",
    "lastReportedDateTime",
)
DATETIME_FIELDS = frozenset({"expirationDateTime", "lastReportedDateTime"})
_NEVER_MISSING = frozenset({str, int, bool})  # scalar types that cannot hold a missing marker (NaN, NaT, NA)


def iso_utc(value: Any) -> str | None:
    """ISO 8601 in UTC with ``Z`` (a fraction only when present, without trailing zeros), or None when missing."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, dt.datetime):
        text = times.iso(value)  # a row's Timestamp: no need to parse it first
    elif not isinstance(value, str) and pd.isna(value):
        return None
    else:
        text = times.iso(times.parse(value))
    head, dot, fraction = text[:-1].partition(".")
    return f"{head}.{fraction.rstrip('0')}Z" if dot else text


def parse_datetime(value: Any) -> dt.datetime | None:
    """Graph's date-times (``Z``, ``+00:00``, ``+0000``, 7 fractional digits) as aware UTC; None if unreadable."""
    return times.parse_or_none(value) if isinstance(value, str) else None


def build_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The tiIndicator sent for one normalized row (deterministic: no clock reads).

    Raises:
        ValueError: the row lacks what Graph requires (observable, value, expiration) or names an unknown
            observable property.
    """
    observable = _scalar(row.get("observable"))
    value = _scalar(row.get("value"))
    if observable not in OBSERVABLE_FIELDS:
        raise ValueError(f"unsupported Graph observable property {observable!r}")
    if not value:
        raise ValueError("the row has no value")
    expiration = iso_utc(_scalar(row.get("expiration")))
    if expiration is None:
        raise ValueError("expirationDateTime is required by Graph and the row has no expiration")
    threat_type = _scalar(row.get("threat_type"))
    if not threat_type:
        # No silent WatchList default: the docs tell partners not to use it, and a missing type is a mapping bug.
        raise ValueError("the row has no threat_type")
    description = _scalar(row.get("description")) or f"{row.get('indicator_type')} {value}"
    # Graph wants tlpLevel; the docs call amber the default.
    tlp = str(_scalar(row.get("tlp")) or "amber").lower()
    body: dict[str, Any] = {
        "externalId": str(row["external_id"]),
        "action": "alert",
        "targetProduct": TARGET_PRODUCT,
        "threatType": threat_type,
        "tlpLevel": tlp,
        "description": str(description)[:MAX_DESCRIPTION],
        "expirationDateTime": expiration,
        "tags": _string_list(_scalar(row.get("tags"))),
        "isActive": bool(_scalar(row.get("active"))) and not bool(_scalar(row.get("false_positive"))),
        observable: str(value),
    }
    for field_name, column, high in (("confidence", "confidence", 100), ("severity", "severity", 5)):
        number = _scalar(row.get(column))
        if number is not None:
            body[field_name] = max(0, min(high, int(number)))
    if observable == "fileHashValue":
        hash_type = HASH_TYPES.get(str(_scalar(row.get("hash_type")) or "").lower())
        if hash_type is None:
            raise ValueError(f"unsupported hash type {row.get('hash_type')!r}")
        body["fileHashType"] = hash_type
    web_link = _scalar(row.get("web_link"))
    if web_link:
        body["additionalInformation"] = str(web_link)
    last_reported = iso_utc(_scalar(row.get("last_modified")))
    if last_reported:
        body["lastReportedDateTime"] = last_reported
    return body


def same_value(field: str, sent: Any, stored: Any) -> bool:
    """Whether Graph holds what was sent for ``field``, allowing its formats (7-digit ticks, ``+00:00``, ...)."""
    if sent in (None, "", []) and stored in (None, "", []):
        return True
    if field in DATETIME_FIELDS:
        return parse_datetime(sent) is not None and parse_datetime(sent) == parse_datetime(stored)
    if field in ("confidence", "severity"):
        try:
            return int(sent) == int(stored)
        except (TypeError, ValueError):
            return False
    if field in ("fileHashValue", "fileHashType", "tlpLevel", "threatType"):
        return isinstance(sent, str) and isinstance(stored, str) and sent.lower() == stored.lower()
    if field == "isActive" and isinstance(stored, str):
        return str(sent).lower() == stored.lower()
    return sent == stored


def _scalar(value: Any) -> Any:
    if value is None:
        return None
    if type(value) in _NEVER_MISSING:
        return value
    if not isinstance(value, str | list | tuple) and not hasattr(value, "__len__") and pd.isna(value):
        return None
    return value


def _string_list(value: Any) -> list[str]:
    if value is None or (not hasattr(value, "__len__") and pd.isna(value)):
        return []
    return [str(v) for v in value]


def update_body(graph_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An ``updateTiIndicators`` item: the Graph id and the editable fields (threatType and observables are not)."""
    return {"id": graph_id, **{k: payload[k] for k in UPDATE_FIELDS if k in payload}}

"""Build STIX 2.1 ``indicator`` objects (plain JSON-ready dicts) from normalized rows for Sentinel's upload API."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from include.pipeline import times
from include.pipeline.mappings import MappingError, load_mapping, mapping_for, variant_of

STIX_ID_PREFIX = "indicator--"
SOURCE_SYSTEM_PREFIX = "ThreatConnect-"
EXTERNAL_SOURCE_NAME = "ThreatConnect"

#: STIX 2.1 TLP 1.0 marking definitions (spec section 7.2.1.4). Microsoft's doc prose calls another id "green";
#: the spec and every peer use these.
TLP_MARKINGS: dict[str, str] = {
    "white": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}
# TLP 2.0 renamed WHITE to CLEAR; STIX 2.1 has no CLEAR marking, WHITE is the same meaning.
_TLP_ALIASES = {"clear": "white"}

# Sentinel gives an indicator a new IndicatorId when its ``indicator_types`` change (Azure-Sentinel#12538), so
# they come from the type's mapping and never from the row; this is only for a type without a mapping.
FALLBACK_INDICATOR_TYPES = ("malicious-activity",)


#: When ThreatConnect's expiry is not after ``valid_from`` (STIX and Sentinel both require ``valid_until >
#: valid_from``), the indicator is already expired: we keep that meaning with the smallest step that still
#: validates, rather than inventing a day of life or dropping ``valid_until`` (which would never expire it).
#: One second, not one millisecond, so a consumer that truncates to seconds still sees a valid order.
EXPIRED_AT_BIRTH_STEP = dt.timedelta(seconds=1)


def source_system(owner: str) -> str:
    """The ``sourcesystem`` to upload an owner's indicators with.

    ThreatConnect's own Sentinel workbook and analytics rules match ``SourceSystem startswith "ThreatConnect-"``,
    so following that convention lights them up without changes.

    Args:
        owner: the ThreatConnect owner name.

    Returns:
        ``"ThreatConnect-<owner>"``.
    """
    if not owner or not owner.strip():
        raise ValueError("an owner name is required to derive the sourcesystem")
    return f"{SOURCE_SYSTEM_PREFIX}{owner.strip()}"


def stix_id(external_id: str) -> str:
    """The STIX id of the indicator whose normalized ``external_id`` (a uuid5) is given."""
    return f"{STIX_ID_PREFIX}{external_id}"


def external_id_of(stix_object_id: str) -> str:
    """The normalized ``external_id`` inside a STIX indicator id (the inverse of :func:`stix_id`)."""
    if not stix_object_id.startswith(STIX_ID_PREFIX):
        raise ValueError(f"not an indicator id: {stix_object_id!r}")
    return stix_object_id[len(STIX_ID_PREFIX) :]


def format_timestamp(value: dt.datetime) -> str:
    """A STIX timestamp: UTC, millisecond precision (truncated), ``Z`` suffix."""
    return times.iso(value, "milliseconds")


def parse_timestamp(value: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp (``Z`` or an offset, any fraction length) into an aware UTC datetime."""
    return times.parse(value)


def escape_pattern_value(value: str) -> str:
    """Escape a string for a STIX pattern literal: backslash first, then the single quote."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def pattern_for(row: Mapping[str, Any]) -> str:
    """The single atomic STIX pattern for one normalized row.

    Sentinel parses only simple patterns into ``ObservableKey``/``ObservableValue`` (Azure-Sentinel#12075), so one
    comparison per object, never ``AND``/``OR``.

    Raises:
        ValueError: for a kind (or hash type) that has no STIX mapping.
    """
    kind = str(_get(row, "kind") or "").lower()
    value = _get(row, "value")
    if not _present(value) or not str(value):
        raise ValueError(f"row {_get(row, 'external_id')!r} has no value")
    literal = f"'{escape_pattern_value(str(value))}'"
    try:
        mapping = mapping_for(_get(row, "indicator_type"), kind)
        # ipv6-addr for anything with a colon; CIDR blocks stay in the value (STIX allows CIDR there).
        path = mapping.stix_path(variant_of(kind, str(value), _get(row, "hash_type")))
    except (MappingError, KeyError, ValueError) as exc:
        raise ValueError(f"row {_get(row, 'external_id')!r} ({kind!r}) has no STIX pattern: {exc}") from None
    return f"[{path} = {literal}]"


def indicator_types_for(indicator_type: str) -> list[str]:
    """The fixed ``indicator_types`` of a ThreatConnect type: its mapping's ``stix.indicator_types``."""
    try:
        return list(load_mapping(indicator_type).stix_indicator_types)
    except MappingError:
        return list(FALLBACK_INDICATOR_TYPES)


def build_indicator(
    row: Mapping[str, Any], revoked: bool | None = None, modified: dt.datetime | None = None
) -> dict[str, Any]:
    """The STIX 2.1 indicator for one normalized row (deterministic: no clock reads, sorted labels).

    Args:
        row: a row with the ``NORMALIZED_SCHEMA`` columns, optionally ``stix_modified`` (set by the lifecycle
            stage so ``modified`` strictly increases on every change or revoke).
        revoked: force ``revoked``; by default an indicator is revoked when it is not active or is a false
            positive.
        modified: force ``modified`` (retract uses it to outrank the stored version).

    Returns:
        A JSON-ready dict that ``stix2.parse(..., allow_custom=False)`` accepts.

    Raises:
        ValueError: when the row lacks an id, a value or any timestamp, or its kind has no pattern.
    """
    external_id = _get(row, "external_id")
    if not _present(external_id) or not str(external_id):
        raise ValueError("row has no external_id")

    created_at = _timestamp(_get(row, "date_added"))
    modified_at = modified if modified is not None else _timestamp(_get(row, "stix_modified"))
    if modified_at is None:
        modified_at = _timestamp(_get(row, "last_modified"))
    if created_at is None and modified_at is None:
        raise ValueError(f"row {external_id!r} has neither date_added nor last_modified")
    created_at = _truncate_ms(created_at or modified_at)  # type: ignore[arg-type]
    modified_at = _truncate_ms(modified_at or created_at)
    # STIX requires modified >= created; ThreatConnect can report a lastModified before dateAdded (imports).
    modified_at = max(modified_at, created_at)

    valid_from = _timestamp(_get(row, "valid_from"))
    valid_from = _truncate_ms(valid_from) if valid_from is not None else created_at
    valid_until = _timestamp(_get(row, "expiration"))
    if valid_until is not None:
        valid_until = _truncate_ms(valid_until)
        if valid_until <= valid_from:
            valid_until = valid_from + EXPIRED_AT_BIRTH_STEP

    if revoked is None:
        revoked = not _flag(_get(row, "active"), default=True) or _flag(_get(row, "false_positive"), default=False)

    value = str(_get(row, "value"))
    indicator: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id(str(external_id)),
        "created": format_timestamp(created_at),
        "modified": format_timestamp(modified_at),
        "name": value,
        "indicator_types": indicator_types_for(str(_get(row, "indicator_type") or "")),
        "pattern": pattern_for(row),
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "valid_from": format_timestamp(valid_from),
        "revoked": bool(revoked),
    }
    if valid_until is not None:
        indicator["valid_until"] = format_timestamp(valid_until)
    description = _get(row, "description")
    if _present(description) and str(description).strip():
        indicator["description"] = str(description)
    confidence = _get(row, "confidence")
    if _present(confidence):
        indicator["confidence"] = int(confidence)
    labels = sorted({str(tag) for tag in _list(_get(row, "tags")) if str(tag).strip()})
    if labels:
        indicator["labels"] = labels
    marking = tlp_marking(_get(row, "tlp"))
    if marking:
        indicator["object_marking_refs"] = [marking]
    reference: dict[str, str] = {"source_name": EXTERNAL_SOURCE_NAME}
    tc_id = _get(row, "tc_id")
    if _present(tc_id):
        reference["external_id"] = str(int(tc_id))
    web_link = _get(row, "web_link")
    if _present(web_link) and str(web_link):
        reference["url"] = str(web_link)
    if len(reference) > 1:  # a reference needs one of external_id, url or description besides source_name
        indicator["external_references"] = [reference]
    return indicator


def tlp_marking(tlp: object) -> str | None:
    """The STIX marking-definition id of a TLP colour (``white``/``clear``, ``green``, ``amber``, ``red``)."""
    if not _present(tlp):
        return None
    colour = str(tlp).strip().lower().removeprefix("tlp:").strip()
    return TLP_MARKINGS.get(_TLP_ALIASES.get(colour, colour))


def _get(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row[key]
    except (KeyError, IndexError):
        return None


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    # NaN and NaT compare unequal to themselves; pandas.NA refuses bool() (TypeError): all mean "missing".
    # An array refuses bool() with ValueError: it is a value.
    try:
        return not bool(value != value)
    except TypeError:
        return False
    except ValueError:
        return True


def _flag(value: object, default: bool) -> bool:
    return bool(value) if _present(value) else default


def _list(value: object) -> list[Any]:
    if value is None or isinstance(value, str | bytes):
        return [value] if isinstance(value, str) and value else []
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return []


def _timestamp(value: object) -> dt.datetime | None:
    return times.parse(value) if _present(value) else None


def _truncate_ms(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)

"""Turn one page of ThreatConnect indicator JSON (v2 typed branches or v3) into a raw-snapshot Arrow batch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from include.pipeline import times
from include.pipeline.schema import RAW_SCHEMA

# Where each type keeps its value in typed v2 items (which carry no ``summary``) and in v3 items.
VALUE_FIELDS: dict[str, tuple[str, ...]] = {
    "Address": ("ip",),
    "Host": ("hostName",),
    "URL": ("text",),
    "EmailAddress": ("address",),
    "File": ("md5", "sha1", "sha256"),
}
_HASH_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256"}


def summary_of(item: Mapping[str, Any], indicator_type: str | None) -> str | None:
    """The indicator's value as ThreatConnect shows it: ``summary`` when sent, else built from the value fields.

    Args:
        item: One indicator (or deleted-indicator) object as ThreatConnect returned it.
        indicator_type: ThreatConnect type name, for items (v2 typed branches) that do not carry ``type``.

    Returns:
        The summary, File hashes joined by ``" : "`` in MD5, SHA1, SHA256 order; None when nothing is known.
    """
    summary = item.get("summary")
    if summary:
        return summary
    fields = VALUE_FIELDS.get(item.get("type") or indicator_type or "", ())
    parts = [item[name] for name in fields if item.get(name)]
    return " : ".join(parts) if parts else None


def _file_hashes(item: Mapping[str, Any], summary: str | None) -> tuple[str | None, str | None, str | None]:
    md5, sha1, sha256 = item.get("md5"), item.get("sha1"), item.get("sha256")
    if (md5 or sha1 or sha256) or not summary:
        return md5, sha1, sha256
    # /v2/indicators (all types) sends only the summary "MD5 : SHA1 : SHA256": recover the hashes by length.
    found: dict[str, str] = {}
    for part in summary.split(" : "):
        kind = _HASH_BY_LENGTH.get(len(part.strip()))
        if kind:
            found.setdefault(kind, part.strip())
    return found.get("md5"), found.get("sha1"), found.get("sha256")


def _names(block: Any) -> list[str]:
    # v2 inlines ``[{"name": ...}]``; v3 wraps it as ``{"data": [{"name": ...}]}``. ``type() is`` checks, not
    # ``isinstance(..., Mapping)``: the ABC check dominated the parse time.
    if not block:
        return []
    if type(block) is dict:
        block = block.get("data", [block] if "name" in block else [])
    elif isinstance(block, Mapping):
        block = block.get("data", [])
    try:
        return [entry["name"] for entry in block]
    except (KeyError, TypeError):
        return [entry["name"] for entry in block if isinstance(entry, Mapping) and entry.get("name")]


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if value is True or value is False:
        return value
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def _int(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    if value == "":
        return None
    return int(float(value)) if isinstance(value, str) else int(value)


def _float(value: Any) -> float | None:
    if value is None or type(value) is float:
        return value
    return None if value == "" else float(value)


def parse_timestamp(value: Any) -> dt.datetime | None:
    """Parse one ThreatConnect date leniently: ``...Z``, ``...-04:00`` or no zone (taken as UTC).

    Args:
        value: An ISO-8601 string, a datetime, or None.

    Returns:
        An aware UTC datetime, or None for an empty value (see :func:`include.pipeline.times.parse`).
    """
    return times.parse(value)


def parse_page(
    items: Sequence[Mapping[str, Any]],
    indicator_type: str | None = None,
    owner: str | None = None,
    page: int = 0,
) -> pa.RecordBatch:
    """Convert one page of indicator objects into a batch with exactly ``RAW_SCHEMA``.

    Args:
        items: Indicator objects from a v2 typed branch (no ``type``/``summary``), ``/v2/indicators`` or v3.
        indicator_type: Type for items that do not say theirs (v2 typed branches).
        owner: Owner for items that carry neither ``ownerName`` nor ``owner.name``.
        page: 0-based page number, recorded on every row for audit.

    Returns:
        A ``pyarrow.RecordBatch`` with ``RAW_SCHEMA``'s columns, in order.
    """
    types = [item.get("type") or indicator_type for item in items]
    summaries = [summary_of(item, kind) for item, kind in zip(items, types, strict=True)]
    hashes = [
        _file_hashes(item, summary) if kind == "File" else (None, None, None)
        for item, kind, summary in zip(items, types, summaries, strict=True)
    ]
    columns: dict[str, Iterable[Any] | pa.Array] = {
        "tc_id": [_int(item.get("id")) for item in items],
        "owner": [item.get("ownerName") or _owner_name(item.get("owner")) or owner for item in items],
        "indicator_type": types,
        "summary": summaries,
        "md5": [h[0] for h in hashes],
        "sha1": [h[1] for h in hashes],
        "sha256": [h[2] for h in hashes],
        "date_added": times.column([item.get("dateAdded") for item in items]),
        "last_modified": times.column([item.get("lastModified") for item in items]),
        "rating": [_float(item.get("rating")) for item in items],
        "confidence": [_int(item.get("confidence")) for item in items],
        "threat_assess_score": [_int(item.get("threatAssessScore")) for item in items],
        # v2 sends ``active`` only with includeAdditional; listings are active-only by default, so absent = True.
        "active": [_bool(item.get("active"), True) for item in items],
        "false_positive_count": [
            _int(item["falsePositives"] if "falsePositives" in item else item.get("falsePositiveCount"))
            for item in items
        ],
        "tags": [_names(item.get("tags") or item.get("tag")) for item in items],
        # v2's key for ``includes=labels`` is UNCONFIRMED (tcex reads ``securityLabel``): accept either spelling.
        "security_labels": [_names(item.get("securityLabels") or item.get("securityLabel")) for item in items],
        "description": [item.get("description") for item in items],
        "web_link": [item.get("webLink") for item in items],
        "external_date_expires": times.column([item.get("externalDateExpires") for item in items]),
        "page": [page] * len(items),
        "deleted": [False] * len(items),
    }
    arrays = [
        value if isinstance(value, pa.Array) else pa.array(value, type=field.type)
        for field, value in ((field, columns[field.name]) for field in RAW_SCHEMA)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=RAW_SCHEMA)


def _owner_name(owner: Any) -> str | None:
    # Single-object v2 responses carry ``"owner": {"id", "name", "type"}`` instead of ``ownerName``.
    if isinstance(owner, Mapping):
        return owner.get("name")
    return owner if isinstance(owner, str) else None

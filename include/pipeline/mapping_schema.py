"""The shape of a mapping file (``include/mappings/<type>.yaml``) and the checks that name the bad key."""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

from include.pipeline.errors import PermanentError


class MappingError(ValueError, PermanentError):
    """A mapping file is missing, unreadable or breaks a rule; the message names the file and the key."""


#: Fields a description template may use; normalize supplies exactly these.
DESCRIPTION_FIELDS = frozenset(
    {"indicator_type", "value", "owner", "description", "rating_label", "confidence", "tlp", "kind", "hash_type"}
)


SCHEMA: dict[str, Any] = {
    "order": int,
    "threatconnect": {"type": str, "v2_branch": str, "v2_entity": str, "v3_type": str, "value_fields": list},
    "kind": str,
    "graph": {"observables": dict, "threat_type": str},
    "stix": {"indicator_types": list, "observables": dict},
    "defender": {"indicator_types": dict},
    "tlp": {"default": str, "labels": dict},
    "confidence": {"default": int},
    "severity": {"default": int, "zero_rating_is_unset": bool},
    "expiration": {"days": int, "by_rating": dict, "use_threatconnect_expiry": bool},
    "tags": {"extra": list},
    "description": {"template": str, "fallback": str},
}
OPTIONAL = frozenset(
    {
        "tlp.labels",
        "severity.zero_rating_is_unset",
        "expiration.by_rating",
        "expiration.use_threatconnect_expiry",
        "tags",
        "tags.extra",
        "order",
    }
)


def check_shape(data: Any, schema: dict[str, Any], where: str, prefix: str = "") -> None:
    """Refuse unknown keys, missing keys and wrongly typed values, naming the dotted key path."""
    if not isinstance(data, dict):
        raise MappingError(f"{where}: {prefix.rstrip('.') or 'the document'} must be a mapping")
    unknown = sorted(str(k) for k in data if k not in schema)
    if unknown:
        raise MappingError(
            f"{where}: unknown key {prefix}{unknown[0]!s} (expected one of: {', '.join(sorted(schema))})"
        )
    for key, expected in schema.items():
        path = f"{prefix}{key}"
        if key not in data:
            if path in OPTIONAL:
                continue
            raise MappingError(f"{where}: missing required key {path}")
        value = data[key]
        if isinstance(expected, dict):
            check_shape(value, expected, where, f"{path}.")
        elif expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            # bool is an int in Python; `default: yes` must not pass as 1
            raise MappingError(f"{where}: {path} must be an integer, got {value!r}")
        elif not isinstance(value, expected):
            raise MappingError(f"{where}: {path} must be a {expected.__name__}, got {value!r}")


def one_of(value: str, allowed: Iterable[str], path: str, where: str) -> str:
    allowed = sorted(allowed)
    if value not in allowed:
        raise MappingError(f"{where}: {path} is {value!r}, expected one of: {', '.join(allowed)}")
    return value


def check_template(template: str, path: str, where: str) -> str:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise MappingError(f"{where}: {path} is not a valid template: {exc}") from exc
    for field in fields:
        if field not in DESCRIPTION_FIELDS:
            raise MappingError(
                f"{where}: {path} uses unknown field {{{field}}} (allowed: {', '.join(sorted(DESCRIPTION_FIELDS))})"
            )
    if not template.strip():
        raise MappingError(f"{where}: {path} is empty")
    return template

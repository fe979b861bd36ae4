"""ThreatConnect's API contract shared by both versions: types, limits, errors, dates and paging parameters."""

from __future__ import annotations

import datetime as dt
import zlib
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus

from simulators.server import Request

MAX_RESULT_LIMIT = 10_000
DEFAULT_RESULT_LIMIT = 100
MAX_SKEW_SECONDS = 300
WEB_ORIGIN = "https://app.threatconnect.com"
# "added": a deleted item's dateAdded is when it was first added (default); "deletion": its deletion time.
DELETED_DATE_ADDED = ("added", "deletion")

# TC type name -> (v2 path branch, v2 JSON list key, value fields).
TYPES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "Address": ("addresses", "address", ("ip",)),
    "EmailAddress": ("emailAddresses", "emailAddress", ("address",)),
    "File": ("files", "file", ("md5", "sha1", "sha256")),
    "Host": ("hosts", "host", ("hostName",)),
    "URL": ("urls", "url", ("text",)),
}
BY_BRANCH = {branch: name for name, (branch, _, _) in TYPES.items()}
LABELS = {  # system security labels as /v3 renders them
    "TLP:WHITE": (1, "FFFFFF"),
    "TLP:GREEN": (2, "33FF00"),
    "TLP:AMBER": (3, "FFC000"),
    "TLP:RED": (4, "FF0033"),
    "TLP:CLEAR": (5, "FFFFFF"),
    "TLP:AMBER+STRICT": (6, "FFC000"),
}
V3_FIELDS = {
    "tags",
    "securityLabels",
    "threatAssess",
    "falsePositives",
    "externalDates",
    "attributes",
    "associatedGroups",
    "associatedIndicators",
    "observations",
    "genericCustomIndicatorValues",
    "sightings",
    "enrichment",
    "whoIs",
    "dnsResolution",
    "geoLocation",
    "trackedUsers",
    "investigationLinks",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.auth = auth  # auth failures answer the v2 "Failure" envelope on every path


def parse_date(value: str) -> dt.datetime:
    """A TQL/v2 date or date-time, as an aware UTC datetime (a bare date is midnight UTC)."""
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00"
    parsed = dt.datetime.fromisoformat(text.replace(" ", "T", 1))
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def as_utc(value: Any) -> dt.datetime | None:
    """``value`` (a datetime or its text) as an aware UTC datetime; None stays None."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return parse_date(str(value))


@lru_cache(maxsize=4096)
def plus(text: str) -> str:
    """``text`` quoted for a query string, spaces as ``+``."""
    # Owners and tag names repeat on every item of a page: quote each once.
    return quote_plus(text)


def tag_id(name: str) -> int:
    """A tag's stable numeric id."""
    # Stable across processes, unlike ``hash()``.
    return 1000 + zlib.crc32(name.encode()) % 100_000


def fmt(moment: dt.datetime) -> str:
    """A datetime as ThreatConnect renders it: UTC, seconds, ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(record: dict[str, Any]) -> str:
    """The record's summary: its value fields joined by `` : `` unless it has one."""
    if record.get("summary"):
        return record["summary"]
    fields = TYPES[record["type"]][2]
    return " : ".join(record[name] for name in fields if record.get(name))


def limits(request: Request) -> tuple[int, int]:
    """``resultStart`` and ``resultLimit`` of a listing, checked against the API's bounds."""
    try:
        start = int(request.query_one("resultStart", "0") or 0)
        limit = int(request.query_one("resultLimit", str(DEFAULT_RESULT_LIMIT)) or DEFAULT_RESULT_LIMIT)
    except ValueError:
        start, limit = -1, -1
    if start < 0 or limit < 1 or limit > MAX_RESULT_LIMIT:
        raise HttpError(
            400,
            "The resultStart and resultLimit query parameters must be integers and the maximum value for "
            f"resultLimit is {MAX_RESULT_LIMIT}",
        )
    return start, limit

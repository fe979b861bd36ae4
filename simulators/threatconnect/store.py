"""The ThreatConnect simulator's store: indicators by type and time, owners, deletions and the failure knob."""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from simulators.server import Request
from simulators.threatconnect.contract import DELETED_DATE_ADDED, TYPES, HttpError, as_utc, fmt, parse_date, summary


class IndicatorStore:
    """One instance's indicators, indexed per type by (lastModified, id), with the deleted-indicators listing.

    Records are the internal dicts of ``simulators.dataset.generate`` (datetimes for dates). Test hooks:
    ``fail_next`` (chaos), ``put``/``delete``, ``deleted_date_added`` (what ``dateAdded`` means in the
    deleted-indicators listings) and ``v2_order``: v2's order is undocumented; ``"lastModified"`` (the default) or
    ``"dateAdded desc"``, the order of the one real v2 listing captured (newest first, ties by ascending id), where
    an indicator added while a listing is read pushes every other one a place further.
    """

    v2_order = "lastModified"

    def __init__(
        self,
        indicators: Iterable[dict[str, Any]],
        owners: Sequence[str] = ("Example Organization",),
        deleted_date_added: str = "added",
    ) -> None:
        self.owners = list(owners)
        if deleted_date_added not in DELETED_DATE_ADDED:
            raise ValueError(f"deleted_date_added must be one of {DELETED_DATE_ADDED}, not {deleted_date_added!r}")
        self.deleted_date_added = deleted_date_added
        self.deleted: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._records: dict[int, dict[str, Any]] = {}
        self._index: dict[str, list[tuple[dt.datetime, int]]] = {name: [] for name in TYPES}
        self._cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self._failures: list[tuple[int, float | None]] = []
        for record in indicators:
            if not isinstance(record.get("lastModified"), dt.datetime) or "summary" not in record:
                record = self._normalised(record)
            self._records[record["id"]] = record
            self._index.setdefault(record["type"], []).append((record["lastModified"], record["id"]))
        for keys in self._index.values():
            keys.sort()

    # --- test hooks ---------------------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After`` when given), before auth."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def put(self, record: dict[str, Any]) -> None:
        """Insert or replace an indicator by ``id``; the caller supplies ``lastModified``."""
        record = self._normalised(record)
        with self._lock:
            self._unindex(record["id"])
            self._records[record["id"]] = record
            bisect.insort(self._index.setdefault(record["type"], []), (record["lastModified"], record["id"]))
            self._cache.clear()

    def delete(self, indicator_id: int, deleted_at: dt.datetime) -> None:
        """Delete an indicator, listing it under ``/deleted`` with ``deleted_at``."""
        with self._lock:
            record = self._unindex(indicator_id)
            if record is None:
                raise KeyError(indicator_id)
            self.deleted.append(
                {
                    "id": indicator_id,
                    "type": record["type"],
                    "owner": record["owner"],
                    "summary": record["summary"],
                    "date_added": record["dateAdded"],
                    "deleted_at": as_utc(deleted_at),
                }
            )
            self._cache.clear()

    def get(self, indicator_id: int) -> dict[str, Any] | None:
        """The stored record with this id, if any."""
        with self._lock:
            return self._records.get(indicator_id)

    def _normalised(self, record: dict[str, Any]) -> dict[str, Any]:
        record = dict(record)
        if record.get("type") not in TYPES:
            raise ValueError(f"unsupported indicator type {record.get('type')!r}")
        for key in ("dateAdded", "lastModified", "externalDateExpires"):
            record[key] = as_utc(record.get(key))
        if record["lastModified"] is None:
            raise ValueError("lastModified is required")
        record["dateAdded"] = record["dateAdded"] or record["lastModified"]
        record.setdefault("owner", self.owners[0])
        record.setdefault("active", True)
        record.setdefault("falsePositives", 0)
        record.setdefault("tags", [])
        record.setdefault("securityLabels", [])
        record.setdefault("threatAssessScore", 0)
        record["summary"] = summary(record)
        return record

    def _unindex(self, indicator_id: int) -> dict[str, Any] | None:
        old = self._records.pop(indicator_id, None)
        if old is not None:
            keys = self._index[old["type"]]
            position = bisect.bisect_left(keys, (old["lastModified"], indicator_id))
            if position < len(keys) and keys[position] == (old["lastModified"], indicator_id):
                del keys[position]
        return old

    # --- queries shared by v2 and v3 ----------------------------------------------------------------------

    def owner(self, request: Request, default_all: bool) -> set[str]:
        """The owners a listing reads: its ``owner`` parameter, else every owner (v3) or the first (v2)."""
        # Docs spell it ``owner`` and ``Owner``; accept either.
        owner = next((value for key, value in request.query if key.lower() == "owner"), None)
        if owner is None:
            return set(self.owners) if default_all else {self.owners[0]}
        if owner not in self.owners:
            raise HttpError(403, "The requested owner was not found")
        return {owner}

    def scan(
        self, kinds: Sequence[str], low: dt.datetime | None, predicate: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """Records of ``kinds`` with lastModified >= ``low`` passing ``predicate``, in (lastModified, id) order."""
        found: list[dict[str, Any]] = []
        records = self._records
        for kind in kinds:
            keys = self._index.get(kind, [])
            start = bisect.bisect_left(keys, (low,)) if low is not None else 0
            found.extend(record for record in (records[key[1]] for key in keys[start:]) if predicate(record))
        if len(kinds) > 1:
            found.sort(key=lambda record: (record["lastModified"], record["id"]))
        return found

    def cached(self, key: tuple[Any, ...], build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The result of the query ``key``, built once by ``build`` until the store changes."""
        # Every page of one query shares the filtered list; mutations clear it. A 10,000-row page of a
        # 1,000,000-indicator store is then a slice.
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 32:
                self._cache.clear()
            hit = self._cache[key] = build()
        return hit

    def deleted_matches(self, request: Request, owners: set[str], kind: str | None) -> list[dict[str, Any]]:
        """Deleted entries of ``owners`` (and ``kind``) deleted at or after the request's ``deletedSince``."""
        since_text = request.query_one("deletedSince")
        try:
            since = parse_date(since_text) if since_text else None
        except ValueError:
            raise HttpError(400, f"Invalid deletedSince: {since_text}") from None
        return [
            entry
            for entry in self.deleted
            if entry["owner"] in owners
            and (kind is None or entry["type"] == kind)
            and (since is None or entry["deleted_at"] >= since)
        ]

    def deleted_item(self, entry: dict[str, Any]) -> dict[str, Any]:
        """One entry of a deleted-indicators listing, as both API versions render it."""
        # ``dateAdded`` keeps its meaning here: when the indicator was first added, long before its deletion. The
        # listing carries no deletion time at all; only ``deletedSince`` filters on it.
        stamp = entry["deleted_at"] if self.deleted_date_added == "deletion" else entry["date_added"]
        return {
            "ownerName": entry["owner"],
            "dateAdded": fmt(stamp),
            "type": entry["type"],
            "summary": entry["summary"],
        }

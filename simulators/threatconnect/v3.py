"""ThreatConnect's v3 indicator API: ``/v3/indicators`` with TQL, ``fields`` and ``sorting``, and ``/deleted``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from simulators.server import Request, Response
from simulators.threatconnect.contract import LABELS, TYPES, V3_FIELDS, WEB_ORIGIN, HttpError, fmt, limits, tag_id
from simulators.threatconnect.store import IndicatorStore
from simulators.threatconnect.tql import TQL_FIELDS, Cmp, TqlParser, compile_tql, conjuncts, mentions


def v3_list(store: IndicatorStore, request: Request) -> Response:
    """``GET /v3/indicators``: one page of the TQL query, with ``next``/``prev`` links."""
    owners = store.owner(request, default_all=True)
    start, limit = limits(request)
    tql = request.query_one("tql") or ""
    fields = set(request.query_all("fields"))
    unknown = fields - V3_FIELDS
    if unknown:
        raise HttpError(400, f"Invalid fields: {', '.join(sorted(unknown))}")
    sorting = parse_sorting(request.query_one("sorting") or "")
    key = ("v3", tql, tuple(sorted(owners)), tuple(sorting))
    matches = store.cached(key, lambda: v3_matches(store, tql, owners, sorting))
    body: dict[str, Any] = {}
    origin = f"https://{request.header('Host') or 'localhost'}"
    if start + limit < len(matches):
        body["next"] = origin + with_start(request, start + limit)
    if request.query_one("count") == "true" and start == 0:
        body["count"] = len(matches)
    body["data"] = [v3_item(store, record, fields) for record in matches[start : start + limit]]
    if start > 0:
        body["prev"] = origin + with_start(request, max(0, start - limit))
    body["status"] = "Success"
    return Response(200, body)


def with_start(request: Request, start: int) -> str:
    """This request's path and query with ``resultStart`` set to ``start``."""
    # Keep every other parameter byte for byte, so that the client can sign the link as it stands.
    parts = [part for part in request.raw_query.split("&") if part and not part.startswith("resultStart=")]
    parts.append(f"resultStart={start}")
    return f"{request.path}?{'&'.join(parts)}"


def parse_sorting(text: str) -> list[tuple[str, bool]]:
    """The ``sorting`` parameter as (record key, descending) pairs."""
    words = text.split()
    order: list[tuple[str, bool]] = []
    index = 0
    while index < len(words):
        field = TQL_FIELDS.get(words[index].lower())
        if field is None:
            raise HttpError(400, f"Invalid sorting field: {words[index]}")
        descending = False
        if index + 1 < len(words) and words[index + 1].lower() in ("asc", "desc", "nullsfirst", "nullslast"):
            descending = words[index + 1].lower() == "desc"
            index += 1
        order.append((field[0], descending))
        index += 1
    return order


def v3_matches(
    store: IndicatorStore, tql: str, owners: set[str], sorting: list[tuple[str, bool]]
) -> list[dict[str, Any]]:
    """Every indicator of ``owners`` matching ``tql``, in the order ``sorting`` asks for."""
    node = TqlParser(tql).parse() if tql.strip() else None
    kinds: set[str] = set(TYPES)
    low: dt.datetime | None = None
    checks: list[Callable[[dict[str, Any]], bool]] = []
    if node is not None:
        # Narrow the scan with top-level AND clauses on type and lastModified; the predicate re-checks all.
        for clause in conjuncts(node):
            if isinstance(clause, Cmp) and clause.key == "type":
                if clause.op == "=":
                    kinds &= {clause.value}
                elif clause.op == "in":
                    kinds &= clause.value
            if isinstance(clause, Cmp) and clause.key == "lastModified" and clause.op in (">=", ">", "="):
                low = clause.value if low is None else max(low, clause.value)
        checks.append(compile_tql(node))
    if node is None or not mentions(node, "active"):
        checks.append(lambda record: record["active"] is True)  # v3 is active-only by default
    found = store.scan(
        [kind for kind in TYPES if kind in kinds],
        low,
        lambda record: record["owner"] in owners and all(check(record) for check in checks),
    )
    if not sorting:
        found.sort(key=lambda record: record["id"])
    elif sorting != [("lastModified", False)]:  # already the scan's order
        for field, descending in reversed(sorting):
            found.sort(key=lambda record, f=field: (record.get(f) is None, record.get(f) or 0), reverse=descending)
    return found


def v3_item(store: IndicatorStore, record: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """One indicator as v3 renders it, with the ``fields`` asked for."""
    kind = record["type"]
    item: dict[str, Any] = {
        "id": record["id"],
        "dateAdded": fmt(record["dateAdded"]),
        "ownerId": store.owners.index(record["owner"]) + 1 if record["owner"] in store.owners else 0,
        "ownerName": record["owner"],
        "webLink": f"{WEB_ORIGIN}/#/details/indicators/{record['id']}/overview",
        "type": kind,
        "lastModified": fmt(record["lastModified"]),
        "summary": record["summary"],
        "privateFlag": False,
        "active": record["active"],
        "activeLocked": False,
    }
    for name in TYPES[kind][2]:
        if record.get(name):
            item[name] = record[name]
    if kind == "Host":
        item["dnsActive"] = item["whoisActive"] = False
    if record.get("rating") is not None:
        item["rating"] = record["rating"]
    if record.get("confidence") is not None:
        item["confidence"] = record["confidence"]
    if record.get("description"):
        item["description"] = record["description"]
    if "tags" in fields:
        item["tags"] = {
            "data": [
                {"id": tag_id(name), "name": name, "lastUsed": item["lastModified"]}
                for name in record.get("tags") or ()
            ]
        }
    if "securityLabels" in fields:
        item["securityLabels"] = {
            "data": [
                {
                    "id": LABELS.get(name, (99, "000000"))[0],
                    "name": name,
                    "description": f"{name} label",
                    "color": LABELS.get(name, (99, "000000"))[1],
                    "owner": "System",
                    "dateAdded": "2016-08-31T00:00:00Z",
                }
                for name in record.get("securityLabels") or ()
            ]
        }
    if "threatAssess" in fields:
        item["threatAssessRating"] = record.get("rating") or 0.0
        item["threatAssessConfidence"] = float(record.get("confidence") or 0)
        item["threatAssessScore"] = record.get("threatAssessScore") or 0
        item["threatAssessScoreObserved"] = 0
        item["threatAssessScoreFalsePositive"] = 0
        item["calScore"] = 0
    if "falsePositives" in fields:
        item["falsePositives"] = record.get("falsePositives") or 0
        item["falsePositiveReportedByUser"] = False
        if record.get("falsePositives"):
            item["lastFalsePositive"] = item["lastModified"]
    if "externalDates" in fields and record.get("externalDateExpires") is not None:
        item["externalDateExpires"] = fmt(record["externalDateExpires"])
    return item


def v3_deleted(store: IndicatorStore, request: Request) -> Response:
    """``GET /v3/indicators/deleted``: the deleted-indicators listing."""
    owners = store.owner(request, default_all=True)
    start, limit = limits(request)
    kind = request.query_one("type")
    if kind is not None and kind not in TYPES:
        raise HttpError(400, f"Invalid type: {kind}")
    matches = store.deleted_matches(request, owners, kind)
    body: dict[str, Any] = {}
    origin = f"https://{request.header('Host') or 'localhost'}"
    if start + limit < len(matches):
        body["next"] = origin + with_start(request, start + limit)
    body["data"] = [store.deleted_item(entry) for entry in matches[start : start + limit]]
    if start == 0:
        body["count"] = len(matches)
    body["status"] = "Success"
    return Response(200, body)

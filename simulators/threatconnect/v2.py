"""ThreatConnect's v2 indicator API: ``/v2/indicators[/<branch>][/deleted]`` with ``filters`` and ``includes``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from simulators.server import Request, Response
from simulators.threatconnect.contract import TYPES, WEB_ORIGIN, HttpError, fmt, limits, parse_date, plus
from simulators.threatconnect.store import IndicatorStore
from simulators.threatconnect.tql import COMPARE


def v2_list(store: IndicatorStore, request: Request, kind: str | None) -> Response:
    """``GET /v2/indicators[/<branch>]``: one page of an owner's indicators, v2 envelope."""
    owners = store.owner(request, default_all=False)
    start, limit = limits(request)
    since_text = request.query_one("modifiedSince")
    try:
        since = parse_date(since_text) if since_text else None
    except ValueError:
        raise HttpError(400, f"Invalid modifiedSince: {since_text}") from None
    filters, or_params = request.query_one("filters") or "", request.query_one("orParams") == "true"
    predicate = v2_filter(filters, or_params)
    kinds = [kind] if kind else list(TYPES)
    key = ("v2", tuple(kinds), tuple(sorted(owners)), since, filters, or_params, store.v2_order)

    def build() -> list[dict[str, Any]]:
        found = store.scan(kinds, since, lambda r: r["owner"] in owners and predicate(r))
        if store.v2_order == "dateAdded desc":
            found.sort(key=lambda r: r["id"])
            found.sort(key=lambda r: r["dateAdded"], reverse=True)
        return found

    matches = store.cached(key, build)
    includes = set(request.query_all("includes"))
    additional = request.query_one("includeAdditional") == "true" or "additional" in includes
    tags = request.query_one("includeTags") == "true" or "tags" in includes
    labels = "labels" in includes
    items = [
        v2_item(record, typed=kind is not None, additional=additional, tags=tags, labels=labels)
        for record in matches[start : start + limit]
    ]
    entity = TYPES[kind][1] if kind else "indicator"
    data: dict[str, Any] = {}
    if start == 0:  # "Specifying a resultStart other than 0 will omit the resultCount field"
        data["resultCount"] = len(matches)
    data[entity] = items
    return Response(200, {"status": "Success", "data": data})


def v2_filter(filters: str, or_params: bool) -> Callable[[dict[str, Any]], bool]:
    """The predicate of v2 ``filters`` (comma-separated, ANDed unless ``orParams``)."""
    clauses: list[Callable[[dict[str, Any]], bool]] = []
    mentions_active = False
    for text in filter(None, filters.split(",")):
        match = re.fullmatch(r"(\w+)([=<>^])(.*)", text)
        if match is None:
            raise HttpError(400, f"Invalid filter: {text}")
        name, op, raw = match.groups()
        if name == "active" and op == "=":
            mentions_active = True
            wanted = raw.lower() == "true"
            clauses.append(lambda r, wanted=wanted: r["active"] is wanted)
        elif name == "summary" and op in "=^":
            clauses.append(
                (lambda r, raw=raw: r["summary"] == raw)
                if op == "="
                else (lambda r, raw=raw: r["summary"].startswith(raw))
            )
        elif name in ("rating", "confidence", "threatAssessScore", "falsePositive") and op in "=<>":
            field = "falsePositives" if name == "falsePositive" else name
            compare = COMPARE[op]
            clauses.append(lambda r, f=field, c=compare, v=float(raw): r.get(f) is not None and c(r[f], v))
        elif name == "dateAdded" and op in "<>":
            compare, moment = COMPARE[op], parse_date(raw)
            clauses.append(lambda r, c=compare, m=moment: c(r["dateAdded"], m))
        else:
            raise HttpError(400, f"Invalid filter: {text}")
    combine = any if or_params else all
    # "By default, all API branches return only active Indicators."
    if mentions_active:
        return lambda record: combine(clause(record) for clause in clauses)
    return lambda record: record["active"] is True and all(clause(record) for clause in clauses)


def v2_item(record: dict[str, Any], typed: bool, additional: bool, tags: bool, labels: bool) -> dict[str, Any]:
    """One indicator as v2 renders it, typed (branch listing) or not."""
    kind = record["type"]
    _, entity, value_fields = TYPES[kind]
    item: dict[str, Any] = {
        "id": record["id"],
        "ownerName": record["owner"],
        "dateAdded": fmt(record["dateAdded"]),
        "lastModified": fmt(record["lastModified"]),
    }
    if not typed:
        item["type"] = kind
    rating, confidence = record.get("rating"), record.get("confidence")
    if rating is not None:  # omitted when unset
        item["rating"] = rating
    if confidence is not None:
        item["confidence"] = confidence
    item["threatAssessRating"] = rating or 0.0
    item["threatAssessConfidence"] = float(confidence or 0)
    item["threatAssessScore"] = record.get("threatAssessScore") or 0
    item["webLink"] = (
        f"{WEB_ORIGIN}/auth/indicators/details/{entity.lower()}.xhtml?"
        f"{entity.lower()}={quote(record['summary'], safe='')}&owner={plus(record['owner'])}"
    )
    if record.get("description"):
        item["description"] = record["description"]
    if typed:
        for name in value_fields:
            if record.get(name):
                item[name] = record[name]
        if kind == "Host":
            item["dnsActive"] = item["whoisActive"] = "false"
    else:
        item["summary"] = record["summary"]
    if additional:
        item["active"] = record["active"]
        item["activeLocked"] = False
        item["observationCount"] = 0
        item["falsePositiveCount"] = record.get("falsePositives") or 0
        if record.get("falsePositives"):
            item["falsePositiveLastReported"] = item["lastModified"]
        item["privateFlag"] = False
    if tags:
        item["tag"] = [
            {"name": name, "webLink": f"{WEB_ORIGIN}/auth/tags/tag.xhtml?tag={plus(name)}"}
            for name in record.get("tags") or ()
        ]
    if labels:
        item["securityLabel"] = [
            {"name": name, "description": f"{name} security label", "dateAdded": "2016-08-31T00:00:00Z"}
            for name in record.get("securityLabels") or ()
        ]
    return item


def v2_deleted(store: IndicatorStore, request: Request, kind: str | None) -> Response:
    """``GET /v2/indicators[/<branch>]/deleted``: the deleted-indicators listing."""
    owners = store.owner(request, default_all=False)
    start, limit = limits(request)
    matches = store.deleted_matches(request, owners, kind)
    data: dict[str, Any] = {}
    if start == 0:
        data["resultCount"] = len(matches)
    data["indicator"] = [store.deleted_item(entry) for entry in matches[start : start + limit]]
    return Response(200, {"status": "Success", "data": data})

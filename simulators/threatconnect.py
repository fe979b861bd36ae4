"""ThreatConnect's REST indicator API (v2 and v3, HMAC-signed), faithful to the contract notes, for tests."""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import hashlib
import hmac
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

from simulators.server import HttpsServer, Request, Response
from simulators.tls import TlsMaterial

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
_BY_BRANCH = {branch: name for name, (branch, _, _) in TYPES.items()}
_LABELS = {  # system security labels as /v3 renders them
    "TLP:WHITE": (1, "FFFFFF"), "TLP:GREEN": (2, "33FF00"), "TLP:AMBER": (3, "FFC000"), "TLP:RED": (4, "FF0033"),
    "TLP:CLEAR": (5, "FFFFFF"), "TLP:AMBER+STRICT": (6, "FFC000"),
}
_V3_FIELDS = {
    "tags", "securityLabels", "threatAssess", "falsePositives", "externalDates", "attributes", "associatedGroups",
    "associatedIndicators", "observations", "genericCustomIndicatorValues", "sightings", "enrichment", "whoIs",
    "dnsResolution", "geoLocation", "trackedUsers", "investigationLinks",
}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.auth = auth  # auth failures answer the v2 "Failure" envelope on every path


def _parse_date(value: str) -> dt.datetime:
    text = value.strip()
    if len(text) == 10:
        text += "T00:00:00"
    parsed = dt.datetime.fromisoformat(text.replace(" ", "T", 1))
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _as_utc(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return _parse_date(str(value))


@lru_cache(maxsize=4096)
def _plus(text: str) -> str:
    # Owners and tag names repeat on every item of a page: quote each once.
    return quote_plus(text)


def _tag_id(name: str) -> int:
    # Stable across processes, unlike ``hash()``.
    return 1000 + zlib.crc32(name.encode()) % 100_000


def _fmt(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(record: dict[str, Any]) -> str:
    if record.get("summary"):
        return record["summary"]
    fields = TYPES[record["type"]][2]
    return " : ".join(record[name] for name in fields if record.get(name))


# --- TQL -------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>>=|<=|!=|=|>|<)'
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_WORD_OPS = {"EQ": "=", "NE": "!=", "GT": ">", "LT": "<", "GEQ": ">=", "LEQ": "<="}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
}
# TQL field -> (record key, kind)
_TQL_FIELDS = {
    "typename": ("type", "str"), "ownername": ("owner", "str"), "summary": ("summary", "str"),
    "lastmodified": ("lastModified", "date"), "dateadded": ("dateAdded", "date"),
    "indicatoractive": ("active", "bool"), "id": ("id", "num"), "rating": ("rating", "num"),
    "confidence": ("confidence", "num"), "threatassessscore": ("threatAssessScore", "num"),
    "falsepositivecount": ("falsePositives", "num"),
}


@dataclass
class _Cmp:
    key: str
    op: str  # = != > < >= <= in notin
    value: Any


@dataclass
class _Bool:
    op: str  # and / or
    children: list[Any]


class _TqlParser:
    """Recursive descent over the small TQL subset the client and tests use."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise _HttpError(400, f"Invalid TQL near position {position}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.position = 0

    def parse(self) -> Any:
        node = self._or()
        if self.position != len(self.tokens):
            raise _HttpError(400, f"Invalid TQL: unexpected {self.tokens[self.position][1]!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, kind: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (kind is not None and token[0] != kind):
            raise _HttpError(400, "Invalid TQL: unexpected end of query" if token is None else
                             f"Invalid TQL: unexpected {token[1]!r}")
        self.position += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self.position += 1
            return True
        return False

    def _or(self) -> Any:
        children = [self._and()]
        while self._keyword("OR"):
            children.append(self._and())
        return children[0] if len(children) == 1 else _Bool("or", children)

    def _and(self) -> Any:
        children = [self._atom()]
        while self._keyword("AND"):
            children.append(self._atom())
        return children[0] if len(children) == 1 else _Bool("and", children)

    def _atom(self) -> Any:
        if self._peek() == ("lp", "("):
            self._take()
            node = self._or()
            self._take("rp")
            return node
        name = self._take("word")[1]
        field = _TQL_FIELDS.get(name.lower())
        if field is None:
            raise _HttpError(400, f"Invalid TQL: unknown field {name!r}")
        key, kind = field
        negate = self._keyword("NOT")
        if self._keyword("IN"):
            self._take("lp")
            values = [self._value(kind)]
            while self._peek() == ("comma", ","):
                self._take()
                values.append(self._value(kind))
            self._take("rp")
            return _Cmp(key, "notin" if negate else "in", set(values))
        if negate:
            raise _HttpError(400, "Invalid TQL: NOT must precede IN")
        token = self._take()
        op = token[1] if token[0] == "op" else _WORD_OPS.get(token[1].upper(), "")
        if not op:
            raise _HttpError(400, f"Invalid TQL: unknown operator {token[1]!r}")
        if kind in ("str", "bool") and op not in ("=", "!="):
            raise _HttpError(400, f"Invalid TQL: operator {token[1]!r} not valid for {name}")
        return _Cmp(key, op, self._value(kind))

    def _value(self, kind: str) -> Any:
        token_kind, text = self._take()
        if token_kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "date":
            try:
                return _parse_date(text)
            except ValueError:
                raise _HttpError(400, f"Invalid TQL: bad date {text!r}") from None
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise _HttpError(400, f"Invalid TQL: bad boolean {text!r}")
            return text.lower() == "true"
        if kind == "num":
            try:
                return float(text)
            except ValueError:
                raise _HttpError(400, f"Invalid TQL: bad number {text!r}") from None
        return text


def _compile(node: Any) -> Callable[[dict[str, Any]], bool]:
    if isinstance(node, _Bool):
        parts = [_compile(child) for child in node.children]
        if node.op == "and":
            return lambda record: all(part(record) for part in parts)
        return lambda record: any(part(record) for part in parts)
    key, op, value = node.key, node.op, node.value
    if op == "in":
        return lambda record: record.get(key) in value
    if op == "notin":
        return lambda record: record.get(key) not in value
    compare = _COMPARE[op]

    def predicate(record: dict[str, Any]) -> bool:
        field = record.get(key)
        return field is not None and compare(field, value)

    return predicate


def _mentions(node: Any, key: str) -> bool:
    if isinstance(node, _Bool):
        return any(_mentions(child, key) for child in node.children)
    return node.key == key


def _conjuncts(node: Any) -> list[Any]:
    return node.children if isinstance(node, _Bool) and node.op == "and" else [node]


# --- the service -----------------------------------------------------------------------------------------


class ThreatConnectService:
    """A handler for ``HttpsServer`` serving one ThreatConnect instance's indicators under ``base_path``.

    Records are the internal dicts of ``simulators.dataset.generate`` (datetimes for dates). Test hooks:
    ``requests`` (method and raw target of every request seen), ``fail_next`` (chaos), ``put``/``delete``, and
    ``deleted_date_added`` (what ``dateAdded`` means in the deleted-indicators listings).
    """

    def __init__(
        self,
        indicators: Iterable[dict[str, Any]],
        access_id: str,
        secret_key: str,
        owners: Sequence[str] = ("Example Organization",),
        clock: Callable[[], float] = time.time,
        base_path: str = "/api",
        auth_failure_status: int = 401,
        deleted_date_added: str = "added",
    ) -> None:
        self.access_id = access_id
        self.secret_key = secret_key
        self.owners = list(owners)
        self.clock = clock
        self.base_path = base_path.rstrip("/")
        self.auth_failure_status = auth_failure_status  # the code for a bad signature today is UNCONFIRMED
        if deleted_date_added not in DELETED_DATE_ADDED:
            raise ValueError(f"deleted_date_added must be one of {DELETED_DATE_ADDED}, not {deleted_date_added!r}")
        self.deleted_date_added = deleted_date_added
        self.requests: list[tuple[str, str]] = []
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
                {"id": indicator_id, "type": record["type"], "owner": record["owner"],
                 "summary": record["summary"], "date_added": record["dateAdded"], "deleted_at": _as_utc(deleted_at)}
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
            record[key] = _as_utc(record.get(key))
        if record["lastModified"] is None:
            raise ValueError("lastModified is required")
        record["dateAdded"] = record["dateAdded"] or record["lastModified"]
        record.setdefault("owner", self.owners[0])
        record.setdefault("active", True)
        record.setdefault("falsePositives", 0)
        record.setdefault("tags", [])
        record.setdefault("securityLabels", [])
        record.setdefault("threatAssessScore", 0)
        record["summary"] = _summary(record)
        return record

    def _unindex(self, indicator_id: int) -> dict[str, Any] | None:
        old = self._records.pop(indicator_id, None)
        if old is not None:
            keys = self._index[old["type"]]
            position = bisect.bisect_left(keys, (old["lastModified"], indicator_id))
            if position < len(keys) and keys[position] == (old["lastModified"], indicator_id):
                del keys[position]
        return old

    # --- dispatch -----------------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response | None:
        path = request.path
        prefix = self.base_path
        if not (path.startswith(prefix + "/v2/") or path.startswith(prefix + "/v3/")):
            return None
        route = path[len(prefix):]
        v3 = route.startswith("/v3/")
        with self._lock:
            self.requests.append((request.method, request.target))
            if self._failures:
                status, retry_after = self._failures.pop(0)
                headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
                return Response(status, {"status": "Failure", "message": "Service Unavailable"}, headers)
        try:
            self._authenticate(request)
            if request.method != "GET":
                raise _HttpError(405, f"Method {request.method} is not supported by the simulator")
            with self._lock:
                return self._route(request, route)
        except _HttpError as error:
            if error.auth or not v3:
                return Response(error.status, {"status": "Failure", "message": error.message})
            return Response(error.status, {"errCode": "0x1001", "message": error.message, "status": "Error"})

    def _denied(self, message: str) -> _HttpError:
        return _HttpError(self.auth_failure_status, message, auth=True)

    def _authenticate(self, request: Request) -> None:
        scheme, _, credentials = (request.header("Authorization") or "").partition(" ")
        access_id, _, presented = credentials.rpartition(":")
        if scheme != "TC" or not access_id or not presented:
            raise self._denied("Access Denied")
        raw_timestamp = request.header("Timestamp") or ""
        try:
            timestamp = int(raw_timestamp)
        except ValueError:
            raise self._denied("Invalid timestamp") from None
        if abs(self.clock() - timestamp) > MAX_SKEW_SECONDS:
            raise self._denied("Timestamp out of acceptable time range")
        if not hmac.compare_digest(access_id, self.access_id):
            raise self._denied("Access Denied")
        # The raw request-target byte for byte: TC hashes what it received, never a decoded path.
        message = f"{request.target}:{request.method}:{raw_timestamp}"
        expected = base64.b64encode(
            hmac.new(self.secret_key.encode(), message.encode(), hashlib.sha256).digest()
        ).decode()
        if not hmac.compare_digest(expected, presented):
            raise self._denied("Signature data did not match expected result")

    def _route(self, request: Request, route: str) -> Response:
        parts = route.strip("/").split("/")
        if parts[:2] == ["v3", "indicators"]:
            if len(parts) == 2:
                return self._v3_list(request)
            if parts[2:] == ["deleted"]:
                return self._v3_deleted(request)
        if parts[:2] == ["v2", "indicators"]:
            rest = parts[2:]
            if not rest:
                return self._v2_list(request, None)
            if rest == ["deleted"]:
                return self._v2_deleted(request, None)
            kind = _BY_BRANCH.get(rest[0])
            if kind is not None and len(rest) == 1:
                return self._v2_list(request, kind)
            if kind is not None and rest[1:] == ["deleted"]:
                return self._v2_deleted(request, kind)
        raise _HttpError(404, "The requested resource was not found")

    # --- shared helpers -----------------------------------------------------------------------------------

    def _owner(self, request: Request, default_all: bool) -> set[str]:
        # Docs spell it ``owner`` and ``Owner``; accept either.
        owner = next((value for key, value in request.query if key.lower() == "owner"), None)
        if owner is None:
            return set(self.owners) if default_all else {self.owners[0]}
        if owner not in self.owners:
            raise _HttpError(403, "The requested owner was not found")
        return {owner}

    @staticmethod
    def _limits(request: Request) -> tuple[int, int]:
        try:
            start = int(request.query_one("resultStart", "0") or 0)
            limit = int(request.query_one("resultLimit", str(DEFAULT_RESULT_LIMIT)) or DEFAULT_RESULT_LIMIT)
        except ValueError:
            start, limit = -1, -1
        if start < 0 or limit < 1 or limit > MAX_RESULT_LIMIT:
            raise _HttpError(
                400,
                "The resultStart and resultLimit query parameters must be integers and the maximum value for "
                f"resultLimit is {MAX_RESULT_LIMIT}",
            )
        return start, limit

    def _scan(
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

    def _cached(self, key: tuple[Any, ...], build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        # Every page of one query shares the filtered list; mutations clear it. A 10,000-row page of a
        # 1,000,000-indicator store is then a slice.
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 32:
                self._cache.clear()
            hit = self._cache[key] = build()
        return hit

    # --- v2 -----------------------------------------------------------------------------------------------

    def _v2_list(self, request: Request, kind: str | None) -> Response:
        owners = self._owner(request, default_all=False)
        start, limit = self._limits(request)
        since_text = request.query_one("modifiedSince")
        try:
            since = _parse_date(since_text) if since_text else None
        except ValueError:
            raise _HttpError(400, f"Invalid modifiedSince: {since_text}") from None
        filters, or_params = request.query_one("filters") or "", request.query_one("orParams") == "true"
        predicate = self._v2_filter(filters, or_params)
        kinds = [kind] if kind else list(TYPES)
        key = ("v2", tuple(kinds), tuple(sorted(owners)), since, filters, or_params)
        matches = self._cached(
            key, lambda: self._scan(kinds, since, lambda r: r["owner"] in owners and predicate(r))
        )
        includes = set(request.query_all("includes"))
        additional = request.query_one("includeAdditional") == "true" or "additional" in includes
        tags = request.query_one("includeTags") == "true" or "tags" in includes
        labels = "labels" in includes
        items = [
            self._v2_item(record, typed=kind is not None, additional=additional, tags=tags, labels=labels)
            for record in matches[start : start + limit]
        ]
        entity = TYPES[kind][1] if kind else "indicator"
        data: dict[str, Any] = {}
        if start == 0:  # "Specifying a resultStart other than 0 will omit the resultCount field"
            data["resultCount"] = len(matches)
        data[entity] = items
        return Response(200, {"status": "Success", "data": data})

    @staticmethod
    def _v2_filter(filters: str, or_params: bool) -> Callable[[dict[str, Any]], bool]:
        clauses: list[Callable[[dict[str, Any]], bool]] = []
        mentions_active = False
        for text in filter(None, filters.split(",")):
            match = re.fullmatch(r"(\w+)([=<>^])(.*)", text)
            if match is None:
                raise _HttpError(400, f"Invalid filter: {text}")
            name, op, raw = match.groups()
            if name == "active" and op == "=":
                mentions_active = True
                wanted = raw.lower() == "true"
                clauses.append(lambda r, wanted=wanted: r["active"] is wanted)
            elif name == "summary" and op in "=^":
                clauses.append(
                    (lambda r, raw=raw: r["summary"] == raw) if op == "=" else
                    (lambda r, raw=raw: r["summary"].startswith(raw))
                )
            elif name in ("rating", "confidence", "threatAssessScore", "falsePositive") and op in "=<>":
                field = "falsePositives" if name == "falsePositive" else name
                compare = _COMPARE[op]
                clauses.append(
                    lambda r, f=field, c=compare, v=float(raw): r.get(f) is not None and c(r[f], v)
                )
            elif name == "dateAdded" and op in "<>":
                compare, moment = _COMPARE[op], _parse_date(raw)
                clauses.append(lambda r, c=compare, m=moment: c(r["dateAdded"], m))
            else:
                raise _HttpError(400, f"Invalid filter: {text}")
        combine = any if or_params else all
        # "By default, all API branches return only active Indicators."
        if mentions_active:
            return lambda record: combine(clause(record) for clause in clauses)
        return lambda record: record["active"] is True and all(clause(record) for clause in clauses)

    @staticmethod
    def _v2_item(record: dict[str, Any], typed: bool, additional: bool, tags: bool, labels: bool) -> dict[str, Any]:
        kind = record["type"]
        _, entity, value_fields = TYPES[kind]
        item: dict[str, Any] = {
            "id": record["id"],
            "ownerName": record["owner"],
            "dateAdded": _fmt(record["dateAdded"]),
            "lastModified": _fmt(record["lastModified"]),
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
            f"{entity.lower()}={quote(record['summary'], safe='')}&owner={_plus(record['owner'])}"
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
                {"name": name, "webLink": f"{WEB_ORIGIN}/auth/tags/tag.xhtml?tag={_plus(name)}"}
                for name in record.get("tags") or ()
            ]
        if labels:
            item["securityLabel"] = [
                {"name": name, "description": f"{name} security label", "dateAdded": "2016-08-31T00:00:00Z"}
                for name in record.get("securityLabels") or ()
            ]
        return item

    def _v2_deleted(self, request: Request, kind: str | None) -> Response:
        owners = self._owner(request, default_all=False)
        start, limit = self._limits(request)
        matches = self._deleted_matches(request, owners, kind)
        data: dict[str, Any] = {}
        if start == 0:
            data["resultCount"] = len(matches)
        data["indicator"] = [self._deleted_item(entry) for entry in matches[start : start + limit]]
        return Response(200, {"status": "Success", "data": data})

    def _deleted_matches(self, request: Request, owners: set[str], kind: str | None) -> list[dict[str, Any]]:
        since_text = request.query_one("deletedSince")
        try:
            since = _parse_date(since_text) if since_text else None
        except ValueError:
            raise _HttpError(400, f"Invalid deletedSince: {since_text}") from None
        return [
            entry for entry in self.deleted
            if entry["owner"] in owners and (kind is None or entry["type"] == kind)
            and (since is None or entry["deleted_at"] >= since)
        ]

    def _deleted_item(self, entry: dict[str, Any]) -> dict[str, Any]:
        # ``dateAdded`` keeps its meaning here: when the indicator was first added, long before its deletion. The
        # listing carries no deletion time at all; only ``deletedSince`` filters on it.
        stamp = entry["deleted_at"] if self.deleted_date_added == "deletion" else entry["date_added"]
        return {"ownerName": entry["owner"], "dateAdded": _fmt(stamp), "type": entry["type"],
                "summary": entry["summary"]}

    # --- v3 -----------------------------------------------------------------------------------------------

    def _v3_list(self, request: Request) -> Response:
        owners = self._owner(request, default_all=True)
        start, limit = self._limits(request)
        tql = request.query_one("tql") or ""
        fields = set(request.query_all("fields"))
        unknown = fields - _V3_FIELDS
        if unknown:
            raise _HttpError(400, f"Invalid fields: {', '.join(sorted(unknown))}")
        sorting = self._sorting(request.query_one("sorting") or "")
        key = ("v3", tql, tuple(sorted(owners)), tuple(sorting))
        matches = self._cached(key, lambda: self._v3_matches(tql, owners, sorting))
        body: dict[str, Any] = {}
        origin = f"https://{request.header('Host') or 'localhost'}"
        if start + limit < len(matches):
            body["next"] = origin + self._with_start(request, start + limit)
        if request.query_one("count") == "true" and start == 0:
            body["count"] = len(matches)
        body["data"] = [self._v3_item(record, fields) for record in matches[start : start + limit]]
        if start > 0:
            body["prev"] = origin + self._with_start(request, max(0, start - limit))
        body["status"] = "Success"
        return Response(200, body)

    @staticmethod
    def _with_start(request: Request, start: int) -> str:
        # Keep every other parameter byte for byte, so that the client can sign the link as it stands.
        parts = [part for part in request.raw_query.split("&") if part and not part.startswith("resultStart=")]
        parts.append(f"resultStart={start}")
        return f"{request.path}?{'&'.join(parts)}"

    @staticmethod
    def _sorting(text: str) -> list[tuple[str, bool]]:
        words = text.split()
        order: list[tuple[str, bool]] = []
        index = 0
        while index < len(words):
            field = _TQL_FIELDS.get(words[index].lower())
            if field is None:
                raise _HttpError(400, f"Invalid sorting field: {words[index]}")
            descending = False
            if index + 1 < len(words) and words[index + 1].lower() in ("asc", "desc", "nullsfirst", "nullslast"):
                descending = words[index + 1].lower() == "desc"
                index += 1
            order.append((field[0], descending))
            index += 1
        return order

    def _v3_matches(
        self, tql: str, owners: set[str], sorting: list[tuple[str, bool]]
    ) -> list[dict[str, Any]]:
        node = _TqlParser(tql).parse() if tql.strip() else None
        kinds: set[str] = set(TYPES)
        low: dt.datetime | None = None
        checks: list[Callable[[dict[str, Any]], bool]] = []
        if node is not None:
            # Narrow the scan with top-level AND clauses on type and lastModified; the predicate re-checks all.
            for clause in _conjuncts(node):
                if isinstance(clause, _Cmp) and clause.key == "type":
                    if clause.op == "=":
                        kinds &= {clause.value}
                    elif clause.op == "in":
                        kinds &= clause.value
                if isinstance(clause, _Cmp) and clause.key == "lastModified" and clause.op in (">=", ">", "="):
                    low = clause.value if low is None else max(low, clause.value)
            checks.append(_compile(node))
        if node is None or not _mentions(node, "active"):
            checks.append(lambda record: record["active"] is True)  # v3 is active-only by default
        found = self._scan(
            [kind for kind in TYPES if kind in kinds], low,
            lambda record: record["owner"] in owners and all(check(record) for check in checks),
        )
        if not sorting:
            found.sort(key=lambda record: record["id"])
        elif sorting != [("lastModified", False)]:  # already the scan's order
            for field, descending in reversed(sorting):
                found.sort(
                    key=lambda record, f=field: (record.get(f) is None, record.get(f) or 0), reverse=descending
                )
        return found

    def _v3_item(self, record: dict[str, Any], fields: set[str]) -> dict[str, Any]:
        kind = record["type"]
        item: dict[str, Any] = {
            "id": record["id"],
            "dateAdded": _fmt(record["dateAdded"]),
            "ownerId": self.owners.index(record["owner"]) + 1 if record["owner"] in self.owners else 0,
            "ownerName": record["owner"],
            "webLink": f"{WEB_ORIGIN}/#/details/indicators/{record['id']}/overview",
            "type": kind,
            "lastModified": _fmt(record["lastModified"]),
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
            item["tags"] = {"data": [
                {"id": _tag_id(name), "name": name, "lastUsed": item["lastModified"]}
                for name in record.get("tags") or ()
            ]}
        if "securityLabels" in fields:
            item["securityLabels"] = {"data": [
                {"id": _LABELS.get(name, (99, "000000"))[0], "name": name, "description": f"{name} label",
                 "color": _LABELS.get(name, (99, "000000"))[1], "owner": "System",
                 "dateAdded": "2016-08-31T00:00:00Z"}
                for name in record.get("securityLabels") or ()
            ]}
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
            item["externalDateExpires"] = _fmt(record["externalDateExpires"])
        return item

    def _v3_deleted(self, request: Request) -> Response:
        owners = self._owner(request, default_all=True)
        start, limit = self._limits(request)
        kind = request.query_one("type")
        if kind is not None and kind not in TYPES:
            raise _HttpError(400, f"Invalid type: {kind}")
        matches = self._deleted_matches(request, owners, kind)
        body: dict[str, Any] = {}
        origin = f"https://{request.header('Host') or 'localhost'}"
        if start + limit < len(matches):
            body["next"] = origin + self._with_start(request, start + limit)
        body["data"] = [self._deleted_item(entry) for entry in matches[start : start + limit]]
        if start == 0:
            body["count"] = len(matches)
        body["status"] = "Success"
        return Response(200, body)


def start_threatconnect(
    tls: TlsMaterial, indicators: Iterable[dict[str, Any]], access_id: str, secret_key: str, **options: Any
) -> tuple[HttpsServer, ThreatConnectService]:
    """Start a ThreatConnect simulator on loopback; the API base URL is ``server.base_url + "/api"``.

    Args:
        tls: Certificate material from ``simulators.tls.make_tls_material``.
        indicators: Internal records (``simulators.dataset.generate``).
        access_id: The API user's access id.
        secret_key: The API user's secret key.
        **options: Passed to ``ThreatConnectService`` (owners, clock, base_path, auth_failure_status,
            deleted_date_added).

    Returns:
        The started server (stop it with ``server.stop()``) and the service, for its test hooks.
    """
    service = ThreatConnectService(indicators, access_id, secret_key, **options)
    server = HttpsServer([service], tls).start()
    return server, service

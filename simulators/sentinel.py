"""Microsoft Sentinel's STIX objects upload API and threat-intelligence query, over an append-only store."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stix2patterns.v20.pattern import Pattern as Pattern20
from stix2patterns.v21.pattern import Pattern as Pattern21
from stix2patterns.validator import run_validator

from simulators.mslogin import ARM_AUDIENCE, IssuedToken, LoginService
from simulators.server import Request, Response

UPLOAD_API_VERSION = "2024-02-01-preview"
QUERY_API_VERSION = "2025-07-01-preview"
MAX_OBJECTS = 100
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427)
SUPPORTED_TYPES = {"indicator", "attack-pattern", "threat-actor", "identity", "relationship"}
_UPLOAD_PATH = re.compile(r"^/workspaces/(?P<ws>[^/]+)/threat-intelligence-stix-objects:upload$")
_QUERY_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.OperationalInsights"
    r"/workspaces/(?P<name>[^/]+)/providers/Microsoft\.SecurityInsights/threatIntelligence/main/query$",
    re.IGNORECASE,
)
_ID = re.compile(r"^(?P<type>[a-z0-9-]+)--(?P<uuid>[0-9a-fA-F-]{36})$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
_MARKING = re.compile(r"^marking-definition--[0-9a-fA-F-]{36}$")
_STRING_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class StoredRow:
    """One row of the append-only table: every accepted object of every upload, reruns included."""

    workspace_id: str
    sourcesystem: str
    client_id: str
    stix_object: dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class RequestLogEntry:
    """One request the simulator answered."""

    method: str
    path: str
    status: int
    object_count: int
    client_id: str | None
    at: float


@dataclass
class _Drop:
    predicate: Callable[[dict[str, Any]], bool]
    remaining: int | None


@dataclass
class _Management:
    workspace_id: str
    subscription_id: str
    resource_group: str
    workspace_name: str


@dataclass
class SentinelService:
    """The upload endpoint plus the management-plane query, as an ``HttpsServer`` handler.

    Storage mirrors Sentinel: ``rows`` grows with every accepted object (what a rerun costs in ingestion), and
    ``objects`` keeps the latest version per (workspace, sourcesystem, id), replaced only by an equal or newer
    ``modified``.
    """

    login: LoginService
    workspaces: set[str]
    rate_limit_per_minute: int = 100
    send_retry_after: bool = True
    rate_window_seconds: float = 60.0  # scaled down by tests; the real window is a minute
    clock: Callable[[], float] = time.monotonic
    rows: list[StoredRow] = field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[RequestLogEntry] = field(default_factory=list)
    _admitted: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _injected: deque[int] = field(default_factory=deque)
    _record_failures: list[list[Any]] = field(default_factory=list)
    _drops: list[_Drop] = field(default_factory=list)
    _management: dict[tuple[str, str, str], _Management] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # ---- test knobs -------------------------------------------------------------------------------------
    def inject(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` upload requests with ``status`` (after authentication)."""
        with self._lock:
            self._injected.extend([status] * count)

    def fail_records(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        message: str = "Error for Property=pattern: Injected failure.",
    ) -> None:
        """Reject the next ``count`` objects matching ``predicate`` with a per-record error."""
        with self._lock:
            self._record_failures.append([predicate, count, message])

    def drop_acknowledged(self, predicate: Callable[[dict[str, Any]], bool], count: int | None = None) -> None:
        """Acknowledge matching objects (no ``errors[]`` entry) but keep neither them nor their ingestion row.

        ``predicate`` sees each uploaded STIX object. Only objects that pass validation and ``fail_records`` are
        dropped; ``count`` objects in all (None: every matching object).
        """
        with self._lock:
            self._drops.append(_Drop(predicate, count))

    def remove(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Delete every stored object (any workspace or source) matching ``predicate``, as an analyst would.

        ``predicate`` sees the stored STIX object. The management-plane query stops returning it at once; the
        ingestion ``rows`` stay, as a log's history does. Returns how many objects were deleted.
        """
        with self._lock:
            doomed = [key for key, obj in self.objects.items() if _accepts(predicate, obj)]
            for key in doomed:
                del self.objects[key]
            return len(doomed)

    def register_management(
        self, workspace_id: str, subscription_id: str, resource_group: str, workspace_name: str
    ) -> None:
        """Make a workspace reachable on the management plane under its ARM path."""
        with self._lock:
            key = (subscription_id.lower(), resource_group.lower(), workspace_name.lower())
            self._management[key] = _Management(workspace_id, subscription_id, resource_group, workspace_name)

    # ---- counters ---------------------------------------------------------------------------------------
    @property
    def upload_requests(self) -> list[RequestLogEntry]:
        """The log entries of upload requests."""
        return [r for r in self.requests if r.path.endswith(":upload")]

    @property
    def throttled(self) -> int:
        """How many upload requests were answered 429."""
        return sum(1 for r in self.upload_requests if r.status == 429)

    def stored(self, workspace_id: str, sourcesystem: str, stix_object_id: str) -> dict[str, Any] | None:
        """The latest stored version of one object."""
        return self.objects.get((workspace_id, sourcesystem, stix_object_id))

    # ---- HTTP -------------------------------------------------------------------------------------------
    def __call__(self, request: Request) -> Response | None:
        path = request.path
        if request.method == "POST" and _UPLOAD_PATH.match(path):
            return self._logged(request, self._upload)
        if request.method in ("POST", "GET") and _QUERY_PATH.match(path):
            return self._logged(request, self._query)
        return None

    def _logged(self, request: Request, handler: Callable[[Request], tuple[Response, int, str | None]]) -> Response:
        response, count, client_id = handler(request)
        with self._lock:
            self.requests.append(
                RequestLogEntry(request.method, request.path, response.status, count, client_id, time.time())
            )
        return response

    def _upload(self, request: Request) -> tuple[Response, int, str | None]:
        if request.query_one("api-version") != UPLOAD_API_VERSION:
            return _bad_request("The api-version is missing or not supported."), 0, None
        issued = self.login.authenticate(request, ARM_AUDIENCE)
        if isinstance(issued, Response):
            return issued, 0, None
        match = _UPLOAD_PATH.match(request.path)
        assert match is not None
        workspace = match["ws"]
        if workspace not in self.workspaces:
            return (
                Response(404, {"statusCode": 404, "message": f"Workspace {workspace} was not found."}),
                0,
                issued.client_id,
            )
        with self._lock:
            if self._injected:
                status = self._injected.popleft()
                return Response(status, {"statusCode": status, "message": "Injected failure."}), 0, issued.client_id
            throttled = self._throttle(issued)
            if throttled is not None:
                return throttled, 0, issued.client_id
        try:
            body = request.json()
        except ValueError:
            return _bad_request("The request body is not valid JSON."), 0, issued.client_id
        if not isinstance(body, dict):
            return _bad_request("The request body must be a JSON object."), 0, issued.client_id
        sourcesystem = body.get("sourcesystem")
        if not isinstance(sourcesystem, str) or not sourcesystem.strip():
            return _bad_request("Error for Property=sourcesystem: Required property is missing."), 0, issued.client_id
        if sourcesystem.strip().lower() == "microsoft sentinel":
            # The docs call this value restricted; the real answer is UNCONFIRMED, a 400 is the tolerant guess.
            return _bad_request("The sourcesystem 'Microsoft Sentinel' is restricted."), 0, issued.client_id
        objects = body.get("stixobjects")
        if not isinstance(objects, list):
            return _bad_request("Error for Property=stixobjects: Required property is missing."), 0, issued.client_id
        if len(objects) > MAX_OBJECTS:
            return (
                _bad_request(f"At most {MAX_OBJECTS} objects per request; got {len(objects)}."),
                len(objects),
                issued.client_id,
            )

        errors = []
        with self._lock:
            for index, obj in enumerate(objects):
                messages = validate_object(obj)
                if not messages:
                    messages = self._injected_record_failure(obj)
                if messages:
                    errors.append({"recordIndex": index, "errorMessages": messages})
                    continue
                if not self._dropped(obj):
                    self._store(workspace, sourcesystem, issued.client_id, obj)
        if errors:
            return Response(200, {"errors": errors}), len(objects), issued.client_id
        return Response(200, None), len(objects), issued.client_id

    def _throttle(self, issued: IssuedToken) -> Response | None:
        # Sliding window per identity; only admitted requests count, so a client that waits as told gets in.
        now = self.clock()
        window = self._admitted[issued.client_id]
        while window and window[0] <= now - self.rate_window_seconds:
            window.popleft()
        if len(window) < self.rate_limit_per_minute:
            window.append(now)
            return None
        seconds = max(1, math.ceil(window[0] + self.rate_window_seconds - now))
        headers = {"Retry-After": str(seconds)} if self.send_retry_after else {}
        return Response(
            429, {"statusCode": 429, "message": f"Rate limit is exceeded. Try again in {seconds} seconds."}, headers
        )

    def _injected_record_failure(self, obj: dict[str, Any]) -> list[str]:
        for rule in self._record_failures:
            predicate, remaining, message = rule
            if remaining > 0 and predicate(obj):
                rule[1] = remaining - 1
                return [message]
        return []

    def _dropped(self, obj: dict[str, Any]) -> bool:
        for drop in self._drops:
            if drop.remaining is not None and drop.remaining <= 0:
                continue
            if _accepts(drop.predicate, obj):
                if drop.remaining is not None:
                    drop.remaining -= 1
                return True
        return False

    def _store(self, workspace: str, sourcesystem: str, client_id: str, obj: dict[str, Any]) -> None:
        self.rows.append(StoredRow(workspace, sourcesystem, client_id, obj, time.time()))
        key = (workspace, sourcesystem, obj["id"])
        held = self.objects.get(key)
        if held is None or _parse(obj["modified"]) >= _parse(held["modified"]):
            self.objects[key] = obj

    def _query(self, request: Request) -> tuple[Response, int, str | None]:
        if request.query_one("api-version") != QUERY_API_VERSION:
            return (
                _arm_error(400, "InvalidApiVersionParameter", "The api-version is missing or not supported."),
                0,
                None,
            )
        issued = self.login.authenticate(request, ARM_AUDIENCE)
        if isinstance(issued, Response):
            return issued, 0, None
        match = _QUERY_PATH.match(request.path)
        assert match is not None
        key = (match["sub"].lower(), match["rg"].lower(), match["name"].lower())
        target = self._management.get(key)
        if target is None or target.workspace_id not in self.workspaces:
            return _arm_error(404, "ResourceNotFound", "The workspace was not found."), 0, issued.client_id

        token = request.query_one("$skipToken")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                condition, offset, size = state["condition"], int(state["offset"]), int(state["size"])
            except (ValueError, KeyError, TypeError):
                return _arm_error(400, "BadRequest", "The skip token is not valid."), 0, issued.client_id
        else:
            try:
                body = request.json()
            except ValueError:
                return _arm_error(400, "BadRequest", "The request body is not valid JSON."), 0, issued.client_id
            body = body if isinstance(body, dict) else {}
            condition = body.get("condition") or {}
            offset = 0
            size = int(body.get("maxPageSize") or 100)
            if not 1 <= size <= 1000:
                return _arm_error(400, "BadRequest", "maxPageSize must be between 1 and 1000."), 0, issued.client_id

        with self._lock:
            matches = sorted(
                (
                    (source, obj)
                    for (ws, source, _), obj in self.objects.items()
                    if ws == target.workspace_id and _matches(condition, source, obj)
                ),
                key=lambda pair: (pair[0], pair[1]["id"]),
            )
        page = matches[offset : offset + size]
        arm_root = request.path.rsplit("/threatIntelligence/", 1)[0]
        result: dict[str, Any] = {"value": [_resource(arm_root, source, obj) for source, obj in page]}
        if offset + size < len(matches):
            state = {"condition": condition, "offset": offset + size, "size": size}
            skip = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()
            host = request.header("Host") or "localhost"
            result["nextLink"] = f"https://{host}{request.path}?api-version={QUERY_API_VERSION}&$skipToken={skip}"
        return Response(200, result), len(page), issued.client_id


def validate_object(obj: object) -> list[str]:
    """Sentinel's per-object checks, with messages in its documented shape; empty when the object is valid."""
    if not isinstance(obj, dict):
        return ["Error for Property=object: The STIX object must be a JSON object."]
    errors = []

    def missing(prop: str) -> None:
        errors.append(f"Error for Property={prop}: Required property is missing. Actual value: NULL.")

    for prop in ("id", "type", "created", "modified"):
        if obj.get(prop) in (None, ""):
            missing(prop)
    object_type = obj.get("type")
    if object_type and object_type not in SUPPORTED_TYPES:
        errors.append(f"Error for Property=type: The STIX object type is not supported. Actual value: {object_type}.")
    object_id = obj.get("id")
    if isinstance(object_id, str) and object_id:
        match = _ID.match(object_id)
        if match is None or match["type"] != object_type or not _is_uuid(match["uuid"]):
            errors.append(f"Error for Property=id: The id is not a valid STIX identifier. Actual value: {object_id}.")
    if obj.get("spec_version") not in (None, "2.0", "2.1"):
        errors.append(f"Error for Property=spec_version: Unsupported value. Actual value: {obj.get('spec_version')}.")
    stamps = {}
    for prop in ("created", "modified", "valid_from", "valid_until"):
        value = obj.get(prop)
        if value is None:
            continue
        if not isinstance(value, str) or not _TIMESTAMP.match(value):
            errors.append(f"Error for Property={prop}: The value is not a valid timestamp. Actual value: {value}.")
        else:
            stamps[prop] = _parse(value)
    if "created" in stamps and "modified" in stamps and stamps["modified"] < stamps["created"]:
        errors.append("Error for Property=modified: The value must be later than or equal to created.")
    confidence = obj.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool) or not isinstance(confidence, int) or not 0 <= confidence <= 100
    ):
        errors.append(
            f"Error for Property=confidence: The value must be an integer from 0 to 100. Actual value: {confidence}."
        )
    if "revoked" in obj and not isinstance(obj["revoked"], bool):
        errors.append(f"Error for Property=revoked: The value must be a boolean. Actual value: {obj['revoked']}.")
    labels = obj.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        errors.append("Error for Property=labels: The value must be a list of strings.")
    markings = obj.get("object_marking_refs")
    if markings is not None and (
        not isinstance(markings, list) or not all(isinstance(m, str) and _MARKING.match(m) for m in markings)
    ):
        errors.append("Error for Property=object_marking_refs: The value must be a list of marking-definition ids.")

    if object_type == "indicator":
        for prop in ("pattern", "pattern_type", "valid_from"):
            if obj.get(prop) in (None, ""):
                missing(prop)
        if "valid_from" in stamps and "valid_until" in stamps and stamps["valid_until"] <= stamps["valid_from"]:
            errors.append("Error for Property=valid_until: The value must be later than valid_from.")
        pattern = obj.get("pattern")
        if obj.get("pattern_type") == "stix" and isinstance(pattern, str) and pattern:
            # Like the real API, any valid pattern is accepted, complex ones included.
            version = "2.0" if obj.get("spec_version") == "2.0" else "2.1"
            problems = run_validator(pattern, stix_version=version)
            if problems:
                errors.append(
                    f"Error for Property=pattern: The STIX pattern is not valid: {problems[0]}. "
                    f"Actual value: {pattern}."
                )
            else:
                longest = max(map(len, url_values(pattern, version)), default=0)
                if longest > MAX_URL:
                    errors.append(
                        f"Error for Property=pattern: The url:value is longer than {MAX_URL} characters "
                        f"({longest}). Actual value: {pattern}."
                    )
    return errors


def url_values(pattern: str, stix_version: str = "2.1") -> list[str]:
    """The URLs a valid STIX pattern compares ``url:value`` with (``=``, ``!=``, ``IN``), unescaped."""
    parsed = (Pattern20 if stix_version == "2.0" else Pattern21)(pattern)
    values = []
    for path, operator, literal in parsed.inspect().comparisons.get("url", []):
        # LIKE and MATCHES take a wildcard or a regular expression, not a URL.
        if path == ["value"] and operator.removeprefix("NOT ") in ("=", "!=", "IN"):
            values.extend(_ESCAPE.sub(r"\1", text) for text in _STRING_LITERAL.findall(literal))
    return values


def _accepts(predicate: Callable[[dict[str, Any]], bool], obj: dict[str, Any]) -> bool:
    try:
        return bool(predicate(obj))
    except Exception:  # a predicate that cannot read this object simply does not match it
        return False


def _matches(condition: dict[str, Any], source: str, obj: dict[str, Any]) -> bool:
    object_type = condition.get("stixObjectType")
    if object_type and obj.get("type") != object_type:
        return False
    clauses = condition.get("clauses") or []
    if not clauses:
        return True
    outcomes = []
    for clause in clauses:
        field_name = str(clause.get("field", "")).lower()
        values = [str(v) for v in clause.get("values") or []]
        actual = source if field_name == "source" else obj.get(clause.get("field", ""))
        operator = str(clause.get("operator", "Equals")).lower()
        if operator == "equals":
            outcomes.append(str(actual) in values)
        elif operator == "notequals":
            outcomes.append(str(actual) not in values)
        elif operator == "startswith":
            outcomes.append(any(str(actual).startswith(v) for v in values))
        else:
            outcomes.append(False)
    if str(condition.get("conditionConnective", "And")).lower() == "or":
        return any(outcomes)
    return all(outcomes)


def _resource(arm_root: str, source: str, obj: dict[str, Any]) -> dict[str, Any]:
    # OpenCTI's tests show names like "<encoded source>---indicator--<uuid>".
    encoded = base64.urlsafe_b64encode(source.encode()).decode().rstrip("=")
    name = f"{encoded}---{obj['id']}"
    return {
        "id": f"{arm_root}/threatIntelligence/main/indicators/{name}",
        "name": name,
        "type": "Microsoft.SecurityInsights/threatIntelligence",
        "kind": obj.get("type"),
        "properties": {"source": source, "data": obj},
    }


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _parse(value: str) -> dt.datetime:
    # STIX allows any number of fraction digits; fromisoformat takes at most six.
    head, _, fraction = value.rstrip("Z").partition(".")
    text = f"{head}.{fraction[:6]}" if fraction else head
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _bad_request(message: str) -> Response:
    return Response(400, {"statusCode": 400, "message": message})


def _arm_error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message}})

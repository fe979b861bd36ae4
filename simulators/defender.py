"""Microsoft Defender for Endpoint ``/api/indicators``: import, list, delete and BatchDelete over a dict.

Built from the public contract (reference notes, ``microsoft_api.md`` §8: MicrosoftDocs/defender-docs
``import-ti-indicators.md``, ``get-ti-indicators-collection.md``, ``batch-delete-ti-indicators.md``,
``ti-indicator.md``, ``common-errors.md``), not from our client. Where the docs are silent the simulator takes the
stricter reading, so a client that passes here also passes against the looser truth; every such choice is marked
UNCONFIRMED below:

- Schema errors (a missing required field, an enum spelled in another case, a wrong JSON type) refuse the whole
  request with 400 ``InvalidInput``/``MissingRequiredParameter``, as ``"alert"`` does (OpenCTI #4075). Whether one
  bad item refuses an import or only fails that item is UNCONFIRMED: ``schema_errors_per_item=True`` answers them as
  per-item ``isFailed`` instead, so the client can be tested against both.
- Value errors (a malformed or internal IP, CIDR, compressed IPv6, a bad hash, domain or URL, a long title or
  description, ``Audit`` without ``generateAlert``, a past ``expirationTime``, the tenant cap) fail only their item,
  with a ``failureReason`` of our own wording (the real texts are UNCONFIRMED).
- Title and description are capped at :data:`MAX_TITLE` / :data:`MAX_DESCRIPTION` characters: the docs give no
  limit (UNCONFIRMED); 100 is the strictest plausible one (Graph's description limit, which OpenCTI's Defender
  connector also applies).
- The upsert key is (``indicatorType``, ``indicatorValue``) per tenant. An app holding only ``Ti.ReadWrite`` cannot
  see another app's indicator, so importing the same pair fails that item (UNCONFIRMED); with ``Ti.ReadWrite.All``
  it updates the other app's indicator in place and ``createdBy`` stays the creator's.
- ``BatchDelete`` with an unknown id answers 404; whether it still deleted the others is UNCONFIRMED, so
  ``batch_delete_partial`` chooses (default: nothing is deleted).
- Unknown body properties are ignored (ASP.NET's default), except a documented name in the wrong case, which is
  refused like a wrong-case enum value.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
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
from urllib.parse import urlencode, urlsplit

from simulators import mslogin
from simulators.mslogin import IssuedToken, LoginService
from simulators.server import Request, Response

PREFIX = "/api/indicators"
CONTEXT = "https://api.security.microsoft.com/api/$metadata#Indicators"
DEFENDER_AUDIENCE = "https://api.securitycenter.microsoft.com"
#: Scopes an app may ask the identity platform for (the API's app id URI "WindowsDefenderATP" has both names).
DEFENDER_SCOPES = (
    "https://api.securitycenter.microsoft.com/.default",
    "https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
)
MAX_IMPORT = 500
MAX_BATCH_DELETE = 500
MAX_TOP = 10_000
CAPACITY = 15_000  # "15,000 indicators per tenant. Increases to this limit are not supported."
MAX_TITLE = 100  # UNCONFIRMED (see the module docstring)
MAX_DESCRIPTION = 100  # UNCONFIRMED
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427)
READ_WRITE, READ_WRITE_ALL = "Ti.ReadWrite", "Ti.ReadWrite.All"
#: Documented rate limits as (calls, per window in "minutes"): import and BatchDelete 30/min, the rest 100/min
#: and 1,500/h. Each API page states its own limit, so each API gets its own window per app.
DOCUMENTED_LIMITS: dict[str, tuple[tuple[int, float], ...]] = {
    "import": ((30, 1),), "batchdelete": ((30, 1), (1500, 60)),
    "list": ((100, 1), (1500, 60)), "delete": ((100, 1), (1500, 60)), "submit": ((100, 1), (1500, 60)),
}

INDICATOR_TYPES = ("FileSha1", "FileMd5", "CertificateThumbprint", "FileSha256", "IpAddress", "DomainName", "Url")
ACTIONS = ("Alert", "Warn", "Block", "Audit", "BlockAndRemediate", "AlertAndBlock", "Allowed")
SEVERITIES = ("Informational", "Low", "Medium", "High")
REQUIRED = ("indicatorValue", "indicatorType", "action", "title", "description")
STRINGS = ("indicatorValue", "title", "description", "recommendedActions", "application", "educateUrl")
WRITABLE = (*REQUIRED, "expirationTime", "severity", "recommendedActions", "rbacGroupNames", "application",
            "educateUrl", "generateAlert")
FILE_TYPES = ("FileSha1", "FileMd5", "FileSha256", "CertificateThumbprint")
_HASH_LENGTHS = {"FileMd5": 32, "FileSha1": 40, "FileSha256": 64, "CertificateThumbprint": 40}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_\-\u00a1-\uffff]{1,63}(?<!-)$")
#: "Indicators can't be created for internal IPs": private, shared, loopback, link-local, multicast, reserved and
#: unspecified ranges. Documentation ranges (TEST-NET, 2001:db8::/32) are not internal: Defender cannot know them.
_INTERNAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
    "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "ff00::/8",
))
FILTER_FIELDS = ("application", "createdByDisplayName", "expirationTime", "generateAlert", "title", "rbacGroupNames",
                 "rbacGroupIds", "indicatorValue", "indicatorType", "creationTimeDateTimeUtc", "createdBy", "action",
                 "severity")


def register_audience() -> None:
    """Teach the login simulator that the Defender scopes mint tokens for the Defender API audience."""
    for scope in DEFENDER_SCOPES:
        mslogin._AUDIENCES.setdefault(scope, DEFENDER_AUDIENCE)


register_audience()


class DefenderRequestError(ValueError):
    """The whole request is refused (400 unless ``status`` says otherwise)."""

    def __init__(self, message: str, code: str = "InvalidInput", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ItemError(ValueError):
    """One imported indicator is refused: ``isFailed`` with this ``failureReason``."""


@dataclass(frozen=True)
class LoggedRequest:
    """One request the service answered: what tests count writes and retries with."""

    method: str
    path: str
    items: int  # indicators (import) or ids (BatchDelete) carried; 1 for single writes, 0 for reads
    status: int
    client_id: str | None


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    path_contains: str | None
    processed: bool


@dataclass
class _ItemRule:
    predicate: Callable[[dict[str, Any]], bool]
    remaining: int | None
    reason: str = ""


@dataclass
class DefenderService:
    """An ``HttpsServer`` handler for Defender for Endpoint's ``/api/indicators``.

    ``indicators`` holds the stored entities by id, each with its ``createdBy`` (the creating app's client id).
    Expiry, rate windows and timestamps read ``clock`` (epoch seconds), so tests move time by hand.
    """

    login: LoginService
    clock: Callable[[], float] = time.time
    capacity: int = CAPACITY
    page_size: int = MAX_TOP  # the largest page served; a smaller $top pages sooner
    rate_limits: dict[str, tuple[tuple[int, float], ...]] | None = None  # None = off; DOCUMENTED_LIMITS = real
    minute_seconds: float = 60.0  # how long a rate-limit "minute" lasts (scaled down by tests)
    schema_errors_per_item: bool = False
    batch_delete_partial: bool = False
    max_title: int = MAX_TITLE
    max_description: int = MAX_DESCRIPTION
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    tenants: dict[str, str] = field(default_factory=dict)  # id -> tenant
    permissions: dict[str, str | None] = field(default_factory=dict)  # client id -> permission; absent = ReadWrite
    requests: list[LoggedRequest] = field(default_factory=list)
    _next_id: int = 1
    _faults: list[_Fault] = field(default_factory=list)
    _item_faults: list[_ItemRule] = field(default_factory=list)
    _drops: list[_ItemRule] = field(default_factory=list)
    _windows: dict[tuple[str, str, int], deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # ----------------------------------------------------------------- knobs and views for tests
    def grant(self, client_id: str, permission: str | None) -> None:
        """Give an app ``Ti.ReadWrite`` (its own indicators), ``Ti.ReadWrite.All`` (all), or None (403)."""
        if permission not in (READ_WRITE, READ_WRITE_ALL, None):
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self.permissions[client_id] = permission

    def inject(self, status: int, count: int = 1, retry_after: int | None = None, path_contains: str | None = None,
               processed: bool = False) -> None:
        """Answer the next ``count`` authenticated requests (whose path contains ``path_contains``) with ``status``.

        ``processed=True`` carries the request out first and then answers the error (a gateway timeout after the
        service committed).
        """
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, path_contains, processed))

    def fail_items(self, predicate: Callable[[dict[str, Any]], bool], count: int | None = None,
                   reason: str = "Simulated internal error; try again later.") -> None:
        """Fail imported items matching ``predicate`` (it sees the item as sent) with ``isFailed`` and ``reason``,
        ``count`` times in all (None: always). Only items that pass validation reach this check."""
        with self._lock:
            self._item_faults.append(_ItemRule(predicate, count, reason))

    def drop_acknowledged(self, predicate: Callable[[dict[str, Any]], bool], count: int | None = None) -> None:
        """Answer matching imported items as successes (with an id) while storing nothing and changing nothing."""
        with self._lock:
            self._drops.append(_ItemRule(predicate, count))

    def clear_faults(self) -> None:
        """Drop every pending ``inject``, ``fail_items`` and ``drop_acknowledged``."""
        with self._lock:
            self._faults.clear()
            self._item_faults.clear()
            self._drops.clear()

    def remove(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Delete every stored indicator (any app) matching ``predicate``, as an analyst would; returns how many."""
        with self._lock:
            doomed = [k for k, v in self.indicators.items() if _matches(predicate, dict(v))]
            for indicator_id in doomed:
                self._delete_stored(indicator_id)
            return len(doomed)

    def created_by(self, client_id: str) -> list[dict[str, Any]]:
        """Every live indicator the app ``client_id`` created (a test's view of the store)."""
        with self._lock:
            self._expire()
            return [dict(v) for v in self.indicators.values() if v["createdBy"] == client_id]

    def writes(self, action: str | None = None) -> list[LoggedRequest]:
        """Logged non-GET requests, optionally only those whose path ends with ``action``."""
        with self._lock:
            return [r for r in self.requests if r.method != "GET" and (action is None or r.path.endswith(action))]

    # ----------------------------------------------------------------- dispatch
    def __call__(self, request: Request) -> Response | None:
        if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
            return None
        with self._lock:
            response, items, client_id = self._handle(request)
            self.requests.append(LoggedRequest(request.method, request.path, items, response.status, client_id))
            return response

    def _handle(self, request: Request) -> tuple[Response, int, str | None]:
        items = _count_items(request)
        issued = self.login.authenticate(request, DEFENDER_AUDIENCE)
        if isinstance(issued, Response):
            return error(401, "Unauthorized", "Authorization has been denied for this request."), items, None
        permission = self.permissions.get(issued.client_id, READ_WRITE)
        if permission is None:
            return error(403, "Forbidden", "The application does not have Ti.ReadWrite or Ti.ReadWrite.All."), \
                items, issued.client_id
        api = _api_of(request)
        limited = self._rate_limited(issued.client_id, api)
        if limited is not None:
            return limited, items, issued.client_id
        fault = self._take_fault(request.path)
        if fault is not None and not fault.processed:
            return _fault_response(fault), items, issued.client_id
        self._expire()
        try:
            response = self._route(api, request, issued, permission == READ_WRITE_ALL)
        except DefenderRequestError as exc:
            response = error(exc.status, exc.code, str(exc))
        if fault is not None:
            return _fault_response(fault), items, issued.client_id
        return response, items, issued.client_id

    def _route(self, api: str, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        rest = request.path[len(PREFIX):].strip("/")
        routes: dict[tuple[str, str], Callable[[Request, IssuedToken, bool], Response]] = {
            ("import", "POST"): self._import, ("batchdelete", "POST"): self._batch_delete,
            ("list", "GET"): self._list, ("submit", "POST"): self._submit,
        }
        handler = routes.get((api, request.method))
        if handler is not None:
            return handler(request, issued, sees_all)
        if api == "delete" and request.method == "DELETE" and "/" not in rest:
            return self._delete(rest, issued, sees_all)
        return error(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}.")

    # ----------------------------------------------------------------- throttling, faults, expiry
    def _rate_limited(self, client_id: str, api: str) -> Response | None:
        limits = (self.rate_limits or {}).get(api)
        if not limits:
            return None
        now = self.clock()
        waits = []
        for index, (calls, minutes) in enumerate(limits):
            span = minutes * self.minute_seconds
            window = self._windows[(client_id, api, index)]
            while window and window[0] <= now - span:
                window.popleft()
            if len(window) >= calls:
                waits.append(window[0] + span - now)
        if waits:
            seconds = max(1, math.ceil(max(waits)))
            return error(429, "TooManyRequests", f"Rate limit is exceeded. Try again in {seconds} seconds.",
                         {"Retry-After": str(seconds)})
        for index in range(len(limits)):  # only admitted calls count, so a client that waits as told gets in
            self._windows[(client_id, api, index)].append(now)
        return None

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                fault.remaining -= 1
                return fault
        return None

    def _expire(self) -> None:
        # "An indicator is deleted automatically when its expirationTime passes."
        now = self.clock()
        doomed = [k for k, v in self.indicators.items() if v["_expires"] is not None and v["_expires"] <= now]
        for indicator_id in doomed:
            self._delete_stored(indicator_id)

    def _delete_stored(self, indicator_id: str) -> None:
        self.indicators.pop(indicator_id, None)
        self.tenants.pop(indicator_id, None)

    # ----------------------------------------------------------------- visibility and keys
    def _visible(self, indicator_id: str, issued: IssuedToken, sees_all: bool) -> dict[str, Any] | None:
        stored = self.indicators.get(indicator_id)
        if stored is None or self.tenants.get(indicator_id) != issued.tenant_id:
            return None
        if not sees_all and stored["createdBy"] != issued.client_id:
            return None
        return stored

    def _by_key(self, tenant: str, indicator_type: str, value: str) -> dict[str, Any] | None:
        for indicator_id, stored in self.indicators.items():
            if (self.tenants.get(indicator_id) == tenant and stored["indicatorType"] == indicator_type
                    and stored["indicatorValue"].lower() == value.lower()):
                return stored
        return None

    # ----------------------------------------------------------------- import and submit
    def _import(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        body = _json_object(request)
        items = body.get("Indicators")
        if not isinstance(items, list):
            raise DefenderRequestError("The Indicators list is required.", "MissingRequiredParameter")
        if not items:
            raise DefenderRequestError("The Indicators list is empty.", "InvalidRequestBody")
        if len(items) > MAX_IMPORT:
            raise DefenderRequestError(f"Maximum batch size exceeded. Received: {len(items)}, allowed: {MAX_IMPORT}",
                                       "MaximumBatchSizeExceeded")
        checked: list[dict[str, Any] | ItemError] = []
        for item in items:
            try:
                checked.append(validate_schema(item))
            except DefenderRequestError as exc:
                if not self.schema_errors_per_item:
                    raise
                checked.append(ItemError(str(exc)))
        results = []
        for item, indicator in zip(items, checked, strict=True):
            value = item.get("indicatorValue") if isinstance(item, dict) else None
            try:
                if isinstance(indicator, ItemError):
                    raise indicator
                stored = self._upsert(indicator, item, issued, sees_all)
            except ItemError as exc:
                results.append({"id": None, "indicator": value, "isFailed": True, "failureReason": str(exc)})
                continue
            results.append({"id": stored["id"], "indicator": stored["indicatorValue"], "isFailed": False,
                            "failureReason": None})
        return Response(200, {"@odata.context": "https://api.security.microsoft.com/api/$metadata"
                                                "#Collection(microsoft.windowsDefenderATP.api.ImportIndicatorResult)",
                              "value": results})

    def _submit(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        body = _json_object(request)
        try:
            stored = self._upsert(validate_schema(body), body, issued, sees_all)
        except ItemError as exc:
            raise DefenderRequestError(str(exc)) from exc
        return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **_public(stored)})

    def _upsert(self, indicator: dict[str, Any], item: dict[str, Any], issued: IssuedToken,
                sees_all: bool) -> dict[str, Any]:
        now = self.clock()
        self._validate_values(indicator, now)
        rule = _take(self._item_faults, item)
        if rule is not None:
            raise ItemError(rule.reason)
        existing = self._by_key(issued.tenant_id, indicator["indicatorType"], indicator["indicatorValue"])
        if existing is not None and not sees_all and existing["createdBy"] != issued.client_id:
            raise ItemError("An indicator with this type and value already exists and was created by another "
                            "application.")
        if existing is None and self._live_count(issued.tenant_id) >= self.capacity:
            raise ItemError(f"The tenant has reached the limit of {self.capacity} active indicators; the maximum "
                            "cannot be exceeded.")
        dropped = _take(self._drops, item) is not None
        stamp = _iso(now)
        if existing is not None:
            entity = dict(existing) if dropped else existing
            changes = {k: v for k, v in indicator.items() if k != "application"}  # "only applies to new indicators"
            entity.update(changes)
            entity.update({"lastUpdateTime": stamp, "lastUpdatedBy": issued.client_id})
            entity["_expires"] = _epoch(entity.get("expirationTime"))
            return entity
        entity = {
            "id": str(self._next_id), "indicatorValue": None, "indicatorType": None, "action": None,
            "application": None,
            "source": issued.client_id, "sourceType": "AadApp", "createdBy": issued.client_id,
            "createdBySource": issued.client_id, "createdByDisplayName": f"app {issued.client_id}",
            "severity": "Informational", "title": None, "description": None, "recommendedActions": None,
            "creationTimeDateTimeUtc": stamp, "expirationTime": None, "lastUpdateTime": stamp, "lastUpdatedBy": None,
            "rbacGroupNames": [], "rbacGroupIds": [], "generateAlert": False, "educateUrl": None, "externalID": None,
        }
        entity.update(indicator)
        entity["_expires"] = _epoch(indicator.get("expirationTime"))
        self._next_id += 1
        if not dropped:
            self.indicators[entity["id"]] = entity
            self.tenants[entity["id"]] = issued.tenant_id
        return entity

    def _live_count(self, tenant: str) -> int:
        return sum(1 for k in self.indicators if self.tenants.get(k) == tenant)

    def _validate_values(self, indicator: dict[str, Any], now: float) -> None:
        kind, value = indicator["indicatorType"], indicator["indicatorValue"]
        check_value(kind, value)
        if len(indicator["title"]) > self.max_title:
            raise ItemError(f"InvalidInput: title is longer than {self.max_title} characters.")
        if len(indicator["description"]) > self.max_description:
            raise ItemError(f"InvalidInput: description is longer than {self.max_description} characters.")
        if indicator["action"] == "Audit" and indicator.get("generateAlert") is not True:
            raise ItemError("InvalidInput: action Audit requires generateAlert to be true.")
        if indicator["action"] == "BlockAndRemediate" and kind not in FILE_TYPES:
            raise ItemError(f"InvalidInput: action BlockAndRemediate is not supported for {kind}.")
        expires = _epoch(indicator.get("expirationTime"))
        if expires is not None and expires <= now:  # UNCONFIRMED: refused rather than stored and expired at once
            raise ItemError("InvalidInput: expirationTime must be in the future.")

    # ----------------------------------------------------------------- list
    def _list(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        try:
            top = int(request.query_one("$top") or MAX_TOP)
            skip = int(request.query_one("$skip") or 0)
        except ValueError as exc:
            raise DefenderRequestError("Invalid $top or $skip value.") from exc
        if not 0 < top <= MAX_TOP:
            raise DefenderRequestError(f"$top must be between 1 and {MAX_TOP}.")
        if skip < 0:
            raise DefenderRequestError("$skip must not be negative.")
        filter_text = request.query_one("$filter")
        predicate = parse_filter(filter_text) if filter_text else (lambda _item: True)
        rows = [v for k, v in self.indicators.items()
                if self._visible(k, issued, sees_all) is not None and predicate(v)]
        # $top bounds the whole answer (OData); a page holds at most page_size and links to the rest of it.
        size = min(top, self.page_size)
        page = rows[skip:skip + size]
        body: dict[str, Any] = {"@odata.context": CONTEXT, "value": [_public(r) for r in page]}
        if len(page) == size and top > size and skip + size < len(rows):
            params = {k: v for k, v in request.query if k not in ("$skip", "$top")}
            params.update({"$top": str(top - size), "$skip": str(skip + size)})
            host = request.header("Host") or "api.security.microsoft.com"
            body["@odata.nextLink"] = f"https://{host}{PREFIX}?{urlencode(params)}"
        return Response(200, body)

    # ----------------------------------------------------------------- delete
    def _delete(self, indicator_id: str, issued: IssuedToken, sees_all: bool) -> Response:
        if self._visible(indicator_id, issued, sees_all) is None:
            return error(404, "NotFound", f"Indicator {indicator_id} was not found.")
        self._delete_stored(indicator_id)
        return Response(204)

    def _batch_delete(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        ids = _json_object(request).get("IndicatorIds")
        if not isinstance(ids, list) or not ids:
            raise DefenderRequestError("IndicatorIds is required and must not be empty.", "MissingRequiredParameter")
        if len(ids) > MAX_BATCH_DELETE:
            raise DefenderRequestError(
                f"Maximum batch size exceeded. Received: {len(ids)}, allowed: {MAX_BATCH_DELETE}",
                "MaximumBatchSizeExceeded")
        texts = [str(i) for i in ids if isinstance(i, str | int) and not isinstance(i, bool) and str(i).isdigit()]
        if len(texts) != len(ids):
            raise DefenderRequestError("An indicator id is invalid.")
        present = [i for i in texts if self._visible(i, issued, sees_all) is not None]
        if len(present) != len(texts) and not self.batch_delete_partial:
            return error(404, "NotFound", "One or more indicators were not found.")
        for indicator_id in present:
            self._delete_stored(indicator_id)
        if len(present) != len(texts):
            return error(404, "NotFound", "One or more indicators were not found.")
        return Response(204)


# --------------------------------------------------------------------- validation (pure)
def validate_schema(item: Any) -> dict[str, Any]:
    """The writable fields of one indicator, type-checked; unknown properties are dropped.

    Raises:
        DefenderRequestError: a required field is missing, a documented name or an enum value has the wrong case,
            or a value has the wrong JSON type.
    """
    if not isinstance(item, dict):
        raise DefenderRequestError("Each indicator must be a JSON object.", "InvalidRequestBody")
    by_lower = {name.lower(): name for name in WRITABLE}
    for key in item:
        if key not in WRITABLE and key.lower() in by_lower:
            raise DefenderRequestError(f"Unknown property '{key}'; did you mean '{by_lower[key.lower()]}'?")
    for name in REQUIRED:
        if item.get(name) in (None, ""):
            raise DefenderRequestError(f"The {name} field is required.", "MissingRequiredParameter")
    indicator: dict[str, Any] = {}
    for name in WRITABLE:
        if name not in item or item[name] is None:
            continue
        value = item[name]
        if name in STRINGS and not isinstance(value, str):
            raise DefenderRequestError(f"{name} must be a string.")
        indicator[name] = value
    for name, choices in (("indicatorType", INDICATOR_TYPES), ("action", ACTIONS), ("severity", SEVERITIES)):
        if name in indicator and indicator[name] not in choices:  # case-sensitive: "alert" is a 400 (OpenCTI #4075)
            raise DefenderRequestError(f"Requested value '{indicator[name]}' is not valid for {name}.")
    if "generateAlert" in indicator and not isinstance(indicator["generateAlert"], bool):
        raise DefenderRequestError("generateAlert must be a boolean.")
    names = indicator.get("rbacGroupNames")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise DefenderRequestError("rbacGroupNames must be a list of strings.")
    if "expirationTime" in indicator:
        indicator["expirationTime"] = _normalize_time(indicator["expirationTime"])
    return indicator


def check_value(indicator_type: str, value: str) -> None:
    """Refuse an indicator value Defender cannot hold for its type.

    Raises:
        ItemError: with the reason, e.g. an internal IP, CIDR, compressed IPv6 or a malformed hash.
    """
    if indicator_type == "IpAddress":
        if "/" in value:
            raise ItemError("InvalidIpAddress: CIDR notation is not supported.")
        if "::" in value:
            raise ItemError("InvalidIpAddress: IPv6 addresses must be written with all 8 segments.")
        try:
            address = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ItemError(f"InvalidIpAddress: '{value}' is not an IP address.") from exc
        if any(address in network for network in _INTERNAL if network.version == address.version):
            raise ItemError("InvalidIpAddress: indicators can't be created for internal IPs.")
    elif indicator_type in _HASH_LENGTHS:
        if len(value) != _HASH_LENGTHS[indicator_type] or not _HEX.match(value):
            raise ItemError(f"InvalidHashValue: '{value}' is not a valid {indicator_type} value.")
    elif indicator_type == "DomainName":
        labels = value.rstrip(".").split(".")
        if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
            raise ItemError(f"InvalidDomainName: '{value}' is not a valid domain name.")
    elif indicator_type == "Url":
        parts = urlsplit(value if "://" in value else f"http://{value}")
        if len(value) > MAX_URL or any(c.isspace() for c in value) or not parts.hostname:
            raise ItemError("InvalidUrl: the URL is malformed or longer than 2083 characters.")


def _normalize_time(value: Any) -> str:
    if not isinstance(value, str):
        raise DefenderRequestError("expirationTime must be a date-time string.")
    text = value.strip()
    text = text[:-1] + "+00:00" if text.endswith("Z") else text
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DefenderRequestError(f"'{value}' is not a valid expirationTime.") from exc
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value: str | None) -> float | None:
    if value is None:
        return None
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------- $filter: eq/ne joined by and/or, parentheses
_TOKEN_RE = re.compile(r"\s*(?:(\()|(\))|'((?:[^']|'')*)'|([A-Za-z_][A-Za-z0-9_]*)|(-?\d+))")


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile an OData ``$filter`` of ``field eq|ne literal`` terms (strings compare case-insensitively).

    Raises:
        DefenderRequestError: anything else, or a field the API does not filter on.
    """
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise DefenderRequestError(f"Invalid $filter near '{text[position:position + 20]}'.")
        position = match.end()
        if match[1] or match[2]:
            tokens.append((match[1] or match[2], None))
        elif match[3] is not None:
            tokens.append(("lit", match[3].replace("''", "'")))
        elif match[4]:
            literals = {"true": True, "false": False, "null": None}
            tokens.append(("lit", literals[match[4]]) if match[4] in literals else ("word", match[4]))
        else:
            tokens.append(("lit", int(match[5])))
    parser = _FilterParser(tokens)
    predicate = parser.expression()
    if parser.position != len(tokens):
        raise DefenderRequestError("Invalid $filter: unexpected trailing tokens.")
    return predicate


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _next(self) -> tuple[str, Any]:
        if self.position >= len(self.tokens):
            raise DefenderRequestError("Invalid $filter: unexpected end of expression.")
        self.position += 1
        return self.tokens[self.position - 1]

    def _keyword(self, word: str) -> bool:
        if self.position < len(self.tokens) and self.tokens[self.position] == ("word", word):
            self.position += 1
            return True
        return False

    def expression(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self._conjunction()]
        while self._keyword("or"):
            terms.append(self._conjunction())
        return terms[0] if len(terms) == 1 else (lambda item: any(t(item) for t in terms))

    def _conjunction(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self._primary()]
        while self._keyword("and"):
            terms.append(self._primary())
        return terms[0] if len(terms) == 1 else (lambda item: all(t(item) for t in terms))

    def _primary(self) -> Callable[[dict[str, Any]], bool]:
        kind, name = self._next()
        if kind == "(":
            inner = self.expression()
            if self._next()[0] != ")":
                raise DefenderRequestError("Invalid $filter: missing ')'.")
            return inner
        if kind != "word" or name not in FILTER_FIELDS:
            raise DefenderRequestError(f"Invalid $filter: '{name}' cannot be filtered on.")
        op_kind, op = self._next()
        literal_kind, literal = self._next()
        if op_kind != "word" or op not in ("eq", "ne") or literal_kind != "lit":
            raise DefenderRequestError("Invalid $filter: only 'field eq|ne literal' is supported.")

        def equal(item: dict[str, Any]) -> bool:
            held = item.get(name)
            if isinstance(held, str) and isinstance(literal, str):
                return held.lower() == literal.lower()
            return held == literal

        return equal if op == "eq" else (lambda item: not equal(item))


# --------------------------------------------------------------------- helpers
def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Defender's error body (common-errors.md): ``{"error": {"code", "message", "target"}}``."""
    return Response(status, {"error": {"code": code, "message": message, "target": str(uuid.uuid4())}},
                    headers or {})


_FAULT_CODES = {429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
                504: "GatewayTimeout"}


def _fault_response(fault: _Fault) -> Response:
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return error(fault.status, _FAULT_CODES.get(fault.status, "UnknownError"), "Simulated failure.", headers)


def _api_of(request: Request) -> str:
    rest = request.path[len(PREFIX):].strip("/")
    if rest.lower() == "import":
        return "import"
    if rest.lower() == "batchdelete":
        return "batchdelete"
    if not rest:
        return "list" if request.method == "GET" else "submit"
    return "delete"


def _public(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in stored.items() if not k.startswith("_")}


def _take(rules: list[_ItemRule], item: dict[str, Any]) -> _ItemRule | None:
    for rule in rules:
        if rule.remaining is not None and rule.remaining <= 0:
            continue
        if _matches(rule.predicate, item):
            if rule.remaining is not None:
                rule.remaining -= 1
            return rule
    return None


def _matches(predicate: Callable[[dict[str, Any]], bool], item: dict[str, Any]) -> bool:
    try:
        return bool(predicate(item))
    except Exception:  # a predicate that cannot read this item simply does not match it
        return False


def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise DefenderRequestError("The request body is not valid JSON.", "InvalidRequestBody") from exc
    if not isinstance(body, dict):
        raise DefenderRequestError("The request body must be a JSON object.", "InvalidRequestBody")
    return body


def _count_items(request: Request) -> int:
    if request.method == "GET":
        return 0
    if request.method == "DELETE":
        return 1
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return 0
    if isinstance(body, dict):
        for key in ("Indicators", "IndicatorIds"):
            if isinstance(body.get(key), list):
                return len(body[key])
    return 1

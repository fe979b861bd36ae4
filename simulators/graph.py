"""Microsoft Graph beta ``/security/tiIndicators``: CRUD, the four bulk actions, paging and throttling over a dict."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from simulators.mslogin import GRAPH_AUDIENCE, IssuedToken, LoginService
from simulators.server import Request, Response

PREFIX = "/beta/security/tiIndicators"
CONTEXT = "https://graph.microsoft.com/beta/$metadata#Security/tiIndicators"
RESULT_INFO_CONTEXT = "https://graph.microsoft.com/beta/$metadata#Collection(microsoft.graph.resultInfo)"
MAX_BATCH = 100
DEFAULT_PAGE_SIZE = 100
MAX_TOP = 1000
MAX_SKIP = 500
MAX_DESCRIPTION = 100
MAX_URL = 2083  # the longest URL Microsoft products accept (KB 208427); Graph's url "must comply with RFC 1738"
FAILED_CREATE_ID = "Failed to create, check Error element for reason"
FAILED_UPDATE_ID = "Failed to update, check Error element for reason"

ACTIONS = ("unknown", "allow", "block", "alert", "unknownFutureValue")
TLP_LEVELS = ("unknown", "white", "green", "amber", "red", "unknownFutureValue")
FILE_HASH_TYPES = ("unknown", "sha1", "sha256", "md5", "authenticodeHash256", "lsHash", "ctph", "unknownFutureValue")
DIAMOND_MODELS = ("unknown", "adversary", "capability", "infrastructure", "victim", "unknownFutureValue")
THREAT_TYPES = ("Botnet", "C2", "CryptoMining", "Darknet", "DDoS", "MaliciousUrl", "Malware", "Phishing", "Proxy",
                "PUA", "WatchList")
TARGET_PRODUCTS = ("Azure Sentinel", "Microsoft Defender ATP")

ENUMS: dict[str, tuple[str, ...]] = {
    "action": ACTIONS, "tlpLevel": TLP_LEVELS, "fileHashType": FILE_HASH_TYPES, "diamondModel": DIAMOND_MODELS,
}
EMAIL_OBSERVABLES = ("emailEncoding", "emailLanguage", "emailRecipient", "emailSenderAddress", "emailSenderName",
                     "emailSourceDomain", "emailSourceIpAddress", "emailSubject", "emailXMailer")
FILE_OBSERVABLES = ("fileCompileDateTime", "fileCreatedDateTime", "fileHashType", "fileHashValue", "fileMutexName",
                    "fileName", "filePacker", "filePath", "fileSize", "fileType")
NETWORK_OBSERVABLES = ("domainName", "url", "userAgent", "networkCidrBlock", "networkDestinationCidrBlock",
                       "networkSourceCidrBlock", "networkIPv4", "networkIPv6", "networkDestinationIPv4",
                       "networkDestinationIPv6", "networkSourceIPv4", "networkSourceIPv6", "networkPort",
                       "networkDestinationPort", "networkSourcePort", "networkProtocol", "networkDestinationAsn",
                       "networkSourceAsn")
OBSERVABLES = EMAIL_OBSERVABLES + FILE_OBSERVABLES + NETWORK_OBSERVABLES
# fileHashType qualifies a hash; on its own it observes nothing.
_QUALIFIERS = {"fileHashType"}
STRING_LISTS = ("activityGroupNames", "killChain", "malwareFamilyNames", "tags")
INTS = {"confidence": (0, 100), "severity": (0, 5), "fileSize": (0, 2**63 - 1), "networkPort": (0, 65535),
        "networkDestinationPort": (0, 65535), "networkSourcePort": (0, 65535), "networkProtocol": (0, 255),
        "networkDestinationAsn": (0, 2**32 - 1), "networkSourceAsn": (0, 2**32 - 1)}
BOOLS = ("isActive", "passiveOnly")
DATETIMES = ("expirationDateTime", "lastReportedDateTime", "fileCompileDateTime", "fileCreatedDateTime",
             "ingestedDateTime")
CORE = ("id", "action", "activityGroupNames", "additionalInformation", "azureTenantId", "confidence", "description",
        "diamondModel", "expirationDateTime", "externalId", "ingestedDateTime", "isActive", "killChain",
        "knownFalsePositives", "lastReportedDateTime", "malwareFamilyNames", "passiveOnly", "severity", "tags",
        "targetProduct", "threatType", "tlpLevel")
PROPERTIES = CORE + OBSERVABLES
REQUIRED = ("action", "description", "expirationDateTime", "targetProduct", "threatType", "tlpLevel")
EDITABLE = ("action", "activityGroupNames", "additionalInformation", "confidence", "description", "diamondModel",
            "expirationDateTime", "externalId", "isActive", "killChain", "knownFalsePositives", "lastReportedDateTime",
            "malwareFamilyNames", "passiveOnly", "severity", "tags", "tlpLevel")
_STAMPED = ("id", "azureTenantId", "ingestedDateTime")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})$")


class GraphValidationError(ValueError):
    """An indicator the service refuses, with the Graph error code it answers."""

    def __init__(self, message: str, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LoggedRequest:
    """One request the service answered: what tests count writes and retries with."""

    method: str
    path: str
    items: int  # indicators (or ids) carried by the request; 1 for single-entity writes, 0 for reads
    status: int
    client_id: str | None
    at: float = 0.0  # the service's clock when the request was admitted or refused


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: int | None
    path_contains: str | None
    processed: bool


@dataclass
class _ItemFault:
    predicate: Callable[[dict[str, Any]], bool]
    remaining: int | None
    message: str
    code: str


@dataclass
class _Drop:
    predicate: Callable[[dict[str, Any]], bool]
    remaining: int | None


@dataclass
class GraphService:
    """An ``HttpsServer`` handler for Graph beta ``/security/tiIndicators``.

    Ownership follows ``ThreatIndicators.ReadWrite.OwnedBy``: every indicator remembers the app (client id) that
    created it, and reads, updates, deletes and lists only ever see the caller's own. ``externalId`` is *not* unique,
    as on the real service: submitting the same one twice stores two rows.
    """

    login: LoginService
    rate_limit_per_minute: int | None = None  # per app; None = off (the real budget is 1000/min on tiIndicator)
    rate_window_seconds: float = 60.0  # the window rate_limit_per_minute counts over (shorter: a scaled-down budget)
    page_size: int = DEFAULT_PAGE_SIZE
    clock: Callable[[], float] = time.monotonic
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> stored entity (no owner inside)
    owners: dict[str, str] = field(default_factory=dict)  # id -> client id of the creating app
    requests: list[LoggedRequest] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _item_faults: list[_ItemFault] = field(default_factory=list)
    _drops: list[_Drop] = field(default_factory=list)
    _recent: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # ----------------------------------------------------------------- chaos knobs and counters for tests
    def inject(
        self,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        path_contains: str | None = None,
        processed: bool = False,
    ) -> None:
        """Answer the next ``count`` authenticated requests (whose path contains ``path_contains``) with ``status``.

        ``processed=True`` performs the request first and then answers the error, like a gateway timeout after the
        service committed: the case that makes blind retries of ``submitTiIndicators`` create duplicates.
        """
        with self._lock:
            self._faults.append(_Fault(status, count, retry_after, path_contains, processed))

    def fail_items(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int | None = None,
        message: str = "Simulated provider failure for this indicator.",
        code: str = "InternalServerError",
    ) -> None:
        """Fail items matching ``predicate`` in submit/update batches (206), ``count`` times in all (None: always).

        The item's ``Error`` carries ``code``: the default reads as a transient provider failure, ``"BadRequest"``
        as a permanent rejection of the content. Only items that pass validation reach this check.
        """
        with self._lock:
            self._item_faults.append(_ItemFault(predicate, count, message, code))

    def drop_acknowledged(self, predicate: Callable[[dict[str, Any]], bool], count: int | None = None) -> None:
        """Answer matching submit/update items as successes while changing nothing: "Graph said OK, Sentinel has none".

        ``predicate`` sees each item as sent. A dropped submit item is answered with a fresh id and the entity it
        would have stored, but nothing is stored; a dropped update item is answered with the indicator as it would
        read after the update, but the stored indicator is left as it was. Only items that pass validation and
        ``fail_items`` are dropped; ``count`` items in all (None: every matching item).
        """
        with self._lock:
            self._drops.append(_Drop(predicate, count))

    def clear_faults(self) -> None:
        """Drop every pending ``inject``, ``fail_items`` and ``drop_acknowledged`` fault."""
        with self._lock:
            self._faults.clear()
            self._item_faults.clear()
            self._drops.clear()

    def remove(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Delete every stored indicator (of any app) matching ``predicate``, as an analyst or a retention job would.

        ``predicate`` sees a copy of the stored entity. Returns how many indicators were deleted.
        """
        with self._lock:
            doomed = [k for k, v in self.indicators.items() if _matches(predicate, dict(v))]
            for indicator_id in doomed:
                self._remove(indicator_id)
            return len(doomed)

    def owned_by(self, client_id: str) -> list[dict[str, Any]]:
        """Every stored indicator the app ``client_id`` created (a test's view of the store)."""
        with self._lock:
            return [dict(v) for k, v in self.indicators.items() if self.owners.get(k) == client_id]

    def writes(self, action: str | None = None) -> list[LoggedRequest]:
        """Logged non-GET requests, optionally only those whose path ends with ``action``."""
        with self._lock:
            return [r for r in self.requests if r.method != "GET" and (action is None or r.path.endswith(action))]

    # ----------------------------------------------------------------- dispatch
    def __call__(self, request: Request) -> Response | None:
        if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
            return None
        with self._lock:
            at = self.clock()
            response, items, client_id = self._handle(request, at)
            self.requests.append(LoggedRequest(request.method, request.path, items, response.status, client_id, at))
            return response

    def _handle(self, request: Request, now: float) -> tuple[Response, int, str | None]:
        items = _count_items(request)
        issued = self.login.authenticate(request, GRAPH_AUDIENCE)
        if isinstance(issued, Response):
            return issued, items, None
        limited = self._rate_limited(issued.client_id, now)
        if limited is not None:
            return limited, items, issued.client_id
        fault = self._take_fault(request.path)
        if fault is not None and not fault.processed:
            return _fault_response(fault), items, issued.client_id
        try:
            response = self._route(request, issued)
        except GraphValidationError as exc:
            response = graph_error(400, exc.code, str(exc))
        if fault is not None:
            return _fault_response(fault), items, issued.client_id
        return response, items, issued.client_id

    def _route(self, request: Request, issued: IssuedToken) -> Response:
        rest = request.path[len(PREFIX):].strip("/")
        method = request.method
        if not rest:
            if method == "GET":
                return self._list(request, issued)
            if method == "POST":
                return self._create(request, issued)
            return _method_not_allowed()
        # Graph accepts both the bare and the namespace-qualified action segment.
        action = rest.removeprefix("microsoft.graph.")
        actions = {
            "submitTiIndicators": self._submit, "updateTiIndicators": self._update_many,
            "deleteTiIndicators": self._delete_many, "deleteTiIndicatorsByExternalId": self._delete_by_external_id,
        }
        if action in actions:
            if method != "POST":
                return _method_not_allowed()
            return actions[action](request, issued)
        if "/" in rest:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[-1]}'.")
        if method == "GET":
            return self._get(rest, request, issued)
        if method == "PATCH":
            return self._patch(rest, request, issued)
        if method == "DELETE":
            return self._delete(rest, issued)
        return _method_not_allowed()

    # ----------------------------------------------------------------- throttling and faults
    def _rate_limited(self, client_id: str, now: float) -> Response | None:
        if not self.rate_limit_per_minute:
            return None
        window = self._recent.setdefault(client_id, deque())
        while window and window[0] <= now - self.rate_window_seconds:
            window.popleft()
        if len(window) >= self.rate_limit_per_minute:
            wait = max(1, int(window[0] + self.rate_window_seconds - now + 0.999))
            return too_many_requests(wait)
        window.append(now)
        return None

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                fault.remaining -= 1
                return fault
        return None

    def _item_failure(self, item: dict[str, Any]) -> GraphValidationError | None:
        for fault in self._item_faults:
            if fault.remaining is not None and fault.remaining <= 0:
                continue
            if _matches(fault.predicate, item):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return GraphValidationError(fault.message, fault.code)
        return None

    def _dropped(self, item: dict[str, Any]) -> bool:
        for drop in self._drops:
            if drop.remaining is not None and drop.remaining <= 0:
                continue
            if _matches(drop.predicate, item):
                if drop.remaining is not None:
                    drop.remaining -= 1
                return True
        return False

    # ----------------------------------------------------------------- single-entity operations
    def _visible(self, indicator_id: str, issued: IssuedToken) -> dict[str, Any] | None:
        stored = self.indicators.get(indicator_id)
        if stored is None or self.owners.get(indicator_id) != issued.client_id:
            return None
        return stored

    def _create(self, request: Request, issued: IssuedToken) -> Response:
        body = _json_object(request)
        stored = self._store(validate_new(body), issued)
        return Response(201, {"@odata.context": f"{CONTEXT}/$entity", **stored})

    def _get(self, indicator_id: str, request: Request, issued: IssuedToken) -> Response:
        stored = self._visible(indicator_id, issued)
        if stored is None:
            return _not_found(indicator_id)
        return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **stored})

    def _patch(self, indicator_id: str, request: Request, issued: IssuedToken) -> Response:
        stored = self._visible(indicator_id, issued)
        if stored is None:
            return _not_found(indicator_id)
        body = _json_object(request)
        stored.update(validate_update(body, stored))
        if "return=representation" in (request.header("Prefer") or ""):
            return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **stored})
        return Response(204)

    def _delete(self, indicator_id: str, issued: IssuedToken) -> Response:
        if self._visible(indicator_id, issued) is None:
            return _not_found(indicator_id)
        self._remove(indicator_id)
        return Response(204)

    def _store(self, indicator: dict[str, Any], issued: IssuedToken) -> dict[str, Any]:
        stored = _entity(indicator, issued)
        self.indicators[stored["id"]] = stored
        self.owners[stored["id"]] = issued.client_id
        return dict(stored)

    def _remove(self, indicator_id: str) -> None:
        self.indicators.pop(indicator_id, None)
        self.owners.pop(indicator_id, None)

    # ----------------------------------------------------------------- list with $filter / $top / paging
    def _list(self, request: Request, issued: IssuedToken) -> Response:
        top_text = request.query_one("$top")
        skip_text = request.query_one("$skip")
        filter_text = request.query_one("$filter")
        token = request.query_one("$skiptoken")
        try:
            top = int(top_text) if top_text is not None else None
            skip = int(skip_text) if skip_text is not None else 0
        except ValueError as exc:
            raise GraphValidationError("Invalid $top or $skip value.") from exc
        if top is not None and not 0 < top <= MAX_TOP:
            raise GraphValidationError(f"$top must be between 1 and {MAX_TOP}.")
        if not 0 <= skip <= MAX_SKIP:
            raise GraphValidationError(f"$skip must be between 0 and {MAX_SKIP}.")
        predicate = parse_filter(filter_text) if filter_text else (lambda _item: True)
        offset = _decode_skiptoken(token) if token else skip
        rows = [v for k, v in self.indicators.items() if self.owners.get(k) == issued.client_id and predicate(v)]
        size = top or self.page_size
        page = rows[offset:offset + size]
        body: dict[str, Any] = {"@odata.context": CONTEXT, "value": [dict(r) for r in page]}
        if offset + size < len(rows):
            params = {k: v for k, v in request.query if k not in ("$skiptoken", "$skip")}
            params["$skiptoken"] = _encode_skiptoken(offset + size)
            host = request.header("Host") or "graph.microsoft.com"
            body["@odata.nextLink"] = f"https://{host}{PREFIX}?{urlencode(params)}"
        return Response(200, body)

    # ----------------------------------------------------------------- bulk actions
    def _submit(self, request: Request, issued: IssuedToken) -> Response:
        values = _batch(request)
        results: list[dict[str, Any]] = []
        failed = False
        for item in values:
            try:
                if not isinstance(item, dict):
                    raise GraphValidationError("Each value must be a tiIndicator object.")
                indicator = validate_new(item)
                injected = self._item_failure(item)
                if injected is not None:
                    raise injected
            except GraphValidationError as exc:
                failed = True
                external_id = item.get("externalId") if isinstance(item, dict) else None
                results.append(_item_error(FAILED_CREATE_ID, external_id, exc))
                continue
            stored = _entity(indicator, issued) if self._dropped(item) else self._store(indicator, issued)
            results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored})
        return Response(206 if failed else 200, {"@odata.context": f"{CONTEXT}", "value": results})

    def _update_many(self, request: Request, issued: IssuedToken) -> Response:
        values = _batch(request)
        results: list[dict[str, Any]] = []
        failed = False
        for item in values:
            try:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                    raise GraphValidationError("Each value must be a tiIndicator object with an id.")
                stored = self._visible(item["id"], issued)
                if stored is None:
                    raise GraphValidationError(f"Indicator {item['id']} was not found.", "NotFound")
                changes = validate_update(item, stored)
                injected = self._item_failure(item)
                if injected is not None:
                    raise injected
            except GraphValidationError as exc:
                failed = True
                external_id = item.get("externalId") if isinstance(item, dict) else None
                results.append(_item_error(FAILED_UPDATE_ID, external_id, exc))
                continue
            if self._dropped(item):
                results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored, **changes})
                continue
            stored.update(changes)
            results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored})
        return Response(206 if failed else 200, {"@odata.context": f"{CONTEXT}", "value": results})

    def _delete_many(self, request: Request, issued: IssuedToken) -> Response:
        results = []
        for indicator_id in _batch(request):
            if isinstance(indicator_id, str) and self._visible(indicator_id, issued) is not None:
                self._remove(indicator_id)
                results.append(_result_info(0, "Deleted"))
            else:
                results.append(_result_info(404, f"Indicator {indicator_id} was not found."))
        failed = any(r["code"] != 0 for r in results)
        return Response(206 if failed else 200, {"@odata.context": RESULT_INFO_CONTEXT, "value": results})

    def _delete_by_external_id(self, request: Request, issued: IssuedToken) -> Response:
        results = []
        for external_id in _batch(request):
            matches = [k for k, v in self.indicators.items()
                       if v.get("externalId") == external_id and self.owners.get(k) == issued.client_id]
            for indicator_id in matches:
                self._remove(indicator_id)
            if matches:
                results.append(_result_info(0, f"Deleted {len(matches)} indicator(s)"))
            else:
                results.append(_result_info(404, f"No indicator with externalId {external_id} was found."))
        failed = any(r["code"] != 0 for r in results)
        return Response(206 if failed else 200, {"@odata.context": RESULT_INFO_CONTEXT, "value": results})


# --------------------------------------------------------------------- validation (pure, reusable in unit tests)
def validate_new(body: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce a tiIndicator for create/submit; returns the properties to store.

    Raises:
        GraphValidationError: a required field is missing or a value is out of its domain.
    """
    unknown = [k for k in body if k not in PROPERTIES and not k.startswith("@odata.")]
    if unknown:
        # tiIndicator is a closed OData type: unknown properties fail deserialisation on Graph.
        raise GraphValidationError(f"The property '{unknown[0]}' does not exist on type 'microsoft.graph.tiIndicator'.")
    indicator = {k: _coerce(k, v) for k, v in body.items() if k in PROPERTIES and k not in _STAMPED}
    for name in REQUIRED:
        if indicator.get(name) in (None, ""):
            raise GraphValidationError(f"Required property '{name}' is missing.")
    observed = [k for k in OBSERVABLES if k not in _QUALIFIERS and indicator.get(k) not in (None, "")]
    if not observed:
        raise GraphValidationError("At least one email, file or network observable is required.")
    if indicator.get("fileHashValue") not in (None, "") and indicator.get("fileHashType") in (None, ""):
        raise GraphValidationError("fileHashType is required with fileHashValue.")
    return indicator


def validate_update(body: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Check and coerce an update against the stored indicator; returns the changes to apply.

    Raises:
        GraphValidationError: an unknown or non-editable property would change, or a value is invalid.
    """
    changes: dict[str, Any] = {}
    for name, raw in body.items():
        if name == "id" or name.startswith("@odata."):
            continue
        if name not in PROPERTIES:
            raise GraphValidationError(f"The property '{name}' does not exist on type 'microsoft.graph.tiIndicator'.")
        value = _coerce(name, raw)
        if name in EDITABLE:
            changes[name] = value
        elif value != stored.get(name):
            # threatType, targetProduct and the observables are fixed once created (the docs' editable list).
            raise GraphValidationError(f"The property '{name}' cannot be updated.")
    return changes


def _coerce(name: str, value: Any) -> Any:
    """Lenient scalar coercion as observed on Graph (security-api-solutions#113: "75", "true", +0000 dates)."""
    if value is None:
        return None
    if name in ENUMS:
        choices = {c.lower(): c for c in ENUMS[name]}
        if not isinstance(value, str) or value.lower() not in choices:
            raise GraphValidationError(f"Requested value '{value}' was not found for property '{name}'.")
        return choices[value.lower()]
    if name == "threatType":
        choices = {c.lower(): c for c in THREAT_TYPES}
        if not isinstance(value, str) or value.lower() not in choices:
            raise GraphValidationError(f"Invalid threatType '{value}'; expected one of {', '.join(THREAT_TYPES)}.")
        return choices[value.lower()]
    if name == "targetProduct":
        if value == "Microsoft Sentinel":
            raise GraphValidationError("Invalid targetProduct 'Microsoft Sentinel'; specify 'Azure Sentinel'.")
        if value not in TARGET_PRODUCTS:
            raise GraphValidationError(f"Invalid targetProduct '{value}'.")
        return value
    if name == "url" and isinstance(value, str) and len(value) > MAX_URL:
        raise GraphValidationError("'url' must comply with RFC 1738")
    if name == "description":
        if not isinstance(value, str):
            raise GraphValidationError("description must be a string.")
        if len(value) > MAX_DESCRIPTION:
            raise GraphValidationError(f"description must be {MAX_DESCRIPTION} characters or less.")
        return value
    if name in INTS:
        low, high = INTS[name]
        number = _to_int(name, value)
        if not low <= number <= high:
            raise GraphValidationError(f"{name} must be between {low} and {high}.")
        return number
    if name in BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.Boolean for property '{name}'.")
    if name in DATETIMES:
        return normalize_datetime(name, value)
    if name in STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise GraphValidationError(f"{name} must be a collection of strings.")
        return list(value)
    if isinstance(value, bool | int | float):
        return str(value)
    if not isinstance(value, str):
        raise GraphValidationError(f"Cannot convert the value of property '{name}' to Edm.String.")
    return value


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.Int32 for property '{name}'.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise GraphValidationError(f"Cannot convert '{value}' to Edm.Int32 for property '{name}'.")


def normalize_datetime(name: str, value: Any) -> str:
    """Parse an ISO 8601 date-time (``Z``, ``+00:00`` or ``+0000``) and render it as Graph does (UTC, ``Z``)."""
    if not isinstance(value, str):
        raise GraphValidationError(f"Cannot convert the value of '{name}' to Edm.DateTimeOffset.")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    else:
        text = _OFFSET_RE.sub(lambda m: f"{m[1]}{m[2]}:{m[3]}", text)
    # Python's parser stops at 6 fractional digits; Graph writes 7 (ticks).
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise GraphValidationError(f"Cannot convert '{value}' to Edm.DateTimeOffset for property '{name}'.") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    parsed = parsed.astimezone(dt.UTC)
    if parsed.microsecond:
        return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond:06d}0Z"
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------- $filter: eq/ne with and/or and parentheses
_TOKEN_RE = re.compile(r"\s*(?:(\()|(\))|'((?:[^']|'')*)'|([A-Za-z_][A-Za-z0-9_]*)|(-?\d+))")


def parse_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile an OData ``$filter`` of ``prop eq 'v'`` terms joined by ``and``/``or`` into a predicate.

    Raises:
        GraphValidationError: the expression uses anything else.
    """
    tokens: list[tuple[str, Any]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise GraphValidationError(f"Invalid $filter near '{text[position:position + 20]}'.")
        position = match.end()
        if match[1]:
            tokens.append(("(", None))
        elif match[2]:
            tokens.append((")", None))
        elif match[3] is not None:
            tokens.append(("str", match[3].replace("''", "'")))
        elif match[4]:
            word = match[4]
            if word in ("true", "false"):
                tokens.append(("lit", word == "true"))
            elif word == "null":
                tokens.append(("lit", None))
            else:
                tokens.append(("word", word))
        else:
            tokens.append(("lit", int(match[5])))
    parser = _FilterParser(tokens)
    predicate = parser.expression()
    if parser.position != len(tokens):
        raise GraphValidationError("Invalid $filter: unexpected trailing tokens.")
    return predicate


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> tuple[str, Any]:
        token = self._peek()
        if token is None:
            raise GraphValidationError("Invalid $filter: unexpected end of expression.")
        self.position += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token == ("word", word):
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
        kind, value = self._next()
        if kind == "(":
            inner = self.expression()
            if self._next()[0] != ")":
                raise GraphValidationError("Invalid $filter: missing ')'.")
            return inner
        if kind != "word" or value not in PROPERTIES:
            raise GraphValidationError(f"Invalid $filter: '{value}' is not a tiIndicator property.")
        prop = value
        op_kind, op = self._next()
        if op_kind != "word" or op not in ("eq", "ne"):
            raise GraphValidationError(f"Invalid $filter: operator '{op}' is not supported.")
        literal_kind, literal = self._next()
        if literal_kind not in ("str", "lit"):
            raise GraphValidationError("Invalid $filter: expected a literal.")
        if op == "eq":
            return lambda item: item.get(prop) == literal
        return lambda item: item.get(prop) != literal


def _entity(indicator: dict[str, Any], issued: IssuedToken) -> dict[str, Any]:
    """The entity Graph stores for a validated indicator: defaults, the caller's fields, a fresh id and stamps."""
    entity = {name: ([] if name in STRING_LISTS else None) for name in PROPERTIES}
    entity.update({"isActive": True, "passiveOnly": False, "severity": 3})
    entity.update(indicator)
    entity.update({"id": str(uuid.uuid4()), "azureTenantId": issued.tenant_id, "ingestedDateTime": _now_iso()})
    return entity


def _matches(predicate: Callable[[dict[str, Any]], bool], item: dict[str, Any]) -> bool:
    try:
        return bool(predicate(item))
    except Exception:  # a predicate that cannot read this item simply does not match it
        return False


# --------------------------------------------------------------------- response helpers
def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Graph error body: ``{"error": {"code", "message", "innerError": {...}}}``."""
    return Response(
        status,
        {"error": {"code": code, "message": message,
                   "innerError": {"request-id": str(uuid.uuid4()), "date": _now_iso(),
                                  "client-request-id": str(uuid.uuid4())}}},
        headers or {},
    )


def too_many_requests(retry_after: int | None) -> Response:
    """Graph's documented throttling answer (concepts/throttling.md)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Response(
        429,
        {"error": {"code": "TooManyRequests", "message": "Please retry again later.",
                   "innerError": {"code": "429", "date": _now_iso(), "message": "Please retry after",
                                  "request-id": str(uuid.uuid4()), "status": "429"}}},
        headers,
    )


_FAULT_CODES = {500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


def _fault_response(fault: _Fault) -> Response:
    if fault.status == 429:
        return too_many_requests(fault.retry_after)
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return graph_error(fault.status, _FAULT_CODES.get(fault.status, "UnknownError"), "Simulated failure.", headers)


def _item_error(failed_id: str, external_id: Any, exc: GraphValidationError) -> dict[str, Any]:
    # Invented shape (the 206 per-item body is undocumented): the error sits at the failing item's index.
    return {"id": failed_id, "externalId": external_id, "Error": {"code": exc.code, "message": str(exc)}}


def _result_info(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "subcode": 0}


def _not_found(indicator_id: str) -> Response:
    return graph_error(404, "NotFound", f"Indicator {indicator_id} was not found.")


def _method_not_allowed() -> Response:
    return graph_error(405, "Request_BadRequest", "The HTTP method is not allowed for this resource.")


def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphValidationError("The body provided had an error during serialization.") from exc
    if not isinstance(body, dict):
        raise GraphValidationError("The body provided had an error during serialization.")
    return body


def _batch(request: Request) -> list[Any]:
    values = _json_object(request).get("value")
    if not isinstance(values, list):
        raise GraphValidationError("The body must hold a 'value' collection.")
    if len(values) > MAX_BATCH:
        raise GraphValidationError(f"There's a limit of {MAX_BATCH} tiIndicators per request.")
    return values


def _count_items(request: Request) -> int:
    if request.method == "GET":
        return 0
    if request.method == "DELETE":
        return 1
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return 0
    if isinstance(body, dict) and isinstance(body.get("value"), list):
        return len(body["value"])
    return 1


def _encode_skiptoken(offset: int) -> str:
    raw = json.dumps({"o": offset, "n": secrets.token_hex(4)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_skiptoken(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        return int(json.loads(base64.urlsafe_b64decode(padded))["o"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GraphValidationError("Invalid $skiptoken.") from exc


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

"""The Defender indicators service: import, list, delete, BatchDelete, rate limits and test knobs over a dict."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators import odata
from simulators.defender.knobs import Fault, ItemRule, LoggedRequest, matches, take_rule
from simulators.defender.schema import (
    CAPACITY,
    CONTEXT,
    DEFENDER_AUDIENCE,
    FILE_TYPES,
    MAX_BATCH_DELETE,
    MAX_DESCRIPTION,
    MAX_IMPORT,
    MAX_TITLE,
    MAX_TOP,
    PREFIX,
    READ_WRITE,
    READ_WRITE_ALL,
    DefenderRequestError,
    ItemError,
    check_value,
    epoch,
    iso,
    validate_schema,
)
from simulators.defender.wire import (
    api_of,
    count_items,
    error,
    fault_response,
    json_object,
    parse_filter,
    public,
)
from simulators.mslogin import IssuedToken, LoginService
from simulators.server import Request, Response


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
    _faults: list[Fault] = field(default_factory=list)
    _item_faults: list[ItemRule] = field(default_factory=list)
    _drops: list[ItemRule] = field(default_factory=list)
    _windows: dict[tuple[str, str, int], deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # ----------------------------------------------------------------- knobs and views for tests
    def grant(self, client_id: str, permission: str | None) -> None:
        """Give an app ``Ti.ReadWrite`` (its own indicators), ``Ti.ReadWrite.All`` (all), or None (403)."""
        if permission not in (READ_WRITE, READ_WRITE_ALL, None):
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self.permissions[client_id] = permission

    def inject(
        self,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        path_contains: str | None = None,
        processed: bool = False,
    ) -> None:
        """Answer the next ``count`` authenticated requests (whose path contains ``path_contains``) with ``status``.

        ``processed=True`` carries the request out first and then answers the error (a gateway timeout after the
        service committed).
        """
        with self._lock:
            self._faults.append(Fault(status, count, retry_after, path_contains, processed))

    def fail_items(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int | None = None,
        reason: str = "Simulated internal error; try again later.",
    ) -> None:
        """Fail imported items matching ``predicate`` (it sees the item as sent) with ``isFailed`` and ``reason``,
        ``count`` times in all (None: always). Only items that pass validation reach this check."""
        with self._lock:
            self._item_faults.append(ItemRule(predicate, count, reason))

    def drop_acknowledged(self, predicate: Callable[[dict[str, Any]], bool], count: int | None = None) -> None:
        """Answer matching imported items as successes (with an id) while storing nothing and changing nothing."""
        with self._lock:
            self._drops.append(ItemRule(predicate, count))

    def clear_faults(self) -> None:
        """Drop every pending ``inject``, ``fail_items`` and ``drop_acknowledged``."""
        with self._lock:
            self._faults.clear()
            self._item_faults.clear()
            self._drops.clear()

    def remove(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Delete every stored indicator (any app) matching ``predicate``, as an analyst would; returns how many."""
        with self._lock:
            doomed = [k for k, v in self.indicators.items() if matches(predicate, dict(v))]
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
        # The budget counts a request when it arrives, as a service's front door does, not when this simulator's
        # one lock lets it through (requests that arrive together would otherwise count late, and out of order).
        arrived = self.clock()
        with self._lock:
            response, items, client_id = self._handle(request, arrived)
            self.requests.append(LoggedRequest(request.method, request.path, items, response.status, client_id))
            return response

    def _handle(self, request: Request, arrived: float) -> tuple[Response, int, str | None]:
        items = count_items(request)
        issued = self.login.authenticate(request, DEFENDER_AUDIENCE)
        if isinstance(issued, Response):
            return error(401, "Unauthorized", "Authorization has been denied for this request."), items, None
        permission = self.permissions.get(issued.client_id, READ_WRITE)
        if permission is None:
            return (
                error(403, "Forbidden", "The application does not have Ti.ReadWrite or Ti.ReadWrite.All."),
                items,
                issued.client_id,
            )
        api = api_of(request)
        limited = self._rate_limited(issued.client_id, api, arrived)
        if limited is not None:
            return limited, items, issued.client_id
        fault = self._take_fault(request.path)
        if fault is not None and not fault.processed:
            return fault_response(fault.status, fault.retry_after), items, issued.client_id
        self._expire()
        try:
            response = self._route(api, request, issued, permission == READ_WRITE_ALL)
        except DefenderRequestError as exc:
            response = error(exc.status, exc.code, str(exc))
        if fault is not None:
            return fault_response(fault.status, fault.retry_after), items, issued.client_id
        return response, items, issued.client_id

    def _route(self, api: str, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        rest = request.path[len(PREFIX) :].strip("/")
        routes: dict[tuple[str, str], Callable[[Request, IssuedToken, bool], Response]] = {
            ("import", "POST"): self._import,
            ("batchdelete", "POST"): self._batch_delete,
            ("list", "GET"): self._list,
            ("submit", "POST"): self._submit,
        }
        handler = routes.get((api, request.method))
        if handler is not None:
            return handler(request, issued, sees_all)
        if api == "delete" and request.method == "DELETE" and "/" not in rest:
            return self._delete(rest, issued, sees_all)
        return error(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}.")

    # ----------------------------------------------------------------- throttling, faults, expiry
    def _rate_limited(self, client_id: str, api: str, now: float) -> Response | None:
        limits = (self.rate_limits or {}).get(api)
        if not limits:
            return None
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
            return error(
                429,
                "TooManyRequests",
                f"Rate limit is exceeded. Try again in {seconds} seconds.",
                {"Retry-After": str(seconds)},
            )
        for index in range(len(limits)):  # only admitted calls count, so a client that waits as told gets in
            bisect.insort(self._windows[(client_id, api, index)], now)  # arrivals may take the lock out of order
        return None

    def _take_fault(self, path: str) -> Fault | None:
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
            if (
                self.tenants.get(indicator_id) == tenant
                and stored["indicatorType"] == indicator_type
                and stored["indicatorValue"].lower() == value.lower()
            ):
                return stored
        return None

    # ----------------------------------------------------------------- import and submit
    def _import(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        body = json_object(request)
        items = body.get("Indicators")
        if not isinstance(items, list):
            raise DefenderRequestError("The Indicators list is required.", "MissingRequiredParameter")
        if not items:
            raise DefenderRequestError("The Indicators list is empty.", "InvalidRequestBody")
        if len(items) > MAX_IMPORT:
            raise DefenderRequestError(
                f"Maximum batch size exceeded. Received: {len(items)}, allowed: {MAX_IMPORT}",
                "MaximumBatchSizeExceeded",
            )
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
            results.append(
                {"id": stored["id"], "indicator": stored["indicatorValue"], "isFailed": False, "failureReason": None}
            )
        return Response(
            200,
            {
                "@odata.context": "https://api.security.microsoft.com/api/$metadata"
                "#Collection(microsoft.windowsDefenderATP.api.ImportIndicatorResult)",
                "value": results,
            },
        )

    def _submit(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        body = json_object(request)
        try:
            stored = self._upsert(validate_schema(body), body, issued, sees_all)
        except ItemError as exc:
            raise DefenderRequestError(str(exc)) from exc
        return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **public(stored)})

    def _upsert(
        self, indicator: dict[str, Any], item: dict[str, Any], issued: IssuedToken, sees_all: bool
    ) -> dict[str, Any]:
        now = self.clock()
        self._validate_values(indicator, now)
        rule = take_rule(self._item_faults, item)
        if rule is not None:
            raise ItemError(rule.reason)
        existing = self._by_key(issued.tenant_id, indicator["indicatorType"], indicator["indicatorValue"])
        if existing is not None and not sees_all and existing["createdBy"] != issued.client_id:
            raise ItemError(
                "An indicator with this type and value already exists and was created by another application."
            )
        if existing is None and self._live_count(issued.tenant_id) >= self.capacity:
            raise ItemError(
                f"The tenant has reached the limit of {self.capacity} active indicators; the maximum "
                "cannot be exceeded."
            )
        dropped = take_rule(self._drops, item) is not None
        stamp = iso(now)
        if existing is not None:
            entity = dict(existing) if dropped else existing
            changes = {k: v for k, v in indicator.items() if k != "application"}  # "only applies to new indicators"
            entity.update(changes)
            entity.update({"lastUpdateTime": stamp, "lastUpdatedBy": issued.client_id})
            entity["_expires"] = epoch(entity.get("expirationTime"))
            return entity
        entity = {
            "id": str(self._next_id),
            "indicatorValue": None,
            "indicatorType": None,
            "action": None,
            "application": None,
            "source": issued.client_id,
            "sourceType": "AadApp",
            "createdBy": issued.client_id,
            "createdBySource": issued.client_id,
            "createdByDisplayName": f"app {issued.client_id}",
            "severity": "Informational",
            "title": None,
            "description": None,
            "recommendedActions": None,
            "creationTimeDateTimeUtc": stamp,
            "expirationTime": None,
            "lastUpdateTime": stamp,
            "lastUpdatedBy": None,
            "rbacGroupNames": [],
            "rbacGroupIds": [],
            "generateAlert": False,
            "educateUrl": None,
            "externalID": None,
        }
        entity.update(indicator)
        entity["_expires"] = epoch(indicator.get("expirationTime"))
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
        expires = epoch(indicator.get("expirationTime"))
        if expires is not None and expires <= now:  # UNCONFIRMED: refused rather than stored and expired at once
            raise ItemError("InvalidInput: expirationTime must be in the future.")

    # ----------------------------------------------------------------- list
    def _list(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        try:
            top, skip = odata.paging_options(request.query_one("$top") or None, request.query_one("$skip") or None)
        except odata.ODataError as exc:
            raise DefenderRequestError(str(exc)) from exc
        top = MAX_TOP if top is None else top
        skip = skip or 0
        if not 0 < top <= MAX_TOP:
            raise DefenderRequestError(f"$top must be between 1 and {MAX_TOP}.")
        if skip < 0:
            raise DefenderRequestError("$skip must not be negative.")
        filter_text = request.query_one("$filter")
        predicate = parse_filter(filter_text) if filter_text else (lambda _item: True)
        rows = [
            v for k, v in self.indicators.items() if self._visible(k, issued, sees_all) is not None and predicate(v)
        ]
        # $top bounds the whole answer (OData); a page holds at most page_size and links to the rest of it.
        size = min(top, self.page_size)
        page = rows[skip : skip + size]
        body: dict[str, Any] = {"@odata.context": CONTEXT, "value": [public(r) for r in page]}
        if len(page) == size and top > size and skip + size < len(rows):
            host = request.header("Host") or "api.security.microsoft.com"
            body["@odata.nextLink"] = odata.next_link(
                host, PREFIX, request.query, ("$skip", "$top"), {"$top": str(top - size), "$skip": str(skip + size)}
            )
        return Response(200, body)

    # ----------------------------------------------------------------- delete
    def _delete(self, indicator_id: str, issued: IssuedToken, sees_all: bool) -> Response:
        if self._visible(indicator_id, issued, sees_all) is None:
            return error(404, "NotFound", f"Indicator {indicator_id} was not found.")
        self._delete_stored(indicator_id)
        return Response(204)

    def _batch_delete(self, request: Request, issued: IssuedToken, sees_all: bool) -> Response:
        ids = json_object(request).get("IndicatorIds")
        if not isinstance(ids, list) or not ids:
            raise DefenderRequestError("IndicatorIds is required and must not be empty.", "MissingRequiredParameter")
        if len(ids) > MAX_BATCH_DELETE:
            raise DefenderRequestError(
                f"Maximum batch size exceeded. Received: {len(ids)}, allowed: {MAX_BATCH_DELETE}",
                "MaximumBatchSizeExceeded",
            )
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

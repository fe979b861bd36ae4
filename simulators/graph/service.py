"""The Graph tiIndicators service: CRUD, the four bulk actions, paging, throttling and test knobs over a dict."""

from __future__ import annotations

import bisect
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulators import odata
from simulators.graph.schema import (
    CONTEXT,
    DEFAULT_PAGE_SIZE,
    FAILED_CREATE_ID,
    FAILED_UPDATE_ID,
    MAX_SKIP,
    MAX_TOP,
    PREFIX,
    PROPERTIES,
    RESULT_INFO_CONTEXT,
    STRING_LISTS,
    GraphValidationError,
    validate_new,
    validate_update,
)
from simulators.graph.wire import (
    batch_values,
    count_items,
    decode_skiptoken,
    encode_skiptoken,
    fault_response,
    graph_error,
    item_error,
    json_object,
    method_not_allowed,
    not_found,
    now_iso,
    parse_filter,
    result_info,
    too_many_requests,
)
from simulators.mslogin import GRAPH_AUDIENCE, IssuedToken, LoginService
from simulators.server import Request, Response


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
        as a permanent rejection of the content, ``""`` leaves the ``Error`` element out (the refusal text as the id
        only, as seen in the field). Only items that pass validation reach this check.
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
        # The budget counts a request when it arrives, as a service's front door does, not when this simulator's
        # one lock lets it through (requests that arrive together would otherwise count late, and out of order).
        at = self.clock()
        with self._lock:
            response, items, client_id = self._handle(request, at)
            self.requests.append(LoggedRequest(request.method, request.path, items, response.status, client_id, at))
            return response

    def _handle(self, request: Request, now: float) -> tuple[Response, int, str | None]:
        items = count_items(request)
        issued = self.login.authenticate(request, GRAPH_AUDIENCE)
        if isinstance(issued, Response):
            return issued, items, None
        limited = self._rate_limited(issued.client_id, now)
        if limited is not None:
            return limited, items, issued.client_id
        fault = self._take_fault(request.path)
        if fault is not None and not fault.processed:
            return fault_response(fault.status, fault.retry_after), items, issued.client_id
        try:
            response = self._route(request, issued)
        except GraphValidationError as exc:
            response = graph_error(400, exc.code, str(exc))
        if fault is not None:
            return fault_response(fault.status, fault.retry_after), items, issued.client_id
        return response, items, issued.client_id

    def _route(self, request: Request, issued: IssuedToken) -> Response:
        rest = request.path[len(PREFIX) :].strip("/")
        method = request.method
        if not rest:
            if method == "GET":
                return self._list(request, issued)
            if method == "POST":
                return self._create(request, issued)
            return method_not_allowed()
        # Graph accepts both the bare and the namespace-qualified action segment.
        action = rest.removeprefix("microsoft.graph.")
        actions = {
            "submitTiIndicators": self._submit,
            "updateTiIndicators": self._update_many,
            "deleteTiIndicators": self._delete_many,
            "deleteTiIndicatorsByExternalId": self._delete_by_external_id,
        }
        if action in actions:
            if method != "POST":
                return method_not_allowed()
            return actions[action](request, issued)
        if "/" in rest:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[-1]}'.")
        if method == "GET":
            return self._get(rest, request, issued)
        if method == "PATCH":
            return self._patch(rest, request, issued)
        if method == "DELETE":
            return self._delete(rest, issued)
        return method_not_allowed()

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
        bisect.insort(window, now)  # arrivals may take the lock out of order
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
        body = json_object(request)
        stored = self._store(validate_new(body), issued)
        return Response(201, {"@odata.context": f"{CONTEXT}/$entity", **stored})

    def _get(self, indicator_id: str, request: Request, issued: IssuedToken) -> Response:
        stored = self._visible(indicator_id, issued)
        if stored is None:
            return not_found(indicator_id)
        return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **stored})

    def _patch(self, indicator_id: str, request: Request, issued: IssuedToken) -> Response:
        stored = self._visible(indicator_id, issued)
        if stored is None:
            return not_found(indicator_id)
        body = json_object(request)
        stored.update(validate_update(body, stored))
        if "return=representation" in (request.header("Prefer") or ""):
            return Response(200, {"@odata.context": f"{CONTEXT}/$entity", **stored})
        return Response(204)

    def _delete(self, indicator_id: str, issued: IssuedToken) -> Response:
        if self._visible(indicator_id, issued) is None:
            return not_found(indicator_id)
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
        filter_text = request.query_one("$filter")
        token = request.query_one("$skiptoken")
        try:
            top, skip = odata.paging_options(request.query_one("$top"), request.query_one("$skip"))
        except odata.ODataError as exc:
            raise GraphValidationError(str(exc)) from exc
        skip = skip or 0
        if top is not None and not 0 < top <= MAX_TOP:
            raise GraphValidationError(f"$top must be between 1 and {MAX_TOP}.")
        if not 0 <= skip <= MAX_SKIP:
            raise GraphValidationError(f"$skip must be between 0 and {MAX_SKIP}.")
        predicate = parse_filter(filter_text) if filter_text else (lambda _item: True)
        offset = decode_skiptoken(token) if token else skip
        rows = [v for k, v in self.indicators.items() if self.owners.get(k) == issued.client_id and predicate(v)]
        size = top or self.page_size
        page = rows[offset : offset + size]
        body: dict[str, Any] = {"@odata.context": CONTEXT, "value": [dict(r) for r in page]}
        if offset + size < len(rows):
            host = request.header("Host") or "graph.microsoft.com"
            body["@odata.nextLink"] = odata.next_link(
                host, PREFIX, request.query, ("$skiptoken", "$skip"), {"$skiptoken": encode_skiptoken(offset + size)}
            )
        return Response(200, body)

    # ----------------------------------------------------------------- bulk actions
    def _submit(self, request: Request, issued: IssuedToken) -> Response:
        values = batch_values(request)
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
                results.append(item_error(FAILED_CREATE_ID, external_id, exc))
                continue
            stored = _entity(indicator, issued) if self._dropped(item) else self._store(indicator, issued)
            results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored})
        return Response(206 if failed else 200, {"@odata.context": f"{CONTEXT}", "value": results})

    def _update_many(self, request: Request, issued: IssuedToken) -> Response:
        values = batch_values(request)
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
                results.append(item_error(FAILED_UPDATE_ID, external_id, exc))
                continue
            if self._dropped(item):
                results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored, **changes})
                continue
            stored.update(changes)
            results.append({"@odata.type": "#microsoft.graph.tiIndicator", **stored})
        return Response(206 if failed else 200, {"@odata.context": f"{CONTEXT}", "value": results})

    def _delete_many(self, request: Request, issued: IssuedToken) -> Response:
        results = []
        for indicator_id in batch_values(request):
            if isinstance(indicator_id, str) and self._visible(indicator_id, issued) is not None:
                self._remove(indicator_id)
                results.append(result_info(0, "Deleted"))
            else:
                results.append(result_info(404, f"Indicator {indicator_id} was not found."))
        failed = any(r["code"] != 0 for r in results)
        return Response(206 if failed else 200, {"@odata.context": RESULT_INFO_CONTEXT, "value": results})

    def _delete_by_external_id(self, request: Request, issued: IssuedToken) -> Response:
        results = []
        for external_id in batch_values(request):
            matches = [
                k
                for k, v in self.indicators.items()
                if v.get("externalId") == external_id and self.owners.get(k) == issued.client_id
            ]
            for indicator_id in matches:
                self._remove(indicator_id)
            if matches:
                results.append(result_info(0, f"Deleted {len(matches)} indicator(s)"))
            else:
                results.append(result_info(404, f"No indicator with externalId {external_id} was found."))
        failed = any(r["code"] != 0 for r in results)
        return Response(206 if failed else 200, {"@odata.context": RESULT_INFO_CONTEXT, "value": results})


def _entity(indicator: dict[str, Any], issued: IssuedToken) -> dict[str, Any]:
    """The entity Graph stores for a validated indicator: defaults, the caller's fields, a fresh id and stamps."""
    entity = {name: ([] if name in STRING_LISTS else None) for name in PROPERTIES}
    entity.update({"isActive": True, "passiveOnly": False, "severity": 3})
    entity.update(indicator)
    entity.update({"id": str(uuid.uuid4()), "azureTenantId": issued.tenant_id, "ingestedDateTime": now_iso()})
    return entity


def _matches(predicate: Callable[[dict[str, Any]], bool], item: dict[str, Any]) -> bool:
    try:
        return bool(predicate(item))
    except Exception:  # a predicate that cannot read this item simply does not match it
        return False

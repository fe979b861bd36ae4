"""Defender for Endpoint ``/api/indicators``: import, list, delete, BatchDelete, over the shared transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from include.pipeline.errors import PermanentError
from include.transport.http import (
    BearerAuth,
    RequestBudget,
    RetryPolicy,
    TokenSource,
    Transport,
    TransportClient,
    TransportError,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.security.microsoft.com"
#: Hosts that serve the same API (the regional ones are faster near their region; the last is the older name).
DEFENDER_HOSTS = (
    DEFAULT_HOST,
    "https://us.api.security.microsoft.com",
    "https://eu.api.security.microsoft.com",
    "https://uk.api.security.microsoft.com",
    "https://au.api.security.microsoft.com",
    "https://swa.api.security.microsoft.com",
    "https://ina.api.security.microsoft.com",
    "https://api.securitycenter.microsoft.com",
)
DEFENDER_SCOPE = "https://api.securitycenter.microsoft.com/.default"
INDICATORS_PATH = "/api/indicators"
MAX_IMPORT = 500  # "Maximum batch size for one API call is 500"
MAX_BATCH_DELETE = 500
MAX_TOP = 10_000
MAX_PAGES = 100  # 15,000 indicators per tenant fit in two pages of 10,000; anything near 100 is a paging loop
#: Defender's import allows 30 calls a minute per app (and 100 a minute for the other indicator calls); the margin
#: absorbs the gap between admission here and arrival. A Connection's ``requests_per_minute`` overrides it.
DEFAULT_REQUESTS_PER_MINUTE = 28
#: Imports waiting for their answers at once: an import of 500 can take Defender seconds, longer than the 2 s
#: between two of 28 a minute. A Connection's ``max_in_flight`` overrides it.
DEFAULT_IN_FLIGHT = 2
#: Answers about the caller or the address; no retry fixes them (404 only where it does not mean "already gone").
PERMANENT_STATUSES = frozenset({401, 403, 404, 405})


class DefenderError(RuntimeError):
    """Defender answered an error (after the bounded retries), or could not be reached.

    Attributes:
        status: the HTTP status, or None when the service could not be reached.
        code: Defender's ``error.code`` when the body had one.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DefenderPermanentError(DefenderError, PermanentError):
    """Defender refused the caller or the address (401 after a fresh token, 403, 404 on a path that must exist)."""


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes, embedded quotes doubled (OpenCTI #7272)."""
    return "'" + value.replace("'", "''") + "'"


class DefenderClient(TransportClient):
    """Defender for Endpoint's indicator API with one retry layer and an optional shared request budget.

    429 waits ``Retry-After`` (seconds or an HTTP date; exponential back-off when absent) and pauses the shared
    limiter for every process of the identity; 5xx and connection errors back off exponentially; both at most
    ``max_retries`` times. A 401 refreshes the token once. Import is an upsert on (type, value), so every request
    here may be resent safely.

    Args:
        base_url: one of :data:`DEFENDER_HOSTS` (or a simulator).
        token_provider: a token source for :data:`DEFENDER_SCOPE`.
        client_id: the app's client id, which Defender records as ``createdBy`` (``list_own`` filters on it).
        session: a ``requests`` session (tests pass their own).
        max_retries: retries per request after 429/5xx/network errors.
        backoff: the first back-off in seconds (doubling).
        timeout: seconds per HTTP request.
        sleep: the waiting function (tests pass a fake clock's).
        limiter: the shared budget (import allows 30 calls a minute per app).
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenSource,
        client_id: str | None = None,
        session: requests.Session | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RequestBudget | None = None,
    ) -> None:
        self.base_url = (base_url or DEFAULT_HOST).rstrip("/")
        self.token_provider = token_provider
        self.client_id = client_id
        self.transport = Transport(
            session,
            BearerAuth(token_provider),
            limiter,
            RetryPolicy(max_retries=max_retries, backoff=backoff),
            timeout,
            sleep,
            "Defender",
        )

    @property
    def indicators_url(self) -> str:
        return self.base_url + INDICATORS_PATH

    # ----------------------------------------------------------------- operations
    def import_indicators(self, indicators: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/indicators/import``: create or update up to 500 indicators.

        Returns:
            One result per indicator, ``{"id", "indicator", "isFailed", "failureReason"}``, in the order sent.

        Raises:
            ValueError: more than 500 indicators.
            DefenderError: the request failed as a whole (status 400 when Defender refused its body).
        """
        if len(indicators) > MAX_IMPORT:
            raise ValueError(f"import takes at most {MAX_IMPORT} indicators, got {len(indicators)}")
        if not indicators:
            return []
        body = self._json("POST", f"{self.indicators_url}/import", {"Indicators": list(indicators)})
        results = body.get("value") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise DefenderError("import answered without a 'value' list", 200)
        return align_results(indicators, results)

    def list_indicators(self, filter_text: str | None = None, top: int = MAX_TOP) -> Iterator[dict[str, Any]]:
        """``GET /api/indicators``: every indicator matching ``filter_text`` that this app may see.

        Follows ``@odata.nextLink``; when a full page comes without one, asks for the next ``$skip``. Refuses to loop:
        a repeated link or a page of only already-seen ids ends in :class:`DefenderError`.
        """
        if not 0 < top <= MAX_TOP:
            raise ValueError(f"top must be between 1 and {MAX_TOP}")
        params: dict[str, str] | None = {"$top": str(top)}
        if filter_text:
            params["$filter"] = filter_text
        url, skip = self.indicators_url, 0
        seen_links: set[str] = set()
        seen_ids: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self._json("GET", url, params=params)
            items = page.get("value") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise DefenderError("listing answered without a 'value' list", 200)
            fresh = [i for i in items if isinstance(i, dict) and str(i.get("id")) not in seen_ids]
            if items and not fresh:
                raise DefenderError("listing repeated a page it had already served")
            seen_ids.update(str(i.get("id")) for i in fresh)
            yield from fresh
            next_link = page.get("@odata.nextLink")
            if next_link:
                if next_link in seen_links:
                    raise DefenderError("listing repeated an @odata.nextLink")
                seen_links.add(next_link)
                url, params = next_link, None
            elif params is not None and len(items) >= top:
                # No link but a full page: the server may cap at $top without linking on (OData's $top/$skip).
                skip += len(items)
                params = {**params, "$skip": str(skip)}
            else:
                return
        raise DefenderError(f"listing exceeded {MAX_PAGES} pages")

    def list_own(self) -> list[dict[str, Any]]:
        """Every indicator this app created: ``$filter=createdBy eq '<client id>'``.

        With ``Ti.ReadWrite`` Defender shows an app only its own anyway; with ``Ti.ReadWrite.All`` the filter is what
        keeps other sources' indicators out. That ``createdBy`` holds the client id for app-created indicators is
        what OpenCTI's Defender synchronizer relies on (UNCONFIRMED in Microsoft's docs), so the answer is checked
        again here: an item whose ``createdBy`` names someone else is dropped.
        """
        if not self.client_id:
            raise ValueError("list_own needs the client id")
        listed = self.list_indicators(f"createdBy eq {odata_quote(self.client_id)}")
        return [i for i in listed if str(i.get("createdBy") or self.client_id).lower() == self.client_id.lower()]

    def batch_delete(self, indicator_ids: Sequence[str]) -> bool:
        """``POST /api/indicators/BatchDelete``: True when every id was deleted (204), False on 404 ("some id was
        not found"; whether the others were deleted then is UNCONFIRMED: list again to know).

        Raises:
            ValueError: more than 500 ids.
            DefenderError: any other failure (400: an empty list or an invalid id; 403: the app may not see them).
        """
        if len(indicator_ids) > MAX_BATCH_DELETE:
            raise ValueError(f"BatchDelete takes at most {MAX_BATCH_DELETE} ids, got {len(indicator_ids)}")
        if not indicator_ids:
            return True
        response = self._send("POST", f"{self.indicators_url}/BatchDelete", {"IndicatorIds": list(indicator_ids)})
        if response.status_code == 404:
            return False
        self._raise_for(response, "POST", "BatchDelete")
        return True

    def delete(self, indicator_id: str) -> bool:
        """``DELETE /api/indicators/{id}``: True when deleted, False when Defender no longer held it (404)."""
        response = self._send("DELETE", f"{self.indicators_url}/{indicator_id}")
        if response.status_code == 404:
            return False
        self._raise_for(response, "DELETE", f"{INDICATORS_PATH}/{{id}}")
        return True

    # ----------------------------------------------------------------- transport
    def _json(self, method: str, url: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        response = self._send(method, url, body, params)
        self._raise_for(response, method, urlsplit(url).path)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise DefenderError(f"{method} {urlsplit(url).path} answered non-JSON", response.status_code) from exc

    def _raise_for(self, response: requests.Response, method: str, path: str) -> None:
        status = response.status_code
        if status < 400:
            return
        code, message = _error_of(response)
        text = f"{method} {path} answered HTTP {status} {code or ''}: {message}".replace("  ", " ")
        error = DefenderPermanentError if status in PERMANENT_STATUSES else DefenderError
        raise error(text, status, code)

    def _send(self, method: str, url: str, body: Any = None, params: dict[str, str] | None = None) -> requests.Response:
        """One logical request through the transport (every Defender call may be resent: import is an upsert)."""
        try:
            return self.transport.send(method, url, params=params, json=body)
        except TransportError as exc:
            raise DefenderError(str(exc)) from exc.__cause__ or exc


def align_results(sent: Sequence[Mapping[str, Any]], results: Sequence[Any]) -> list[dict[str, Any]]:
    """One import result per sent indicator, in order.

    The docs promise one result per item and show them in order; each is also checked against its ``indicator``
    value. When the order does not hold, results are matched by value; an indicator with no result of its own gets
    a failed placeholder (``failureReason`` says so), which the sink treats as transient.
    """
    values = [str(item.get("indicatorValue", "")).lower() for item in sent]
    answered = [r for r in results if isinstance(r, Mapping)]
    if len(answered) == len(sent) and all(
        r.get("indicator") in (None, "") or str(r.get("indicator")).lower() == v
        for r, v in zip(answered, values, strict=True)
    ):
        return [dict(r) for r in answered]
    pool: dict[str, list[Mapping[str, Any]]] = {}
    for result in answered:
        pool.setdefault(str(result.get("indicator", "")).lower(), []).append(result)
    aligned = []
    for value in values:
        matches = pool.get(value)
        aligned.append(
            dict(matches.pop(0))
            if matches
            else {"id": None, "indicator": value, "isFailed": True, "failureReason": "no result for this item"}
        )
    return aligned


def _error_of(response: requests.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, (response.text or "")[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, Mapping):
        return (str(error.get("code")) if error.get("code") else None), str(error.get("message") or "")[:300]
    return None, str(body)[:300]

"""Microsoft Graph beta ``security/tiIndicators``: the operations, over the shared transport."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

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

TI_PATH = "/beta/security/tiIndicators"
MAX_BATCH = 100  # submitTiIndicators' documented limit; used for update and delete batches too
MAX_PAGE = 1000  # $top limit of the security API's listings
MAX_URL_LENGTH = 1500  # Graph rejects URLs near 2,048 characters; stay well under
#: Graph's documented throttle for tiIndicators is 1,000 requests a minute per app and tenant; the margin absorbs
#: the gap between admission here and arrival at Microsoft. A Connection's ``requests_per_minute`` overrides it.
DEFAULT_REQUESTS_PER_MINUTE = 950
#: Writes waiting for their answers at once: a write of 100 takes Graph about a second, and one at a time would use
#: a sixteenth of the budget. A Connection's ``max_in_flight`` overrides it.
DEFAULT_IN_FLIGHT = 8
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# --------------------------------------------------------------------- pure helpers
class GraphError(RuntimeError):
    """Graph answered with an error (after retries), or could not be reached.

    Attributes:
        status: the HTTP status, or None when the service could not be reached.
        code: Graph's ``error.code`` when the body had one.
        ambiguous: the request may have been carried out even though it failed (5xx after sending, a connection
            dropped mid-request, a 206 that does not say which item failed); a submit must be reconciled, not resent.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None, ambiguous: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.ambiguous = ambiguous

    @property
    def transient(self) -> bool:
        """True when retrying later (an Airflow task retry) may succeed."""
        return self.status is None or self.status == 429 or self.status >= 500


class GraphPermanentError(GraphError, PermanentError):
    """Graph refused the request for a reason no retry fixes: credentials, permissions, a wrong URL."""


#: Whole-request answers that are about the request's content: one bad item can cause them, so a batch is split.
CONTENT_STATUSES = frozenset({400, 409, 413, 422})
#: Whole-request answers about the caller or the address: fail the task at once with Graph's message.
PERMANENT_STATUSES = frozenset({401, 403, 404, 405})
#: Per-item error codes that may pass on a resend; every other per-item error is a refusal of the item's content.
TRANSIENT_ITEM_CODES = frozenset(
    {
        "internalservererror",
        "serviceunavailable",
        "toomanyrequests",
        "gatewaytimeout",
        "badgateway",
        "timeout",
        "requesttimeout",
        "activitylimitreached",
        "generalexception",
        "unknownerror",
    }
)


def is_graph_id(value: Any) -> bool:
    """True for an id Graph assigns: a GUID (Sentinel target) or a numeric string (Defender for Endpoint)."""
    return isinstance(value, str) and (bool(_GUID_RE.match(value)) or value.isdigit())


def item_error(item: Any) -> str | None:
    """The failure message of one submit/update result item, or None when the item succeeded.

    The 206 per-item shape is undocumented: an item failed when it carries an ``Error``/``error`` key (MS's MISP
    sample) or its ``id`` is not a Graph id (``"Failed to create, check Error element for reason"``, issue #149).
    """
    if not isinstance(item, Mapping):
        return f"unexpected result item: {item!r}"[:300]
    for key in ("Error", "error"):
        error = item.get(key)
        if error:
            if isinstance(error, Mapping):
                code = error.get("code") or error.get("Code") or ""
                message = error.get("message") or error.get("Message") or ""
                return f"{code}: {message}".strip(": ") or str(dict(error))
            return str(error)
    if not is_graph_id(item.get("id")):
        return str(item.get("id") or "result item without an id")
    return None


def item_transient(item: Any) -> bool:
    """Whether a failed submit/update item may pass on a resend (a server-side code), rather than a refusal of
    its content (``BadRequest``, a validation message). An item that says nothing about why counts as transient,
    except Graph's own refusal text in place of the id ("Failed to create, check Error element for reason") without
    the element: items refused for their content have come back so, and resending them only fails the run."""
    if not isinstance(item, Mapping):
        return True
    if not any(key in item for key in ("Error", "error")) and _REFUSAL_ID.match(str(item.get("id") or "")):
        return False
    for key in ("Error", "error"):
        error = item.get(key)
        if isinstance(error, Mapping):
            code = str(error.get("code") or error.get("Code") or "").strip().lower()
            status = error.get("status") or error.get("statusCode")
            if isinstance(status, int) and (status == 429 or status >= 500):
                return True
            if isinstance(status, int) and 400 <= status < 500:
                return False
            return not code or code in TRANSIENT_ITEM_CODES
        if error:
            return False  # a bare message: Graph's validation text
    return True


_REFUSAL_ID = re.compile(r"^Failed to (create|update)\b", re.IGNORECASE)


def result_info_error(info: Any) -> str | None:
    """The failure message of one delete ``resultInfo``, or None for success (or for an id already gone)."""
    if not isinstance(info, Mapping):
        return None if info is None else f"unexpected result: {info!r}"[:300]
    code = info.get("code", 0)
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = -1
    # 404: nothing left to delete, which is what a retract wants.
    if number in (0, 200, 204, 404):
        return None
    return f"{code}: {info.get('message') or ''} (subcode {info.get('subcode', info.get('subCode'))})"


_OR = quote(" or ", safe="")
_PLAIN_ID = re.compile(r"^[A-Za-z0-9_.~-]*$")  # what URL quoting leaves as it is
_TERM_HEAD, _TERM_TAIL = quote("externalId eq '", safe=""), quote("'", safe="")


def _quoted_term(external_id: str) -> str:
    """``externalId eq '<id>'`` URL-quoted (a uuid needs no quoting of its own: the common case is built directly)."""
    if _PLAIN_ID.match(external_id):
        return _TERM_HEAD + external_id + _TERM_TAIL
    return quote(f"externalId eq {odata_quote(external_id)}", safe="")


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes, embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


class GraphClient(TransportClient):
    """Graph beta ``security/tiIndicators`` operations over one :class:`~include.transport.http.Transport`.

    Retries, ``Retry-After``, the token refresh on 401 and the shared budget are the transport's. What is Graph's:
    ``submitTiIndicators`` is not idempotent (Graph does not enforce ``externalId`` uniqueness), so it is resent
    only after answers that prove nothing was done (429, 503); other failures raise ``GraphError(ambiguous=True)``
    for the caller to reconcile by looking the ids up.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenSource,
        session: requests.Session | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RequestBudget | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.collection_url = self.base_url + TI_PATH
        self.token_provider = token_provider
        # Graph allows 1000 tiIndicator requests per minute per app and tenant: one budget for every task process.
        self.transport = Transport(
            session,
            BearerAuth(token_provider),
            limiter,
            RetryPolicy(max_retries=max_retries, backoff=backoff),
            timeout,
            sleep,
            "Graph",
        )

    # ----------------------------------------------------------------- one request
    def _json(self, method: str, url: str, body: Any = None, idempotent: bool = True) -> tuple[int, Any]:
        try:
            response = self.transport.send(method, url, json=body, idempotent=idempotent)
        except TransportError as exc:
            raise GraphError(str(exc), None, ambiguous=exc.ambiguous) from exc.__cause__ or exc
        status = response.status_code
        if status >= 400:
            code, message = _error_of(response)
            text = f"{method} {urlsplit(url).path} answered HTTP {status} {code}: {message}"
            if status in PERMANENT_STATUSES:
                raise GraphPermanentError(text, status, code)
            ambiguous = not idempotent and status >= 500 and status not in self.transport.policy.refused_statuses
            raise GraphError(text, status, code, ambiguous)
        if status == 204 or not response.content:
            return status, None
        try:
            return status, response.json()
        except ValueError as exc:
            raise GraphError(f"{method} {urlsplit(url).path} answered non-JSON (HTTP {status})", status) from exc

    def _bulk(self, action: str, values: Sequence[Any], idempotent: bool = True) -> list[Any]:
        if len(values) > MAX_BATCH:
            raise ValueError(f"{action} takes at most {MAX_BATCH} values, got {len(values)}")
        if not values:
            return []
        status, body = self._json("POST", f"{self.collection_url}/{action}", {"value": list(values)}, idempotent)
        results = (body or {}).get("value")
        if not isinstance(results, list) or len(results) != len(values):
            raise GraphError(
                f"{action} answered {len(results or [])} results for {len(values)} values", status, ambiguous=True
            )
        # Deletes answer a resultInfo per id, so their 206 always says which; submit/update items may not.
        if status == 206 and not action.startswith("delete") and not any(item_error(r) for r in results):
            # 206 says something failed; if no item says which, nothing can be trusted item by item.
            raise GraphError(f"{action} answered 206 without a failed item", status, ambiguous=True)
        return results

    # ----------------------------------------------------------------- operations
    def submit(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``submitTiIndicators``: create up to 100 indicators; one result per item, in order (check ``item_error``).

        Raises:
            GraphError: the batch failed as a whole; ``ambiguous`` when some items may have been created.
        """
        return self._bulk("submitTiIndicators", [dict(i) for i in items], idempotent=False)

    def update(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``updateTiIndicators``: update up to 100 indicators (each with ``id``); one result per item, in order."""
        return self._bulk("updateTiIndicators", [dict(i) for i in items])

    def delete_by_external_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """``deleteTiIndicatorsByExternalId`` for up to 100 external ids; one ``resultInfo`` per id, in order."""
        return self._bulk("deleteTiIndicatorsByExternalId", list(ids))

    def find_by_external_ids(self, ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The caller's indicators for these external ids, oldest first; ids without any are absent.

        Ids go into ``$filter=externalId eq 'a' or ...`` chunks that keep each URL under ``MAX_URL_LENGTH``.
        """
        found: dict[str, list[dict[str, Any]]] = {}
        for url in self._filter_urls(list(dict.fromkeys(ids))):
            for item in self._pages(url):
                external_id = item.get("externalId")
                if isinstance(external_id, str):
                    found.setdefault(external_id, []).append(item)
        for items in found.values():
            items.sort(key=lambda i: str(i.get("ingestedDateTime") or ""))
        return found

    def list_all(self) -> Iterator[dict[str, Any]]:
        """Every indicator this app owns, page by page (``@odata.nextLink``, the service's page size)."""
        yield from self._pages(self.collection_url)

    def list_pages(self) -> Iterator[list[dict[str, Any]]]:
        """Every indicator this app owns, one list per request of the largest page (``$top=1000``)."""
        yield from self._page_bodies(f"{self.collection_url}?$top={MAX_PAGE}")

    def lookup_requests(self, ids: Iterable[str]) -> int:
        """How many ``$filter`` look-ups :meth:`find_by_external_ids` sends for these ids."""
        return sum(1 for _ in self._filter_urls(list(dict.fromkeys(ids))))

    def _filter_urls(self, ids: list[str]) -> Iterator[str]:
        prefix = f"{self.collection_url}?$top=1000&$filter="
        chunk: list[str] = []
        length = len(prefix)
        for external_id in ids:
            term = _quoted_term(external_id)
            if chunk and length + len(_OR) + len(term) > MAX_URL_LENGTH:
                yield prefix + _OR.join(chunk)
                chunk, length = [], len(prefix)
            length += len(term) + (len(_OR) if chunk else 0)
            chunk.append(term)
        if chunk:
            yield prefix + _OR.join(chunk)

    def _pages(self, url: str) -> Iterator[dict[str, Any]]:
        for page in self._page_bodies(url):
            yield from page

    def _page_bodies(self, url: str) -> Iterator[list[dict[str, Any]]]:
        seen: set[str] = set()
        next_url: str | None = url
        while next_url:
            if next_url in seen:
                raise GraphError(f"paging loop: {urlsplit(next_url).path} repeated a nextLink")
            seen.add(next_url)
            _, body = self._json("GET", next_url)
            body = body or {}
            yield list(body.get("value") or [])
            next_url = body.get("@odata.nextLink")

    def find_many(self, ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """:meth:`find_by_external_ids` at the lower of two costs, chosen while reading.

        Look-ups cost one request per ~20 ids (URL length); listing what this app owns costs one request per
        1,000 indicators, whatever they are. The listing runs first and is abandoned for look-ups of the ids still
        unseen as soon as it has cost as many requests as the look-ups would: never more than twice the cheaper
        way, and one page when the app owns little (an empty target is proven by one request).
        """
        wanted = list(dict.fromkeys(ids))
        lookups = self.lookup_requests(wanted)
        if lookups <= 1:
            return self.find_by_external_ids(wanted)
        want = set(wanted)
        found: dict[str, list[dict[str, Any]]] = {}
        complete = False
        pages = 0
        for page in self.list_pages():
            pages += 1
            for item in page:
                external_id = item.get("externalId")
                if isinstance(external_id, str) and external_id in want:
                    found.setdefault(external_id, []).append(item)
            if pages >= lookups:
                break
        else:
            complete = True
        if not complete:
            found.update(self.find_by_external_ids([e for e in wanted if e not in found]))
        for items in found.values():
            items.sort(key=lambda i: str(i.get("ingestedDateTime") or ""))
        return found


def _error_of(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("message") or "")
    return "", str(body)[:200]

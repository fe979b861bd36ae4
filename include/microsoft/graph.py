"""Microsoft Graph beta ``security/tiIndicators``: an HTTP client with one retry layer, and the ``graph`` load sink."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import pandas as pd
import requests

from include.microsoft.auth import BearerAuth, TokenProvider
from include.microsoft.ratelimit import SharedRateLimiter
from include.microsoft.sink import FAILED, OK, REJECTED, SinkResult
from include.pipeline.errors import PermanentError
from include.transport.retry_after import retry_after

log = logging.getLogger(__name__)

TI_PATH = "/beta/security/tiIndicators"
MAX_BATCH = 100  # submitTiIndicators' documented limit; used for update and delete batches too
MAX_PAGE = 1000  # $top limit of the security API's listings
MAX_URL_LENGTH = 1500  # Graph rejects URLs near 2,048 characters; stay well under
MAX_RETRY_DELAY = 120.0  # cap on any single wait, whatever Retry-After says
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
# 429 and 503 mean the request was refused before any work: safe to resend even a non-idempotent submit.
REFUSED_STATUSES = frozenset({429, 503})
TARGET_PRODUCT = "Azure Sentinel"  # "Microsoft Sentinel" is rejected by Graph (connect-threat-intelligence-tip.md)
MAX_DESCRIPTION = 100
OBSERVABLE_FIELDS = (
    "networkIPv4", "networkIPv6", "networkDestinationIPv4", "networkDestinationIPv6", "networkSourceIPv4",
    "networkSourceIPv6", "domainName", "url", "emailSenderAddress", "emailRecipient", "emailSourceDomain",
    "fileHashValue",
)
HASH_TYPES = {"md5": "md5", "sha1": "sha1", "sha256": "sha256"}
# updateTiIndicators may change only these (tiindicator-updatetiindicators.md); threatType and observables are fixed.
# targetProduct is not editable but the update doc lists it as required, and the MS quickstart echoes it unchanged.
UPDATE_FIELDS = (
    "externalId", "action", "targetProduct", "tlpLevel", "confidence", "severity", "description",
    "expirationDateTime", "tags", "isActive", "additionalInformation", "lastReportedDateTime",
)
DATETIME_FIELDS = frozenset({"expirationDateTime", "lastReportedDateTime"})
_GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})$")


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
TRANSIENT_ITEM_CODES = frozenset({
    "internalservererror", "serviceunavailable", "toomanyrequests", "gatewaytimeout", "badgateway", "timeout",
    "requesttimeout", "activitylimitreached", "generalexception", "unknownerror",
})


# --------------------------------------------------------------------- pure helpers
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
    its content (``BadRequest``, a validation message). An item that says nothing about why counts as transient."""
    if not isinstance(item, Mapping):
        return True
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


def iso_utc(value: Any) -> str | None:
    """ISO 8601 in UTC with ``Z`` (microseconds only when present), or None for a missing timestamp."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if stamp.microsecond:
        text += f".{stamp.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_datetime(value: Any) -> dt.datetime | None:
    """Parse Graph's date-times (``Z``, ``+00:00``, ``+0000``, 7 fractional digits) to an aware UTC datetime."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    text = text[:-1] + "+00:00" if text.endswith("Z") else _OFFSET_RE.sub(lambda m: f"{m[1]}{m[2]}:{m[3]}", text)
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes, embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------- client
class GraphClient:
    """Graph beta ``security/tiIndicators`` over ``requests``, with one retry layer.

    429 waits ``Retry-After`` (seconds or an HTTP date), 5xx and connection errors back off exponentially, both at
    most ``max_retries`` times; a 401 refreshes the token once. ``submitTiIndicators`` is not idempotent (Graph does
    not enforce ``externalId`` uniqueness), so it is resent only after answers that prove nothing was done (429,
    503); other failures raise ``GraphError(ambiguous=True)`` for the caller to reconcile.
    """

    def __init__(
        self,
        base_url: str,
        token_provider: TokenProvider,
        session: requests.Session | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        limiter: SharedRateLimiter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Graph allows 1000 tiIndicator requests per minute per app and tenant: one budget for every task process.
        self.limiter = limiter
        self.collection_url = self.base_url + TI_PATH
        self.token_provider = token_provider
        self.session = session or requests.Session()
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.requests_sent = 0
        self._auth = BearerAuth(token_provider)

    # ----------------------------------------------------------------- transport
    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        hinted = retry_after(response) if response is not None else None
        if hinted is None:
            hinted = self.backoff * (2**attempt)
        return min(hinted, MAX_RETRY_DELAY)

    def _send(self, method: str, url: str, body: Any = None, idempotent: bool = True) -> requests.Response:
        """Send one logical request through the retry layer; returns the final response (any status)."""
        path = urlsplit(url).path
        refreshed = False
        attempt = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            self.requests_sent += 1
            try:
                response = self.session.request(method, url, json=body, auth=self._auth, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                # A connect failure means nothing was sent; anything later may have reached the service.
                sent = not isinstance(exc, requests.ConnectTimeout) and "NewConnectionError" not in repr(exc)
                if (sent and not idempotent) or attempt >= self.max_retries:
                    raise GraphError(
                        f"{method} {path} failed: {type(exc).__name__}", None, ambiguous=sent and not idempotent
                    ) from exc
                delay = self._delay(attempt, None)
                log.warning("%s %s: %s, retry %s in %.1fs", method, path, type(exc).__name__, attempt + 1, delay)
                self.sleep(delay)
                attempt += 1
                continue
            status = response.status_code
            if status == 401 and not refreshed:
                log.info("%s %s: 401, refreshing the token once", method, path)
                invalidate = getattr(self.token_provider, "invalidate", None)
                if invalidate is not None:
                    invalidate()
                refreshed = True
                continue
            retryable = status == 429 or status in TRANSIENT_STATUSES
            if not retryable or attempt >= self.max_retries or (not idempotent and status not in REFUSED_STATUSES):
                return response
            delay = self._delay(attempt, response)
            if status == 429 and self.limiter is not None:
                self.limiter.penalise(delay)  # every process of this identity waits, not just this one
            log.warning("%s %s: HTTP %s, retry %s in %.1fs", method, path, status, attempt + 1, delay)
            self.sleep(delay)
            attempt += 1

    def _json(self, method: str, url: str, body: Any = None, idempotent: bool = True) -> tuple[int, Any]:
        response = self._send(method, url, body, idempotent)
        status = response.status_code
        if status >= 400:
            code, message = _error_of(response)
            text = f"{method} {urlsplit(url).path} answered HTTP {status} {code}: {message}"
            if status in PERMANENT_STATUSES:
                raise GraphPermanentError(text, status, code)
            ambiguous = not idempotent and status >= 500 and status not in REFUSED_STATUSES
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
            raise GraphError(f"{action} answered {len(results or [])} results for {len(values)} values", status,
                             ambiguous=True)
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

    def _filter_urls(self, ids: list[str]) -> Iterator[str]:
        prefix = f"{self.collection_url}?$top=1000&$filter="
        chunk: list[str] = []
        length = len(prefix)
        for external_id in ids:
            term = quote(("" if not chunk else " or ") + f"externalId eq {odata_quote(external_id)}", safe="")
            if chunk and length + len(term) > MAX_URL_LENGTH:
                yield prefix + quote(" or ".join(f"externalId eq {odata_quote(i)}" for i in chunk), safe="")
                chunk, length = [], len(prefix)
                term = quote(f"externalId eq {odata_quote(external_id)}", safe="")
            chunk.append(external_id)
            length += len(term)
        if chunk:
            yield prefix + quote(" or ".join(f"externalId eq {odata_quote(i)}" for i in chunk), safe="")

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
        lookups = sum(1 for _ in self._filter_urls(wanted))
        if lookups <= 1:
            return self.find_by_external_ids(wanted)
        want = set(wanted)
        found: dict[str, list[dict[str, Any]]] = {}
        complete = False
        pages = 0
        for page in self._page_bodies(f"{self.collection_url}?$top={MAX_PAGE}"):
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


# --------------------------------------------------------------------- sink
def _scalar(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str | list | tuple) and not hasattr(value, "__len__") and pd.isna(value):
        return None
    return value


def _string_list(value: Any) -> list[str]:
    if value is None or (not hasattr(value, "__len__") and pd.isna(value)):
        return []
    return [str(v) for v in value]


def _update_body(graph_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An ``updateTiIndicators`` item: the Graph id and the editable fields (threatType and observables are not)."""
    return {"id": graph_id, **{k: payload[k] for k in UPDATE_FIELDS if k in payload}}


def _known_ids(rows: pd.DataFrame, payloads: dict[str, Any]) -> dict[str, str]:
    """Graph ids the lifecycle remembered for rows it plans to update (only ids that look like Graph's)."""
    if "target_id" not in rows.columns or "action" not in rows.columns:
        return {}
    known = {}
    for external_id, action, target_id in zip(rows["external_id"], rows["action"], rows["target_id"], strict=True):
        if action in ("update", "refresh") and isinstance(target_id, str) and is_graph_id(target_id) and (
                external_id in payloads):
            known[str(external_id)] = target_id
    return known


class _BatchRefused(Exception):
    """A whole batch request refused for its content (a 4xx about the body): split it to find the bad items."""


def _raise_unless_content(exc: GraphError) -> None:
    """Re-raise what a split cannot help (throttling, outages, credentials); turn a content refusal into
    :class:`_BatchRefused`."""
    if isinstance(exc, PermanentError) or exc.transient or exc.status not in CONTENT_STATUSES:
        raise exc
    raise _BatchRefused(str(exc)) from exc


class GraphSink:
    """Load normalized rows into Graph ``tiIndicators`` (Sentinel's legacy TIP path), keyed on ``externalId``.

    Graph does not make ``externalId`` unique, so every upsert looks the ids up first: existing ones are updated,
    only missing ones are submitted.
    """

    name: ClassVar[str] = "graph"
    #: payload fields that change without a real change: left out of the lifecycle's content hash
    volatile_fields: ClassVar[tuple[str, ...]] = ("lastReportedDateTime",)
    verify_fields: ClassVar[tuple[str, ...]] = (
        "externalId", *OBSERVABLE_FIELDS, "fileHashType", "confidence", "severity", "tlpLevel", "threatType",
        "isActive", "expirationDateTime", "description",
    )

    #: Graph reads every indicator back by its external id
    read_back: ClassVar[bool] = True
    #: no documented cap on the indicators one source may hold
    capacity: ClassVar[int | None] = None
    refuses_expired: ClassVar[bool] = False

    def __init__(self, client: GraphClient, batch_size: int = MAX_BATCH, max_item_attempts: int = 3) -> None:
        if not 0 < batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.client = client
        self.batch_size = batch_size
        self.max_item_attempts = max(1, max_item_attempts)

    # ----------------------------------------------------------------- payload and comparison
    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The tiIndicator sent for one normalized row (deterministic: no clock reads).

        Raises:
            ValueError: the row lacks what Graph requires (observable, value, expiration) or names an unknown
                observable property.
        """
        observable = _scalar(row.get("observable"))
        value = _scalar(row.get("value"))
        if observable not in OBSERVABLE_FIELDS:
            raise ValueError(f"unsupported Graph observable property {observable!r}")
        if not value:
            raise ValueError("the row has no value")
        expiration = iso_utc(_scalar(row.get("expiration")))
        if expiration is None:
            raise ValueError("expirationDateTime is required by Graph and the row has no expiration")
        threat_type = _scalar(row.get("threat_type"))
        if not threat_type:
            # No silent WatchList default: the docs tell partners not to use it, and a missing type is a mapping bug.
            raise ValueError("the row has no threat_type")
        description = _scalar(row.get("description")) or f"{row.get('indicator_type')} {value}"
        # Graph wants tlpLevel; the docs call amber the default.
        tlp = str(_scalar(row.get("tlp")) or "amber").lower()
        body: dict[str, Any] = {
            "externalId": str(row["external_id"]),
            "action": "alert",
            "targetProduct": TARGET_PRODUCT,
            "threatType": threat_type,
            "tlpLevel": tlp,
            "description": str(description)[:MAX_DESCRIPTION],
            "expirationDateTime": expiration,
            "tags": _string_list(_scalar(row.get("tags"))),
            "isActive": bool(_scalar(row.get("active"))) and not bool(_scalar(row.get("false_positive"))),
            observable: str(value),
        }
        for field_name, column, high in (("confidence", "confidence", 100), ("severity", "severity", 5)):
            number = _scalar(row.get(column))
            if number is not None:
                body[field_name] = max(0, min(high, int(number)))
        if observable == "fileHashValue":
            hash_type = HASH_TYPES.get(str(_scalar(row.get("hash_type")) or "").lower())
            if hash_type is None:
                raise ValueError(f"unsupported hash type {row.get('hash_type')!r}")
            body["fileHashType"] = hash_type
        web_link = _scalar(row.get("web_link"))
        if web_link:
            body["additionalInformation"] = str(web_link)
        last_reported = iso_utc(_scalar(row.get("last_modified")))
        if last_reported:
            body["lastReportedDateTime"] = last_reported
        return body

    @staticmethod
    def same_value(field: str, sent: Any, stored: Any) -> bool:
        """Whether Graph holds what was sent for ``field``, allowing its formats (7-digit ticks, ``+00:00``, ...)."""
        if sent in (None, "", []) and stored in (None, "", []):
            return True
        if field in DATETIME_FIELDS:
            return parse_datetime(sent) is not None and parse_datetime(sent) == parse_datetime(stored)
        if field in ("confidence", "severity"):
            try:
                return int(sent) == int(stored)
            except (TypeError, ValueError):
                return False
        if field in ("fileHashValue", "fileHashType", "tlpLevel", "threatType"):
            return isinstance(sent, str) and isinstance(stored, str) and sent.lower() == stored.lower()
        if field == "isActive" and isinstance(stored, str):
            return str(sent).lower() == stored.lower()
        return sent == stored

    def _payloads(self, rows: pd.DataFrame) -> tuple[dict[str, dict[str, Any]], dict[str, SinkResult]]:
        payloads: dict[str, dict[str, Any]] = {}
        bad: dict[str, SinkResult] = {}
        for row in rows.to_dict("records"):
            external_id = str(row["external_id"])
            try:
                payloads[external_id] = self.payload(row)
            except (ValueError, TypeError, KeyError) as exc:
                bad[external_id] = SinkResult(external_id, "create", REJECTED, attempts=0, error=f"payload: {exc}")
        return payloads, bad

    # ----------------------------------------------------------------- upsert
    def upsert(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Create missing indicators and update existing ones; one result per row, in row order.

        Raises:
            GraphError: Graph stayed unavailable (429/5xx/network) beyond the client's retries; the task should
                retry, and the lookup-first design makes the rerun safe.
        """
        if rows.empty:
            return []
        payloads, results = self._payloads(rows)
        known = _known_ids(rows, payloads)
        # Indicators the pipeline delivered before carry their Graph id: they skip the lookup. Everything else is
        # looked up first (by id, or by listing what this app owns when that is cheaper: an empty target costs one
        # request), because Graph would happily create a duplicate.
        existing = self.client.find_many([e for e in payloads if e not in known])
        creates = {e: p for e, p in payloads.items() if e not in existing and e not in known}
        updates = {e: _update_body(known[e], payloads[e]) for e in known}
        duplicates: dict[str, str] = {}
        for external_id, payload in payloads.items():
            if external_id in existing:
                found = existing[external_id]
                updates[external_id] = _update_body(found[0]["id"], payload)
                if len(found) > 1:
                    others = ", ".join(str(f.get("id")) for f in found[1:])
                    duplicates[external_id] = f"{len(found) - 1} duplicate(s) in Graph left untouched: {others}"
                    log.warning("externalId %s has %s duplicates in Graph", external_id, len(found) - 1)
        results.update(self._create(creates))
        updated = self._update(updates)
        stale = [e for e in known if updated[e].status != "ok"]
        if stale:  # a remembered id that no longer works (deleted in Graph by someone else): look it up again
            log.warning("%s remembered Graph ids failed to update; looking them up again", len(stale))
            found = self.client.find_by_external_ids(stale)
            updated.update(self._create({e: payloads[e] for e in stale if e not in found}))
            updated.update(self._update({e: _update_body(found[e][0]["id"], payloads[e]) for e in stale if e in found}))
        for external_id, result in updated.items():
            if external_id in duplicates and result.status == "ok":
                result = SinkResult(external_id, "update", "ok", result.target_id, result.attempts,
                                    duplicates[external_id])
            results[external_id] = result
        return [results[str(e)] for e in rows["external_id"]]

    def _with_item_retries(
        self,
        keys: list[str],
        action: str,
        send: Callable[[list[str]], list[tuple[str | None, str | None, bool]]],
        batch_size: int,
        failed_target: Callable[[str], str | None] = lambda _: None,
    ) -> dict[str, SinkResult]:
        """Send ``keys`` in batches, one result per key.

        ``send(batch)`` answers one ``(target id, error, transient)`` per key, in order. An item that failed for a
        transient reason is resent (alone with the other failures) up to ``max_item_attempts`` times, then
        reported ``failed``; an item refused for its content is reported ``rejected`` at once. When ``send``
        raises :class:`_BatchRefused` (the whole request refused for its content), the batch is split in halves
        until the refused items stand alone, so one bad item never takes 99 good ones down with it.
        """
        done: dict[str, SinkResult] = {}
        attempts = dict.fromkeys(keys, 0)
        pending = list(keys)
        while pending:
            retry: list[str] = []
            batches = [pending[start:start + batch_size] for start in range(0, len(pending), batch_size)]
            while batches:
                batch = batches.pop(0)
                for key in batch:
                    attempts[key] += 1
                try:
                    answers = send(batch)
                except _BatchRefused as refused:
                    if len(batch) > 1:
                        middle = len(batch) // 2
                        batches[:0] = [batch[:middle], batch[middle:]]
                        for key in batch:  # splitting is not a retry of the items
                            attempts[key] -= 1
                        continue
                    answers = [(None, str(refused), False)]
                for key, (target_id, error, transient) in zip(batch, answers, strict=True):
                    if error is None:
                        done[key] = SinkResult(key, action, OK, target_id, attempts[key])
                    elif not transient:
                        done[key] = SinkResult(key, action, REJECTED, failed_target(key), attempts[key], error)
                    elif attempts[key] < self.max_item_attempts:
                        retry.append(key)
                    else:
                        done[key] = SinkResult(key, action, FAILED, failed_target(key), attempts[key], error)
            pending = retry
            if pending:
                log.info("retrying %s failed %s items", len(pending), action)
        return done

    def _create(self, creates: dict[str, dict[str, Any]]) -> dict[str, SinkResult]:
        def send(batch: list[str]) -> list[tuple[str | None, str | None, bool]]:
            try:
                answers = self.client.submit([creates[e] for e in batch])
            except GraphError as exc:
                if not exc.ambiguous:
                    _raise_unless_content(exc)
                # Some of the batch may exist now: adopt what Graph holds, resubmit only the rest.
                log.warning("submit of %s indicators was ambiguous (%s); reconciling", len(batch), exc)
                landed = self.client.find_by_external_ids(batch)
                return [(landed[e][0]["id"], None, True) if e in landed else (None, str(exc), True) for e in batch]
            return [(answer["id"], None, True) if (error := item_error(answer)) is None
                    else (None, error, item_transient(answer)) for answer in answers]

        return self._with_item_retries(list(creates), "create", send, self.batch_size)

    def _update(self, updates: dict[str, dict[str, Any]]) -> dict[str, SinkResult]:
        def send(batch: list[str]) -> list[tuple[str | None, str | None, bool]]:
            try:
                answers = self.client.update([updates[e] for e in batch])
            except GraphError as exc:
                if not exc.ambiguous:
                    _raise_unless_content(exc)
                # Updates are idempotent: an unclear batch is simply tried again.
                return [(None, str(exc), True)] * len(batch)
            return [(updates[e]["id"], None, True) if (error := item_error(answer)) is None
                    else (None, error, item_transient(answer)) for e, answer in zip(batch, answers, strict=True)]

        return self._with_item_retries(list(updates), "update", send, self.batch_size,
                                       failed_target=lambda e: updates[e]["id"])

    # ----------------------------------------------------------------- retract and fetch
    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Delete these rows' indicators, but only those this app owns (``OwnedBy``: the only ones it can see).

        Ids Graph does not hold for this app are reported ``ok`` with zero attempts: there is nothing to withdraw.
        """
        if rows.empty:
            return []
        ids = list(dict.fromkeys(str(e) for e in rows["external_id"]))
        owned = self.client.find_many(ids)
        results = {e: SinkResult(e, "retract", "ok", attempts=0) for e in ids if e not in owned}

        def send(batch: list[str]) -> list[tuple[str | None, str | None, bool]]:
            try:
                answers = self.client.delete_by_external_ids(batch)
            except GraphError as exc:
                if isinstance(exc, PermanentError) or (exc.transient and not exc.ambiguous):
                    raise
                answers = [{"code": exc.status or -1, "message": str(exc)}] * len(batch)
            return [(owned[e][0]["id"], None, True) if (error := result_info_error(answer)) is None
                    else (None, error, True) for e, answer in zip(batch, answers, strict=True)]

        results.update(self._with_item_retries([e for e in ids if e in owned], "retract", send, MAX_BATCH,
                                               failed_target=lambda e: owned[e][0]["id"]))
        return [results[str(e)] for e in rows["external_id"]]

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What Graph holds for these ids (the oldest row per id), shaped like ``payload``: its keys, nulls dropped."""
        keys = {"externalId", "action", "targetProduct", "threatType", "tlpLevel", "description", "expirationDateTime",
                "tags", "isActive", "confidence", "severity", "fileHashType", "additionalInformation",
                "lastReportedDateTime", *OBSERVABLE_FIELDS}
        found = self.client.find_many(list(external_ids))
        return {
            external_id: {k: v for k, v in items[0].items() if k in keys and v is not None}
            for external_id, items in found.items()
        }

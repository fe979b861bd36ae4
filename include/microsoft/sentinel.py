"""Microsoft Sentinel's STIX objects upload API (data plane) and threat-intelligence query (ARM), and its sink.

Connection ``sentinel_default`` (read by the hook, not here): host = upload endpoint
(default :data:`DEFAULT_ENDPOINT`), login = client id, password = client secret, extras ``tenant_id``,
``workspace_id``, ``authority_host``; for verification through the management plane also ``subscription_id``,
``resource_group``, ``workspace_name`` and ``management_host`` (default :data:`DEFAULT_MANAGEMENT_HOST`).
Both planes take a client-credentials token for ``include.microsoft.auth.ARM_SCOPE``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, urlsplit

import pandas as pd
import requests

from include.microsoft.ratelimit import SharedRateLimiter, limiter_path
from include.microsoft.sink import OK, REJECTED, SinkResult
from include.microsoft.stix import (
    build_indicator,
    external_id_of,
    format_timestamp,
    parse_timestamp,
    source_system,
    stix_id,
)
from include.pipeline.errors import PermanentError
from include.transport.retry_after import retry_after

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.ti.sentinel.azure.com"
DEFAULT_MANAGEMENT_HOST = "https://management.azure.com"
UPLOAD_API_VERSION = "2024-02-01-preview"
QUERY_API_VERSION = "2025-07-01-preview"
MAX_OBJECTS_PER_UPLOAD = 100  # documented limit for both upload APIs
MAX_QUERY_VALUES = 100  # ids per query clause; the real limit is UNCONFIRMED, 100 matches the page size
MAX_QUERY_PAGES = 1000
MAX_BACKOFF_SECONDS = 120.0  # our own exponential back-off never waits longer
MAX_SERVER_WAIT_SECONDS = 600.0  # a server-requested pause beyond this is a task retry's job, not a sleep
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?) second", re.IGNORECASE)
_TIMESTAMP_FIELDS = ("created", "modified", "valid_from", "valid_until")


class TokenSource(Protocol):
    """Anything that hands out a bearer token (``include.microsoft.auth.TokenProvider``)."""

    def token(self) -> str: ...


class SentinelError(RuntimeError):
    """A request Sentinel refused, or that still failed after the bounded retries.

    Attributes:
        status: the last HTTP status, or None after connection errors.
        body: the start of the last response body (never contains a token).
    """

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SentinelPermanentError(SentinelError, PermanentError):
    """Sentinel refused the caller or the address (401 after a fresh token, 403, 404: a wrong workspace id or a
    missing role); no retry fixes that."""


#: Statuses about the caller or the address, never about the objects sent.
PERMANENT_STATUSES = frozenset({401, 403, 404, 405})


@dataclass(frozen=True)
class ManagementTarget:
    """Where the workspace lives on the ARM management plane (needed only to read objects back).

    Attributes:
        subscription_id: the Azure subscription id.
        resource_group: the workspace's resource group.
        workspace_name: the Log Analytics workspace name (not its id).
        host: the ARM endpoint.
        token_provider: an ARM-scope token source; the client's own provider when None.
        api_version: the threat-intelligence query api-version.
        page_size: ``maxPageSize`` of each query page.
    """

    subscription_id: str
    resource_group: str
    workspace_name: str
    host: str = DEFAULT_MANAGEMENT_HOST
    token_provider: TokenSource | None = None
    api_version: str = QUERY_API_VERSION
    page_size: int = MAX_QUERY_VALUES

    def query_url(self) -> str:
        """The ``threatIntelligence/main/query`` URL, without the api-version."""
        return (
            f"{self.host.rstrip('/')}/subscriptions/{quote(self.subscription_id, safe='')}"
            f"/resourceGroups/{quote(self.resource_group, safe='')}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{quote(self.workspace_name, safe='')}"
            "/providers/Microsoft.SecurityInsights/threatIntelligence/main/query"
        )


def retry_after_seconds(response: requests.Response) -> float | None:
    """The server's requested pause: the larger of ``Retry-After`` and the body's "Try again in N seconds".

    Sentinel documents only the body text; whether it also sends ``Retry-After`` is UNCONFIRMED, so both count.
    """
    candidates: list[float] = []
    seconds = retry_after(response)  # None when absent or unreadable: the body hint or back-off decide
    if seconds is not None:
        candidates.append(seconds)
    match = _TRY_AGAIN.search(response.text or "")
    if match:
        candidates.append(float(match.group(1)))
    if not candidates:
        return None
    return max(0.0, *candidates)


class SentinelClient:
    """Upload STIX objects to one workspace and read them back, with bounded retries and a shared budget.

    Retries: 429 honours ``Retry-After`` and the body text (and pauses the shared limiter for everyone);
    5xx and connection errors back off exponentially; 401 refreshes the token once. Anything else raises
    :class:`SentinelError`, and so does exhausting ``max_retries``: the task's own retries take over from there.
    """

    def __init__(
        self,
        endpoint: str,
        workspace_id: str,
        token_provider: TokenSource,
        session: requests.Session | None = None,
        limiter: SharedRateLimiter | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        management: ManagementTarget | None = None,
        api_version: str = UPLOAD_API_VERSION,
    ) -> None:
        if not workspace_id:
            raise ValueError("workspace_id is required")
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.workspace_id = workspace_id
        self.token_provider = token_provider
        self.session = session or requests.Session()
        self.limiter = limiter
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self.management = management
        self.api_version = api_version
        self._sleep = sleep
        self.requests_sent = 0  # every HTTP attempt on either plane, retries included
        self.throttled = 0  # 429 answers seen

    @property
    def upload_url(self) -> str:
        """The upload URL, without the api-version."""
        return (
            f"{self.endpoint}/workspaces/{quote(self.workspace_id, safe='')}"
            "/threat-intelligence-stix-objects:upload"
        )

    def upload(self, sourcesystem: str, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Upload at most 100 STIX objects in one request.

        Args:
            sourcesystem: becomes the objects' ``SourceSystem`` in Sentinel.
            objects: the STIX objects.

        Returns:
            The per-record errors of an HTTP 200, each ``{"recordIndex": int, "errorMessages": [str, ...]}``
            (index into ``objects``); empty when every object was accepted.

        Raises:
            ValueError: more than 100 objects, or no sourcesystem.
            SentinelError: the request failed for good.
        """
        if not sourcesystem:
            raise ValueError("sourcesystem is required")
        if len(objects) > MAX_OBJECTS_PER_UPLOAD:
            raise ValueError(f"at most {MAX_OBJECTS_PER_UPLOAD} objects per upload, got {len(objects)}")
        if not objects:
            return []
        response = self._send(
            "POST", self.upload_url, {"api-version": self.api_version},
            {"sourcesystem": sourcesystem, "stixobjects": list(objects)},
            self.token_provider, self.limiter,
        )
        if not response.content.strip():
            return []
        try:
            body = response.json()
        except ValueError as exc:
            raise SentinelError("upload answered 200 with a body that is not JSON", response.status_code,
                                response.text[:500]) from exc
        errors = body.get("errors") if isinstance(body, dict) else None
        if not errors:
            return []
        return [
            {"recordIndex": int(e.get("recordIndex", -1)),
             "errorMessages": [str(m) for m in e.get("errorMessages") or []]}
            for e in errors if isinstance(e, dict)
        ]

    def query(self, stix_ids: Sequence[str], sourcesystem: str | None = None) -> dict[str, dict[str, Any]]:
        """Read objects back through the management plane's ``threatIntelligence/main/query``.

        Args:
            stix_ids: the STIX ids to look for.
            sourcesystem: restrict to one source (recommended: two sources may hold the same id).

        Returns:
            The stored STIX objects (``properties.data``) keyed by STIX id; absent ids are left out. When a
            source holds several versions, the newest ``modified`` wins.

        Raises:
            RuntimeError: the client has no :class:`ManagementTarget`.
            SentinelError: the query failed for good.
        """
        if self.management is None:
            raise RuntimeError("reading objects back needs the management plane (subscription, resource group, "
                               "workspace name)")
        found: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(stix_ids))
        for start in range(0, len(ids), MAX_QUERY_VALUES):
            chunk = ids[start:start + MAX_QUERY_VALUES]
            clauses: list[dict[str, Any]] = [{"field": "id", "operator": "Equals", "values": chunk}]
            if sourcesystem:
                clauses.append({"field": "source", "operator": "Equals", "values": [sourcesystem]})
            body = {
                "condition": {"clauses": clauses, "conditionConnective": "And", "stixObjectType": "indicator"},
                "maxPageSize": self.management.page_size,
            }
            for item in self._query_pages(body):
                data = (item.get("properties") or {}).get("data") or {}
                object_id = data.get("id")
                if not isinstance(object_id, str) or object_id not in chunk:
                    continue
                held = found.get(object_id)
                if held is None or _newer_or_equal(data, held):
                    found[object_id] = data
        return found

    def _query_pages(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        management = self.management
        assert management is not None
        provider = management.token_provider or self.token_provider
        response = self._send("POST", management.query_url(), {"api-version": management.api_version}, body,
                              provider, None)
        seen: set[str] = set()
        for _ in range(MAX_QUERY_PAGES):
            page = _json_object(response)
            items = page.get("value")
            if not isinstance(items, list):
                raise SentinelError("query answer has no 'value' list", response.status_code, response.text[:500])
            yield from (item for item in items if isinstance(item, dict))
            next_link = page.get("nextLink")
            if not next_link:
                return
            if next_link in seen:
                raise SentinelError("query paging repeated a nextLink", response.status_code)
            seen.add(next_link)
            # ARM pageable operations follow nextLink with a GET (OpenCTI's client does the same); the link
            # normally carries api-version, add it when it does not.
            params = None if "api-version=" in urlsplit(next_link).query else {"api-version": management.api_version}
            response = self._send("GET", next_link, params, None, provider, None)
        raise SentinelError(f"query paging exceeded {MAX_QUERY_PAGES} pages")

    def _send(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: object,
        provider: TokenSource,
        limiter: SharedRateLimiter | None,
    ) -> requests.Response:
        attempt = 0
        refreshed = False
        while True:
            if limiter is not None:
                limiter.acquire()
            self.requests_sent += 1
            try:
                response = self.session.request(
                    method, url, params=params, json=body, timeout=self.timeout,
                    headers={"Authorization": f"Bearer {provider.token()}", "Accept": "application/json"},
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise SentinelError(f"{method} {_safe(url)} failed after {attempt} attempts: "
                                        f"{type(exc).__name__}") from exc
                delay = self._backoff(attempt)
                log.warning("%s %s: %s; retry %s/%s in %.1f s", method, _safe(url), type(exc).__name__,
                            attempt, self.max_retries, delay)
                self._sleep(delay)
                continue

            status = response.status_code
            if status < 400:
                return response
            if status == 401 and not refreshed:
                refreshed = True
                log.warning("%s %s answered 401; refreshing the token once", method, _safe(url))
                _invalidate(provider)
                continue
            if status == 429 or status >= 500:
                self.throttled += status == 429
                attempt += 1
                if attempt > self.max_retries:
                    raise SentinelError(f"{method} {_safe(url)} answered {status} after {attempt} attempts",
                                        status, response.text[:500])
                hinted = retry_after_seconds(response)
                if hinted is not None:
                    hinted = min(hinted, MAX_SERVER_WAIT_SECONDS)
                if status == 429:
                    delay = hinted if hinted is not None else self._backoff(attempt)
                    log.warning("%s %s throttled (429); waiting %.1f s (retry %s/%s)", method, _safe(url),
                                delay, attempt, self.max_retries)
                    if limiter is not None:
                        # The pause is shared: every task of this identity waits, not just this one.
                        limiter.penalise(delay)
                        continue  # acquire() sleeps through the pause
                else:
                    delay = max(hinted or 0.0, self._backoff(attempt))
                    log.warning("%s %s answered %s; retry %s/%s in %.1f s", method, _safe(url), status,
                                attempt, self.max_retries, delay)
                self._sleep(delay)
                continue
            error = SentinelPermanentError if status in PERMANENT_STATUSES else SentinelError
            raise error(f"{method} {_safe(url)} answered {status}: {response.text[:300]}", status,
                        response.text[:500])

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)


class SentinelSink:
    """The :class:`include.microsoft.sink.Sink` for Sentinel's STIX objects upload API.

    Uploads are upserts keyed on the STIX id; a retract re-uploads the object with ``revoked: true`` (the upload
    API has no delete, and the management-plane DELETE cannot remove upload-API objects: misp2sentinel PR #162).

    Args:
        client: the Sentinel client.
        sourcesystem: one ``sourcesystem`` for every row; when None each row gets ``ThreatConnect-<owner>`` and
            rows of different owners go in different requests (and ``fetch`` matches on the id alone).
        batch_size: objects per request (at most 100).
        max_item_attempts: how many requests may carry one object that Sentinel rejects per record.
    """

    name: ClassVar[str] = "sentinel"
    #: no documented cap on the indicators one source may hold
    capacity: ClassVar[int | None] = None
    refuses_expired: ClassVar[bool] = False
    #: payload fields that change without a real change: left out of the lifecycle's content hash
    volatile_fields: ClassVar[tuple[str, ...]] = ("modified",)
    #: what verify compares between the sent payload and what the query returns
    verify_fields: ClassVar[tuple[str, ...]] = (
        "pattern", "name", "revoked", "valid_from", "valid_until", "confidence", "object_marking_refs",
        "labels", "indicator_types", "modified",
    )

    def __init__(
        self,
        client: SentinelClient,
        sourcesystem: str | None = None,
        batch_size: int = MAX_OBJECTS_PER_UPLOAD,
        max_item_attempts: int = 2,
    ) -> None:
        if not 1 <= batch_size <= MAX_OBJECTS_PER_UPLOAD:
            raise ValueError(f"batch_size must be between 1 and {MAX_OBJECTS_PER_UPLOAD}")
        if max_item_attempts < 1:
            raise ValueError("max_item_attempts must be >= 1")
        self.client = client
        self.sourcesystem = sourcesystem
        self.batch_size = batch_size
        self.max_item_attempts = max_item_attempts

    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The STIX indicator sent for one normalized row."""
        return build_indicator(row)

    def sourcesystem_for(self, row: Mapping[str, Any]) -> str:
        """The ``sourcesystem`` a row is uploaded with."""
        return self.sourcesystem or source_system(str(row["owner"]))

    def upsert(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Upload every row; per-record rejections are retried, then reported ``failed`` with Sentinel's message.

        The action is the row's ``action`` column when it has one (``create``/``update``), otherwise ``create``
        for a first version (``modified == created``) and ``update`` after.
        """
        records = rows.to_dict("records")
        objects = _build_all(records, self.payload)
        actions = [_action(r, o) for r, o in zip(records, objects, strict=True)]
        return self._load(records, objects, actions)

    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Re-upload every row's object with ``revoked: true``.

        ``modified`` is the row's ``stix_modified`` (the lifecycle stage makes it newer than anything sent
        before); without that column it is ``last_modified`` plus one millisecond, so the revocation still
        outranks an upload built from the same row.
        """
        records = rows.to_dict("records")
        objects = _build_all(records, self.retract_payload)
        return self._load(records, objects, ["retract"] * len(records))

    def retract_payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The object :meth:`retract` sends for one row (what verify should expect after a retract)."""
        modified = None
        if not _has_value(_field(row, "stix_modified")):
            base = build_indicator(row)
            modified = parse_timestamp(base["modified"]) + dt.timedelta(milliseconds=1)
        return build_indicator(row, revoked=True, modified=modified)

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What Sentinel holds now for these ids (payload-shaped, timestamps and labels normalized)."""
        if not external_ids:
            return {}
        found = self.client.query([stix_id(e) for e in external_ids], self.sourcesystem)
        return {external_id_of(object_id): _normalized(obj) for object_id, obj in found.items()}

    @property
    def read_back(self) -> bool:
        """True when the connection names the workspace on the management plane (the only way to read back)."""
        return self.client.management is not None

    def _load(self, records: list[dict[str, Any]], objects: list[dict[str, Any] | str],
              actions: list[str]) -> list[SinkResult]:
        """Upload in batches of one sourcesystem; one result per record.

        A record Sentinel rejects (an ``errors[]`` entry) is resent with the other rejections up to
        ``max_item_attempts`` times, then reported ``rejected`` with Sentinel's messages: a record error is about
        the object's content. A whole request answered 400 is split in halves until the refused objects stand
        alone. Throttling, outages and credentials raise: the task retry is the next layer.
        """
        attempts = [0] * len(records)
        # A row the builder refused (a string: why) never reaches Sentinel but still gets its result.
        errors: dict[int, str] = {i: o for i, o in enumerate(objects) if isinstance(o, str)}
        pending = [i for i in range(len(records)) if i not in errors]
        while pending:
            retry: list[int] = []
            by_source: dict[str, list[int]] = {}
            for index in pending:
                by_source.setdefault(self.sourcesystem_for(records[index]), []).append(index)
            for sourcesystem, indexes in by_source.items():
                batches = [indexes[start:start + self.batch_size] for start in range(0, len(indexes), self.batch_size)]
                while batches:
                    batch = batches.pop(0)
                    for index in batch:
                        attempts[index] += 1
                    try:
                        rejected = self.client.upload(sourcesystem, [_object(objects[i]) for i in batch])
                    except SentinelError as exc:
                        if exc.status != 400 or isinstance(exc, PermanentError):
                            raise
                        if len(batch) > 1:  # one bad object can refuse the request: find it
                            middle = len(batch) // 2
                            batches[:0] = [batch[:middle], batch[middle:]]
                            continue
                        errors[batch[0]] = f"HTTP 400: {exc.body or exc}"[:1000]
                        continue
                    for error in rejected:
                        position = error["recordIndex"]
                        if not 0 <= position < len(batch):
                            log.warning("upload reported an error for record %s of a %s-object batch",
                                        position, len(batch))
                            continue
                        index = batch[position]
                        message = "; ".join(error["errorMessages"]) or "rejected without a message"
                        if attempts[index] < self.max_item_attempts:
                            retry.append(index)
                        else:
                            errors[index] = message[:1000]
            if retry:
                log.info("retrying %s objects that Sentinel rejected per record", len(retry))
            pending = retry
        results = []
        for index, record in enumerate(records):
            error = errors.get(index)
            external_id = str(record["external_id"])
            results.append(SinkResult(
                external_id=external_id,
                action=actions[index],
                status=REJECTED if error else OK,
                target_id=stix_id(external_id),
                attempts=attempts[index],
                error=error,
            ))
        log.info("sentinel %s: %s objects, %s rejected, %s requests so far", actions[0] if actions else "load",
                 len(records), len(errors), self.client.requests_sent)
        return results


def _build_all(records: list[dict[str, Any]],
               build: Callable[[Mapping[str, Any]], dict[str, Any]]) -> list[dict[str, Any] | str]:
    built: list[dict[str, Any] | str] = []
    for record in records:
        try:
            built.append(build(record))
        except (ValueError, TypeError) as exc:
            log.warning("row %s cannot become a STIX indicator: %s", record.get("external_id"), exc)
            built.append(f"not sent: {exc}")
    return built


def _object(built: dict[str, Any] | str) -> dict[str, Any]:
    assert not isinstance(built, str), "refused rows are never batched"
    return built


def _action(record: Mapping[str, Any], obj: Mapping[str, Any] | str) -> str:
    declared = _field(record, "action")
    if declared in ("create", "update"):
        return str(declared)
    if isinstance(obj, str):
        return "create"
    return "create" if obj["created"] == obj["modified"] else "update"


def _normalized(obj: Mapping[str, Any]) -> dict[str, Any]:
    # The query API may render timestamps and label order its own way (UNCONFIRMED); bring them to the form
    # the builder emits so verify compares meaning, not formatting.
    result = dict(obj)
    for field in _TIMESTAMP_FIELDS:
        value = result.get(field)
        if isinstance(value, str):
            try:
                result[field] = format_timestamp(parse_timestamp(value))
            except ValueError:
                pass
    if isinstance(result.get("labels"), list):
        result["labels"] = sorted(str(label) for label in result["labels"])
    return result


def _newer_or_equal(candidate: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    try:
        return parse_timestamp(str(candidate.get("modified"))) >= parse_timestamp(str(held.get("modified")))
    except ValueError:
        return True


def _field(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row[key]
    except KeyError:
        return None


def _has_value(value: object) -> bool:
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise SentinelError("answer is not JSON", response.status_code, response.text[:500]) from exc
    if not isinstance(body, dict):
        raise SentinelError("answer is not a JSON object", response.status_code, response.text[:500])
    return body


def _invalidate(provider: TokenSource) -> None:
    # TokenProvider caches in MSAL and has no refresh hook yet; a provider that offers one gets it called.
    invalidate = getattr(provider, "invalidate", None)
    if callable(invalidate):
        invalidate()


def _safe(url: str) -> str:
    # Log the path only: query strings may carry skip tokens, never worth a log line.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def sink_from_settings(
    endpoint: str,
    client_id: str,
    client_secret: str,
    extra: Mapping[str, Any],
    owner: str,
    limiter_root: Path,
    scope: str,
    requests_per_minute: int = 95,
    on_new_token: Callable[[str], None] | None = None,
) -> SentinelSink:
    """Build the Sentinel sink from connection settings (what the Airflow hook reads), with the shared limiter.

    The limiter's state is keyed on the identity (client id + workspace): the API budget is per identity, so every
    load task of that identity on this machine draws from one budget.
    """
    from include.microsoft.auth import MICROSOFT_AUTHORITY_HOST, TokenProvider

    tokens = TokenProvider(
        str(extra["tenant_id"]), client_id, client_secret, scope,
        authority_host=str(extra.get("authority_host") or MICROSOFT_AUTHORITY_HOST), on_new_token=on_new_token,
    )
    management = None
    if all(extra.get(k) for k in ("subscription_id", "resource_group", "workspace_name")):
        management = ManagementTarget(
            str(extra["subscription_id"]), str(extra["resource_group"]), str(extra["workspace_name"]),
            host=str(extra.get("management_host") or DEFAULT_MANAGEMENT_HOST),
        )
    workspace_id = str(extra["workspace_id"])
    limiter = SharedRateLimiter(
        limiter_path(limiter_root, f"{client_id}|{workspace_id}"),
        max_requests=int(extra.get("requests_per_minute", requests_per_minute)), per_seconds=60.0,
    )
    client = SentinelClient(endpoint, workspace_id, tokens, limiter=limiter, management=management)
    return SentinelSink(client, sourcesystem=source_system(owner))

"""Microsoft Sentinel's STIX objects upload API (data plane) and threat-intelligence query (ARM), on the transport.

Connection ``sentinel_default`` (read by the hook, not here): host = upload endpoint
(default :data:`DEFAULT_ENDPOINT`), login = client id, password = client secret, extras ``tenant_id``,
``workspace_id``, ``authority_host``; for verification through the management plane also ``subscription_id``,
``resource_group``, ``workspace_name`` and ``management_host`` (default: the Azure Resource Manager of the cloud the
``authority_host`` belongs to, :data:`DEFAULT_MANAGEMENT_HOST` in public Azure). Both planes take a client-credentials
token for that cloud's Resource Manager (``include.microsoft.auth.arm_host``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from include.microsoft.sentinel.stix import parse_timestamp
from include.pipeline.errors import PermanentError
from include.transport.http import (
    BearerAuth,
    RequestBudget,
    RetryPolicy,
    TokenSource,
    Transport,
    TransportClient,
    TransportError,
    safe_url,
)

log = logging.getLogger(__name__)


log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.ti.sentinel.azure.com"
DEFAULT_MANAGEMENT_HOST = "https://management.azure.com"
UPLOAD_API_VERSION = "2024-02-01-preview"
QUERY_API_VERSION = "2025-07-01-preview"
MAX_OBJECTS_PER_UPLOAD = 100  # documented limit for both upload APIs
MAX_QUERY_VALUES = 100  # ids per query clause; the real limit is UNCONFIRMED, 100 matches the page size
MAX_QUERY_PAGES = 1000


#: Sentinel's upload APIs allow 100 requests per minute per identity; the margin absorbs the gap between the
#: moment a request is admitted here and the moment it reaches Microsoft.
DEFAULT_REQUESTS_PER_MINUTE = 95
#: Uploads waiting for their answers at once: 95 a minute is one every 0.6 s, so more than one is needed whenever an
#: upload of 100 objects takes longer than that. A Connection's ``max_in_flight`` overrides it.
DEFAULT_IN_FLIGHT = 4


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


class SentinelClient(TransportClient):
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
        limiter: RequestBudget | None = None,
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
        self.management = management
        self.api_version = api_version
        self.transport = Transport(
            session,
            BearerAuth(token_provider),
            limiter,
            RetryPolicy(max_retries=max_retries, backoff=backoff),
            timeout,
            sleep,
            "Sentinel",
        )

    @property
    def upload_url(self) -> str:
        """The upload URL, without the api-version."""
        return f"{self.endpoint}/workspaces/{quote(self.workspace_id, safe='')}/threat-intelligence-stix-objects:upload"

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
            "POST",
            self.upload_url,
            {"api-version": self.api_version},
            {"sourcesystem": sourcesystem, "stixobjects": list(objects)},
        )
        if not response.content.strip():
            return []
        try:
            body = response.json()
        except ValueError as exc:
            raise SentinelError(
                "upload answered 200 with a body that is not JSON", response.status_code, response.text[:500]
            ) from exc
        errors = body.get("errors") if isinstance(body, dict) else None
        if not errors:
            return []
        return [
            {
                "recordIndex": int(e.get("recordIndex", -1)),
                "errorMessages": [str(m) for m in e.get("errorMessages") or []],
            }
            for e in errors
            if isinstance(e, dict)
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
            raise RuntimeError(
                "reading objects back needs the management plane (subscription, resource group, workspace name)"
            )
        found: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(stix_ids))
        for start in range(0, len(ids), MAX_QUERY_VALUES):
            chunk = ids[start : start + MAX_QUERY_VALUES]
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
        response = self._send("POST", management.query_url(), {"api-version": management.api_version}, body, provider)
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
            response = self._send("GET", next_link, params, None, provider)
        raise SentinelError(f"query paging exceeded {MAX_QUERY_PAGES} pages")

    def _send(
        self, method: str, url: str, params: dict[str, str] | None, body: object, provider: TokenSource | None = None
    ) -> requests.Response:
        """One request through the transport: the upload plane with its budget, or (``provider`` given) the
        management plane with its own token and no budget; any answer >= 400 raises."""
        try:
            if provider is None:
                response = self.transport.send(method, url, params=params, json=body)
            else:
                response = self.transport.send(
                    method, url, params=params, json=body, auth=BearerAuth(provider), limiter=None
                )
        except TransportError as exc:
            raise SentinelError(str(exc)) from exc.__cause__ or exc
        status = response.status_code
        if status < 400:
            return response
        error = SentinelPermanentError if status in PERMANENT_STATUSES else SentinelError
        raise error(f"{method} {safe_url(url)} answered {status}: {response.text[:300]}", status, response.text[:500])


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise SentinelError("answer is not JSON", response.status_code, response.text[:500]) from exc
    if not isinstance(body, dict):
        raise SentinelError("answer is not a JSON object", response.status_code, response.text[:500])
    return body


def _newer_or_equal(candidate: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    try:
        return parse_timestamp(str(candidate.get("modified"))) >= parse_timestamp(str(held.get("modified")))
    except ValueError:
        return True

"""Hooks: each turns one Airflow Connection into a ready client or sink; nothing else lives here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from include.microsoft.auth import GRAPH_SCOPE, MICROSOFT_AUTHORITY_HOST, TokenProvider
from include.pipeline.ports import Sink
from include.threatconnect.client import ThreatConnectClient
from include.transport.http import RequestBudget
from include.transport.limiter import SharedRateLimiter, configured_rate, limiter_path
from tc_sentinel import redaction


def base_url(connection: Any, default: str | None = None) -> str:
    """The base URL a Connection points at: ``host`` may carry scheme and path prefix, or use schema/port."""
    host = (connection.host or default or "").rstrip("/")
    if not host:
        raise ValueError(f"connection {connection.conn_id!r} has no host (the API base URL)")
    if "://" not in host:
        scheme = connection.schema if connection.schema in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    if connection.port:
        scheme, rest = host.split("://", 1)
        netloc, _, path = rest.partition("/")
        host = f"{scheme}://{netloc}:{connection.port}" + (f"/{path}" if path else "")
    return host


def _require(connection: Any, *names: str) -> dict[str, Any]:
    extra = connection.extra_dejson
    missing = [n for n in names if not extra.get(n)]
    if missing:
        raise ValueError(f"connection {connection.conn_id!r} lacks extra field(s) {missing}")
    if not connection.login or not connection.password:
        raise ValueError(f"connection {connection.conn_id!r} needs login (id) and password (secret)")
    return extra


def _mask(token: str) -> None:
    """Register an issued bearer token with Airflow's secrets masker: no log line of this task can show it."""
    from airflow.sdk.log import mask_secret

    try:
        mask_secret(token)
    except Exception:  # outside a task process there is no masker to tell; never cost a load for it
        logging.getLogger(__name__).debug("could not register a token with the secrets masker", exc_info=False)


def limiter_dir() -> Path:
    """Where the client-side rate limiters of one machine keep their shared state."""
    return Path(os.environ.get("TC_SENTINEL_LIMITER_DIR", "/tmp/tc-sentinel-limiters"))  # noqa: S108


#: The Connection of the Redis that keeps the request budgets when several hosts load (conn_type redis).
REDIS_CONN_ID = "tc_sentinel_redis"


def request_budget(identity: str, max_requests: int, per_seconds: float = 60.0) -> RequestBudget:
    """The request budget of one identity: in Redis when one is configured, else in a locked file of this machine.

    Redis is the Connection ``tc_sentinel_redis`` (host, port, password, extra ``db`` and ``ssl``) or, without it,
    the Celery broker when the executor is Celery and its broker is Redis: then every task of the identity on every
    worker draws from one budget. Otherwise the budget is a file under ``TC_SENTINEL_LIMITER_DIR``, shared only by
    the task processes of one machine.
    """
    url = _redis_url()
    if url is not None:
        from include.transport.redis_limiter import RedisRateLimiter

        return RedisRateLimiter(url, identity, max_requests, per_seconds)
    return SharedRateLimiter(limiter_path(limiter_dir(), identity), max_requests=max_requests, per_seconds=per_seconds)


def _redis_url() -> str | None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(REDIS_CONN_ID)
    except AirflowNotFoundException:
        from airflow.configuration import conf

        if "CeleryExecutor" not in str(conf.get("core", "executor", fallback="")):
            return None
        broker = str(conf.get("celery", "broker_url", fallback="") or "")
        return broker if broker.startswith(("redis://", "rediss://")) else None
    if connection.host and "://" in connection.host:
        return connection.host  # a whole URL in host
    scheme = "rediss" if str(connection.extra_dejson.get("ssl", "")).lower() in ("true", "1") else "redis"
    auth = (
        f"{quote(connection.login or '', safe='')}:{quote(connection.password, safe='')}@"
        if (connection.password)
        else ""
    )
    db = connection.extra_dejson.get("db", connection.schema or 0)
    return f"{scheme}://{auth}{connection.host or '127.0.0.1'}:{connection.port or 6379}/{db}"


class ThreatConnectHook(BaseHook):
    """``threatconnect_default``: host = API base URL (``https://app.threatconnect.com/api``), login = Access ID,
    password = Secret Key, extra ``owner`` and ``api_version`` (``v2`` or ``v3``)."""

    conn_name_attr = "threatconnect_conn_id"
    default_conn_name = "threatconnect_default"
    conn_type = "http"
    hook_name = "ThreatConnect"

    def __init__(self, threatconnect_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threatconnect_conn_id = threatconnect_conn_id

    def get_conn(self) -> ThreatConnectClient:
        redaction.install()  # before the Connection's secrets reach the process (see redaction.py)
        connection = self.get_connection(self.threatconnect_conn_id)
        extra = _require(connection, "owner")
        version = str(extra.get("api_version", "v3")).lower()
        if version not in ("v2", "v3"):
            raise ValueError(f"api_version must be v2 or v3, got {version!r}")
        return ThreatConnectClient(
            base_url(connection),
            connection.login,
            connection.password,
            owner=extra["owner"],
            api_version=version,
            page_size=int(extra.get("page_size", 10_000)),
        )


class MsGraphHook(BaseHook):
    """``msgraph_default``: host = Graph base URL, login = client id, password = client secret,
    extra ``tenant_id`` and ``authority_host``."""

    conn_name_attr = "msgraph_conn_id"
    default_conn_name = "msgraph_default"
    conn_type = "http"
    hook_name = "Microsoft Graph (tiIndicators)"

    def __init__(self, msgraph_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.msgraph_conn_id = msgraph_conn_id

    def get_conn(self) -> Any:
        return self._client(self._connection())

    def get_sink(self) -> Sink:
        from include.microsoft.graph import DEFAULT_IN_FLIGHT, GraphSink
        from include.transport.batch import configured_in_flight

        connection = self._connection()  # read once: a secrets backend is asked once per sink
        in_flight = configured_in_flight(connection.extra_dejson, DEFAULT_IN_FLIGHT)
        return GraphSink(self._client(connection), in_flight=in_flight)

    def _connection(self) -> Any:
        redaction.install()  # before the Connection's secrets reach the process (see redaction.py)
        return self.get_connection(self.msgraph_conn_id)

    @staticmethod
    def _client(connection: Any) -> Any:
        from include.microsoft.graph import DEFAULT_REQUESTS_PER_MINUTE, GraphClient

        extra = _require(connection, "tenant_id")
        tokens = TokenProvider(
            extra["tenant_id"],
            connection.login,
            connection.password,
            GRAPH_SCOPE,
            authority_host=extra.get("authority_host") or MICROSOFT_AUTHORITY_HOST,
            on_new_token=_mask,
        )
        limiter = request_budget(
            f"{connection.login}|{extra['tenant_id']}|graph",
            configured_rate(extra, DEFAULT_REQUESTS_PER_MINUTE),
            # The window requests_per_minute counts over; only a scaled-down test budget changes it.
            float(extra.get("budget_window_seconds") or 60),
        )
        return GraphClient(base_url(connection, "https://graph.microsoft.com"), tokens, limiter=limiter)


class SentinelHook(BaseHook):
    """``sentinel_default``: host = STIX upload endpoint (``https://api.ti.sentinel.azure.com``), login = client id,
    password = client secret, extra ``tenant_id``, ``workspace_id``, ``authority_host``; for verification through the
    management plane also ``subscription_id``, ``resource_group``, ``workspace_name`` (and ``management_host``)."""

    conn_name_attr = "sentinel_conn_id"
    default_conn_name = "sentinel_default"
    conn_type = "http"
    hook_name = "Microsoft Sentinel (STIX objects upload)"

    def __init__(self, sentinel_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sentinel_conn_id = sentinel_conn_id

    def get_sink(self, owner: str) -> Sink:
        from include.microsoft import sentinel

        redaction.install()  # before the Connection's secrets reach the process (see redaction.py)
        connection = self.get_connection(self.sentinel_conn_id)
        extra = _require(connection, "tenant_id", "workspace_id")
        return sentinel.sink_from_settings(
            endpoint=base_url(connection, "https://api.ti.sentinel.azure.com"),
            client_id=connection.login,
            client_secret=connection.password,
            extra=extra,
            owner=owner,
            limiter_root=limiter_dir(),
            budget=request_budget,
            on_new_token=_mask,
        )


def sink(name: str, owner: str) -> Sink:
    """The load target ``name``: a kind (its default Connection) or ``kind@conn_id`` (another Connection)."""
    kind, _, conn_id = name.partition("@")
    if kind == "graph":
        return MsGraphHook(conn_id or MsGraphHook.default_conn_name).get_sink()
    if kind == "sentinel":
        return SentinelHook(conn_id or SentinelHook.default_conn_name).get_sink(owner)
    if kind == "defender":
        return DefenderHook(conn_id or DefenderHook.default_conn_name).get_sink()
    raise ValueError(f"unknown sink {name!r}")


class DefenderHook(BaseHook):
    """``defender_default``: host = API base URL (``https://api.security.microsoft.com`` or a regional host),
    login = client id, password = client secret, extra ``tenant_id``, ``authority_host`` and optionally
    ``requests_per_minute``, ``action`` and ``rbac_group_names``."""

    conn_name_attr = "defender_conn_id"
    default_conn_name = "defender_default"
    conn_type = "http"
    hook_name = "Microsoft Defender for Endpoint (indicators)"

    def __init__(self, defender_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.defender_conn_id = defender_conn_id

    def _settings(self) -> dict[str, Any]:
        from include.microsoft.defender import DEFAULT_HOST, DEFENDER_SCOPE

        redaction.install()  # before the Connection's secrets reach the process (see redaction.py)
        connection = self.get_connection(self.defender_conn_id)
        return {
            "endpoint": base_url(connection, DEFAULT_HOST),
            "client_id": connection.login,
            "client_secret": connection.password,
            "extra": _require(connection, "tenant_id"),
            "limiter_root": limiter_dir(),
            "scope": DEFENDER_SCOPE,
            "budget": request_budget,
            "on_new_token": _mask,
        }

    def get_conn(self) -> Any:
        from include.microsoft import defender

        return defender.client_from_settings(**self._settings())

    def get_sink(self) -> Sink:
        from include.microsoft import defender

        return defender.sink_from_settings(**self._settings())

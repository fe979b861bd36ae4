"""Microsoft Defender for Endpoint indicators (``/api/indicators``): the client, the payload mapping and the sink.

Connection ``defender_default`` (read by the hook, not here): host = API base URL (default :data:`DEFAULT_HOST`;
regional ``us.|eu.|uk.|au.|swa.|ina.api.security.microsoft.com`` and the older ``api.securitycenter.microsoft.com``
serve the same API), login = client id, password = client secret, extra ``tenant_id``, ``authority_host``, and
optionally ``requests_per_minute``, ``action``, ``rbac_group_names``. The app needs the application permission
``Ti.ReadWrite`` (it sees only what it created) or ``Ti.ReadWrite.All`` of the WindowsDefenderATP API, and a
client-credentials token for :data:`DEFENDER_SCOPE`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from include.microsoft.defender.client import (
    DEFAULT_HOST,
    DEFAULT_IN_FLIGHT,
    DEFAULT_REQUESTS_PER_MINUTE,
    DEFENDER_HOSTS,
    DEFENDER_SCOPE,
    DefenderClient,
    DefenderError,
    DefenderPermanentError,
)
from include.microsoft.defender.payload import build_payload, indicator_key, severity_name
from include.microsoft.defender.sink import DefenderSink
from include.transport.batch import configured_in_flight
from include.transport.http import RequestBudget
from include.transport.limiter import budget_for, configured_rate

#: One budget for every call keeps the tightest one (import: 30 a minute per app).
REQUESTS_PER_MINUTE = DEFAULT_REQUESTS_PER_MINUTE

__all__ = [
    "DEFAULT_HOST",
    "DEFENDER_HOSTS",
    "DEFENDER_SCOPE",
    "REQUESTS_PER_MINUTE",
    "DefenderClient",
    "DefenderError",
    "DefenderPermanentError",
    "DefenderSink",
    "build_payload",
    "client_from_settings",
    "indicator_key",
    "severity_name",
    "sink_from_settings",
]


def client_from_settings(
    endpoint: str,
    client_id: str,
    client_secret: str,
    extra: Mapping[str, Any],
    limiter_root: Path | None,
    scope: str = DEFENDER_SCOPE,
    requests_per_minute: int = REQUESTS_PER_MINUTE,
    on_new_token: Callable[[str], None] | None = None,
    budget: Callable[[str, int, float], RequestBudget] | None = None,
) -> DefenderClient:
    """Build the Defender client from connection settings (what the Airflow hook reads).

    The limiter's state is keyed on the identity (client id + tenant): the API budget is per app, so every load task
    of that identity on this machine draws from one budget. ``extra["requests_per_minute"]`` overrides the default.
    ``budget(identity, max_requests, per_seconds)``, when given, builds the limiter instead (the hook's choice).
    """
    from include.microsoft.auth import MICROSOFT_AUTHORITY_HOST, TokenProvider

    tenant_id = str(extra["tenant_id"])
    tokens = TokenProvider(
        tenant_id,
        client_id,
        client_secret,
        scope,
        authority_host=str(extra.get("authority_host") or MICROSOFT_AUTHORITY_HOST),
        on_new_token=on_new_token,
    )
    identity = f"{client_id}|{tenant_id}|defender"
    limiter = budget_for(identity, configured_rate(extra, requests_per_minute), budget, limiter_root)
    return DefenderClient(endpoint or DEFAULT_HOST, tokens, client_id=client_id, limiter=limiter)


def sink_from_settings(
    endpoint: str,
    client_id: str,
    client_secret: str,
    extra: Mapping[str, Any],
    limiter_root: Path | None,
    scope: str = DEFENDER_SCOPE,
    requests_per_minute: int = REQUESTS_PER_MINUTE,
    on_new_token: Callable[[str], None] | None = None,
    budget: Callable[[str, int, float], RequestBudget] | None = None,
) -> DefenderSink:
    """Build the Defender sink from connection settings; ``extra`` may set ``action`` (default ``Alert``),
    ``rbac_group_names`` (a list, or one comma-separated string) and ``capacity`` (default 15,000)."""
    client = client_from_settings(
        endpoint, client_id, client_secret, extra, limiter_root, scope, requests_per_minute, on_new_token, budget
    )
    groups = extra.get("rbac_group_names") or []
    if isinstance(groups, str):
        groups = [g.strip() for g in groups.split(",") if g.strip()]
    return DefenderSink(
        client,
        action=str(extra.get("action") or "Alert"),
        rbac_group_names=groups,
        capacity=int(extra.get("capacity") or 15_000),
        in_flight=configured_in_flight(extra, DEFAULT_IN_FLIGHT),
    )

"""Preflight: prove every configured Connection can work before a run extracts or sends anything.

A configuration that can never work (a missing field, a malformed host, a refused secret, no access to the owner)
must fail the run at its first task with one message that names the Connection, not halfway after the data was
sent. Each check builds the real client through the hook and makes the cheapest request that proves it: one signed
one-row listing for ThreatConnect, one token for each Microsoft target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """The outcome of one Connection's check."""

    connection: str
    ok: bool
    detail: str
    permanent: bool = False  # no retry can change it (configuration, credentials, permissions)


def well_formed(url: str) -> str | None:
    """Why ``url`` cannot be an API base URL, or None when it can (https with a host, or loopback http)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{url!r} is not an http(s) URL with a host"
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return f"{url!r} is plain http: the APIs and MSAL need https"
    if " " in url:
        return f"{url!r} contains a space"
    return None


def _run(connection: str, probe: Callable[[], str]) -> Check:
    from include.pipeline.errors import PermanentError

    try:
        return Check(connection, True, probe())
    except Exception as exc:  # every failure becomes part of the one message the run fails with
        # A Connection that is missing or lacks a field is as permanent as a refused secret.
        permanent = isinstance(exc, PermanentError | ValueError | KeyError) or type(exc).__name__ in (
            "AirflowNotFoundException",
            "AirflowNotFound",
        )
        return Check(connection, False, f"{type(exc).__name__}: {exc}", permanent)


def _threatconnect(conn_id: str) -> tuple[Check, str | None]:
    from tc_sentinel.hooks import ThreatConnectHook

    owner: list[str] = []

    def probe() -> str:
        client = ThreatConnectHook(conn_id).get_conn()
        problem = well_formed(client.base_url)
        if problem:
            raise ValueError(f"host: {problem}")
        client.ping()
        owner.append(client.owner)
        return f"signed request accepted ({client.api_version}, owner {client.owner!r})"

    check = _run(conn_id, probe)
    return check, owner[0] if owner else None


def _graph(conn_id: str) -> Check:
    from tc_sentinel.hooks import MsGraphHook

    def probe() -> str:
        client = MsGraphHook(conn_id).get_sink().client  # the sink: its settings (max_in_flight) are read too
        problem = well_formed(client.base_url)
        if problem:
            raise ValueError(f"host: {problem}")
        client.token_provider.token()
        return "token issued for Microsoft Graph"

    return _run(conn_id, probe)


def _sentinel(conn_id: str, owner: str) -> Check:
    from tc_sentinel.hooks import SentinelHook

    def probe() -> str:
        sink = SentinelHook(conn_id).get_sink(owner)
        client = sink.client
        for url in (client.endpoint, *([client.management.host] if client.management else [])):
            problem = well_formed(url)
            if problem:
                raise ValueError(f"host: {problem}")
        client.token_provider.token()
        if client.management is None:
            return (
                "token issued; no management-plane coordinates (subscription_id, resource_group, "
                "workspace_name): verify will rely on the upload's acknowledgements"
            )
        if client.management.token_provider is not None:
            client.management.token_provider.token()
        return "token issued; verify reads back through the management plane"

    return _run(conn_id, probe)


def _defender(conn_id: str) -> Check:
    from tc_sentinel.hooks import DefenderHook

    def probe() -> str:
        client = DefenderHook(conn_id).get_sink().client  # the sink: its settings (max_in_flight) are read too
        problem = well_formed(client.base_url)
        if problem:
            raise ValueError(f"host: {problem}")
        client.token_provider.token()
        return "token issued for Microsoft Defender for Endpoint"

    return _run(conn_id, probe)


def check_all(
    targets: str | list[str] | tuple[str, ...], threatconnect_conn_id: str = "threatconnect_default"
) -> list[Check]:
    """Check ThreatConnect and every target's Connection (``kind`` or ``kind@conn_id``); never raises, returns
    one result each."""
    source, owner = _threatconnect(threatconnect_conn_id)
    checks = [source]
    for target in [targets] if isinstance(targets, str) else targets:
        kind, _, conn_id = target.partition("@")
        if kind == "graph":
            checks.append(_graph(conn_id or "msgraph_default"))
        elif kind == "sentinel":
            # The sourcesystem needs the owner; a broken ThreatConnect Connection still lets the target be checked.
            checks.append(_sentinel(conn_id or "sentinel_default", owner or "preflight"))
        elif kind == "defender":
            checks.append(_defender(conn_id or "defender_default"))
        else:
            checks.append(Check(target, False, f"unknown target {target!r}", permanent=True))
    return checks


def report(checks: list[Check]) -> dict[str, Any]:
    """Log each check; returns ``{connection: detail}``, the failures as one actionable message (or None), and
    whether a retry could change any of them (``transient``)."""
    for check in checks:
        (log.info if check.ok else log.error)(
            "preflight %s: %s: %s", check.connection, "ok" if check.ok else "FAILED", check.detail
        )
    failed = [c for c in checks if not c.ok]
    message = None
    if failed:
        message = "preflight failed, nothing was extracted or sent: " + "; ".join(
            f"Connection {c.connection!r}: {c.detail}" for c in failed
        )
    return {
        "checks": {c.connection: c.detail for c in checks},
        "error": message,
        "transient": any(not c.permanent for c in failed),
    }

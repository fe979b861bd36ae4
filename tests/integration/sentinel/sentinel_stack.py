"""Shared pieces of the Sentinel integration tests: identities, the simulated stack, normalized rows."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from include.microsoft.auth import ARM_SCOPE, TokenProvider
from include.microsoft.sentinel import ManagementTarget, SentinelClient
from include.pipeline.schema import NORMALIZED_SCHEMA
from include.transport.limiter import SharedRateLimiter
from simulators.mslogin import LoginService
from simulators.sentinel import SentinelService
from simulators.server import HttpsServer
from tests.fakes import FakeClock

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "cccccccc-0000-0000-0000-000000000001"
SECRET = "sentinel-app-secret-value"
OTHER_CLIENT = "dddddddd-0000-0000-0000-000000000002"
OTHER_SECRET = "other-sentinel-secret-value"
WORKSPACE = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9"
SUBSCRIPTION = "99999999-8888-7777-6666-555555555555"
RESOURCE_GROUP = "rg-security"
WORKSPACE_NAME = "law-sentinel"
SOURCE = "ThreatConnect-Example Org"
NAMESPACE = uuid.UUID("0b6a1e52-3f4d-4e1c-9a2b-7c8d9e0f1a2b")
BASE_TIME = dt.datetime(2026, 3, 2, 9, 15, tzinfo=dt.UTC)


@dataclass
class SentinelStack:
    """Everything a Sentinel integration test touches."""

    server: HttpsServer
    login: LoginService
    sentinel: SentinelService
    clock: FakeClock
    tmp_path: Path
    new_client: Callable[..., SentinelClient] = field(repr=False, default=None)  # type: ignore[assignment]

    def provider(self, client_id: str = CLIENT, secret: str = SECRET, scope: str = ARM_SCOPE) -> TokenProvider:
        return TokenProvider(TENANT, client_id, secret, scope, authority_host=self.server.base_url)

    def management(self, **kwargs: Any) -> ManagementTarget:
        return ManagementTarget(SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE_NAME, host=self.server.base_url, **kwargs)

    def limiter(self, max_requests: int, per_seconds: float, name: str = "shared") -> SharedRateLimiter:
        return SharedRateLimiter(self.tmp_path / f"{name}.json", max_requests, per_seconds)

    def objects(self, source: str = SOURCE) -> dict[str, dict[str, Any]]:
        """The latest stored version of every object of one source, by STIX id."""
        return {key[2]: obj for key, obj in self.sentinel.objects.items() if key[0] == WORKSPACE and key[1] == source}


_KINDS = {
    "ip": ("Address", "networkIPv4", None),
    "host": ("Host", "domainName", None),
    "url": ("URL", "url", None),
    "email": ("EmailAddress", "emailSenderAddress", None),
    "hash": ("File", "fileHashValue", "sha256"),
}


def make_row(index: int, kind: str = "ip", **overrides: Any) -> dict[str, Any]:
    """One normalized row; ``index`` makes its value (and so its external_id) distinct."""
    indicator_type, observable, hash_type = _KINDS[kind]
    value = {
        "ip": f"198.18.{index // 256 % 256}.{index % 256}",
        "host": f"h{index}.bad.example",
        "url": f"https://bad.example/p/{index}?q='x'",
        "email": f"user{index}@bad.example",
        "hash": f"{index:064x}",
    }[kind]
    row = {
        "external_id": str(uuid.uuid5(NAMESPACE, f"Example Org|{indicator_type}|{value}")),
        "indicator_type": indicator_type,
        "kind": kind,
        "value": value,
        "raw_value": value,
        "observable": observable,
        "hash_type": hash_type,
        "tc_id": 50_000 + index,
        "owner": "Example Org",
        "date_added": BASE_TIME - dt.timedelta(days=10),
        "last_modified": BASE_TIME + dt.timedelta(seconds=index),
        "confidence": 70,
        "severity": 3,
        "tlp": "green",
        "threat_type": "C2",
        "tags": ["campaign-x"],
        "description": f"{indicator_type} from Example Org",
        "valid_from": BASE_TIME,
        "expiration": BASE_TIME + dt.timedelta(days=30),
        "active": True,
        "false_positive": False,
        "web_link": f"https://app.threatconnect.com/auth/indicators/details/{index}",
    }
    row.update(overrides)
    return row


def make_rows(count: int, start: int = 0, kind: str = "ip", **overrides: Any) -> pd.DataFrame:
    """``count`` distinct normalized rows, as the load stage reads them from a Parquet snapshot."""
    rows = [make_row(start + i, kind, **overrides) for i in range(count)]
    return pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA).to_pandas()

"""Defender integration fixtures: login + Defender simulators on one loopback HTTPS server, clients bound to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from include.microsoft.auth import TokenProvider
from include.microsoft.defender import DEFENDER_SCOPE, DefenderClient, DefenderSink
from simulators.defender import DefenderService
from simulators.mslogin import LoginService
from simulators.server import HttpsServer
from simulators.tls import TlsMaterial, make_tls_material
from tests.fakes import FakeClock
from tests.unit.microsoft.graph_rows import normalized_row, rows_frame

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "eeeeeeee-0000-0000-0000-000000000001"
SECRET = "defender-app-secret-value"
OTHER_CLIENT = "ffffffff-0000-0000-0000-000000000002"
OTHER_SECRET = "other-defender-secret-value"


def public_ip(index: int) -> str:
    """A distinct public IPv4 address per index (45.0.0.0/8 is routable and not special-purpose)."""
    return f"45.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"


def ip_rows(count: int, start: int = 1, **overrides: Any) -> pd.DataFrame:
    """``count`` distinct public IPv4 rows (the Graph helper's 10.x addresses are internal, which Defender refuses)."""
    return rows_frame(
        [normalized_row("ipv4", i, **{"value": public_ip(i), **overrides}) for i in range(start, start + count)]
    )


@dataclass
class DefenderStack:
    """Everything a Defender integration test touches."""

    server: HttpsServer
    login: LoginService
    defender: DefenderService
    clock: FakeClock
    new_client: Callable[..., DefenderClient] = field(repr=False, default=None)  # type: ignore[assignment]

    def provider(self, client_id: str = CLIENT, secret: str = SECRET) -> TokenProvider:
        return TokenProvider(TENANT, client_id, secret, DEFENDER_SCOPE, authority_host=self.server.base_url)

    def ours(self) -> dict[str, dict[str, Any]]:
        """Our app's stored indicators keyed by value."""
        return {i["indicatorValue"]: i for i in self.defender.created_by(CLIENT)}


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(Path(tmp_path_factory.mktemp("defender-tls")))


@pytest.fixture
def stack(tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch) -> Iterator[DefenderStack]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("MSAL_FORCE_REGION", raising=False)
    login = LoginService()
    login.register(TENANT, CLIENT, SECRET)
    login.register(TENANT, OTHER_CLIENT, OTHER_SECRET)
    clock = FakeClock()
    defender = DefenderService(login, clock=clock)
    server = HttpsServer([login, defender], tls).start()
    login.base_url = server.base_url
    built = DefenderStack(server, login, defender, clock)

    def new_client(client_id: str = CLIENT, secret: str = SECRET, **kwargs: Any) -> DefenderClient:
        kwargs.setdefault("sleep", clock.sleep)
        return DefenderClient(server.base_url, built.provider(client_id, secret), client_id=client_id, **kwargs)

    built.new_client = new_client
    try:
        yield built
    finally:
        server.stop()


@pytest.fixture
def client(stack: DefenderStack) -> DefenderClient:
    return stack.new_client()


@pytest.fixture
def sink(client: DefenderClient) -> DefenderSink:
    return DefenderSink(client)

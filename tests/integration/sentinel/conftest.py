"""Sentinel integration fixtures: login + Sentinel simulators on one loopback HTTPS server, clients bound to them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.microsoft.sentinel import SentinelClient, SentinelSink
from simulators.mslogin import LoginService
from simulators.sentinel import SentinelService
from simulators.server import HttpsServer
from simulators.tls import TlsMaterial, make_tls_material
from tests.integration.sentinel.sentinel_stack import (
    CLIENT,
    OTHER_CLIENT,
    OTHER_SECRET,
    RESOURCE_GROUP,
    SECRET,
    SOURCE,
    SUBSCRIPTION,
    TENANT,
    WORKSPACE,
    WORKSPACE_NAME,
    FakeClock,
    SentinelStack,
)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(Path(tmp_path_factory.mktemp("sentinel-tls")))


@pytest.fixture
def stack(tls: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelStack]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("MSAL_FORCE_REGION", raising=False)
    login = LoginService()
    login.register(TENANT, CLIENT, SECRET)
    login.register(TENANT, OTHER_CLIENT, OTHER_SECRET)
    clock = FakeClock()
    sentinel = SentinelService(login, {WORKSPACE}, clock=clock)
    sentinel.register_management(WORKSPACE, SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE_NAME)
    server = HttpsServer([login, sentinel], tls).start()
    login.base_url = server.base_url
    built = SentinelStack(server, login, sentinel, clock, tmp_path)

    def new_client(
        client_id: str = CLIENT, secret: str = SECRET, workspace: str = WORKSPACE, **kwargs: Any
    ) -> SentinelClient:
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("management", built.management())
        provider = kwargs.pop("token_provider", None) or built.provider(client_id, secret)
        return SentinelClient(server.base_url, workspace, provider, **kwargs)

    built.new_client = new_client
    try:
        yield built
    finally:
        server.stop()


@pytest.fixture
def client(stack: SentinelStack) -> SentinelClient:
    return stack.new_client()


@pytest.fixture
def sink(client: SentinelClient) -> SentinelSink:
    return SentinelSink(client, SOURCE)

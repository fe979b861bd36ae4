"""Graph integration fixtures: login + Graph simulators on one loopback HTTPS server, and clients bound to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.microsoft.auth import GRAPH_SCOPE, TokenProvider
from include.microsoft.graph import GraphClient, GraphSink
from simulators.graph import GraphService
from simulators.mslogin import LoginService
from simulators.server import HttpsServer
from simulators.tls import TlsMaterial, make_tls_material
from tests.fakes import FakeClock

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-0000-0000-0000-000000000001"
SECRET = "graph-app-secret-value"
OTHER_CLIENT = "bbbbbbbb-0000-0000-0000-000000000002"
OTHER_SECRET = "other-app-secret-value"


@dataclass
class GraphStack:
    """Everything a Graph integration test touches."""

    server: HttpsServer
    login: LoginService
    graph: GraphService
    clock: FakeClock
    new_client: Callable[..., GraphClient]

    def provider(self, client_id: str = CLIENT, secret: str = SECRET) -> TokenProvider:
        return TokenProvider(TENANT, client_id, secret, GRAPH_SCOPE, authority_host=self.server.base_url)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(Path(tmp_path_factory.mktemp("graph-tls")))


@pytest.fixture
def stack(tls: TlsMaterial, monkeypatch: pytest.MonkeyPatch) -> Iterator[GraphStack]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("MSAL_FORCE_REGION", raising=False)
    login = LoginService()
    login.register(TENANT, CLIENT, SECRET)
    login.register(TENANT, OTHER_CLIENT, OTHER_SECRET)
    clock = FakeClock()
    graph = GraphService(login, clock=clock)
    server = HttpsServer([login, graph], tls).start()
    login.base_url = server.base_url
    holder: dict[str, GraphStack] = {}

    def new_client(client_id: str = CLIENT, secret: str = SECRET, **kwargs: object) -> GraphClient:
        provider = holder["stack"].provider(client_id, secret)
        return GraphClient(server.base_url, provider, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]

    holder["stack"] = GraphStack(server, login, graph, clock, new_client)
    try:
        yield holder["stack"]
    finally:
        server.stop()


@pytest.fixture
def client(stack: GraphStack) -> GraphClient:
    return stack.new_client()


@pytest.fixture
def sink(client: GraphClient) -> GraphSink:
    return GraphSink(client)

"""Fixtures for the ThreatConnect client against the simulator over real HTTPS on loopback."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from include.threatconnect.client import ThreatConnectClient
from simulators.dataset import DEFAULT_OWNER, generate
from simulators.server import HttpsServer
from simulators.threatconnect import ThreatConnectService, start_threatconnect
from simulators.tls import TlsMaterial, make_tls_material

ACCESS_ID = "12345678901234567890"
SECRET_KEY = "integration-secret-key"
START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 5, 15, tzinfo=dt.UTC)
COUNT = 2_500  # 500 per type: several pages of 100


@pytest.fixture(scope="session")
def tc_window() -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) range that every generated record's lastModified falls in."""
    return START, END


@pytest.fixture(scope="session")
def tc_credentials() -> tuple[str, str]:
    return ACCESS_ID, SECRET_KEY


@pytest.fixture(scope="session")
def tc_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(Path(tmp_path_factory.mktemp("tc-tls")))


@pytest.fixture(scope="session")
def tc_records() -> list[dict[str, Any]]:
    return generate(2024, COUNT, DEFAULT_OWNER, START, END)


@pytest.fixture
def tc_simulator(
    tc_tls: TlsMaterial, tc_records: list[dict[str, Any]]
) -> Iterator[tuple[HttpsServer, ThreatConnectService]]:
    server, service = start_threatconnect(tc_tls, tc_records, ACCESS_ID, SECRET_KEY)
    try:
        yield server, service
    finally:
        server.stop()


@pytest.fixture
def tc_client_factory(
    tc_tls: TlsMaterial, tc_simulator: tuple[HttpsServer, ThreatConnectService]
) -> Iterator[Callable[..., ThreatConnectClient]]:
    server, _ = tc_simulator
    sessions: list[requests.Session] = []

    def make(api_version: str, **options: Any) -> ThreatConnectClient:
        session = requests.Session()
        session.verify = str(tc_tls.ca_file)
        sessions.append(session)
        options.setdefault("page_size", 100)
        options.setdefault("sleep", lambda seconds: None)
        options.setdefault("clock", time.time)
        return ThreatConnectClient(
            server.base_url + "/api",
            options.pop("access_id", ACCESS_ID),
            options.pop("secret_key", SECRET_KEY),
            options.pop("owner", DEFAULT_OWNER),
            api_version=api_version,
            session=session,
            **options,
        )

    yield make
    for session in sessions:
        session.close()

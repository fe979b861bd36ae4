"""The simulator stack's ``defender_default`` Connection through ``DefenderHook``: a ready sink, the shared limiter
set from the extra, and indicators that land in the stack's Defender simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.microsoft.defender import DefenderClient, DefenderSink
from simulators.stack import CLIENT_ID, Stack, start_stack
from tests.fakes import FakeClock
from tests.integration.defender.conftest import ip_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    stack = start_stack(tmp_path, [])
    stack.defender.clock = FakeClock()  # the sample rows expire in 2026: keep them in the future
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.tls.ca_file))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("TC_SENTINEL_LIMITER_DIR", str(tmp_path / "limiters"))
    try:
        yield stack
    finally:
        stack.stop()


def _use_connection(stack: Stack, monkeypatch: pytest.MonkeyPatch, **extra: object) -> None:
    connection = stack.connections()["defender_default"]
    connection["extra"] = {**connection["extra"], **extra}
    monkeypatch.setenv("AIRFLOW_CONN_DEFENDER_DEFAULT", json.dumps(connection))


def test_the_stack_connection_gives_a_sink_that_loads_into_the_defender_simulator(
    running: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tc_sentinel.hooks import DefenderHook

    _use_connection(running, monkeypatch)
    sink = DefenderHook().get_sink()
    assert isinstance(sink, DefenderSink)
    results = sink.upsert(ip_rows(3))
    assert {r.status for r in results} == {"ok"}
    assert len(running.defender.created_by(CLIENT_ID)) == 3
    assert set(sink.fetch([r.external_id for r in results])) == {r.external_id for r in results}


def test_the_requests_per_minute_extra_sets_the_shared_budget(running: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from tc_sentinel.hooks import DefenderHook

    _use_connection(running, monkeypatch, requests_per_minute=12, action="Block")
    client = DefenderHook().get_conn()
    assert isinstance(client, DefenderClient)
    assert client.limiter is not None
    assert client.limiter.max_requests == 12
    assert client.client_id == CLIENT_ID
    assert DefenderHook().get_sink().action == "Block"

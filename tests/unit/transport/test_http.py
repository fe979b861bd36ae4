"""The one HTTP layer: its retry policy, Retry-After, auth refresh, budget and ambiguous failures, tested once here.

Scripted answers stand in for servers where only the status matters; the connection cases use real sockets on
loopback (a closed port, a server that hangs up mid-request), because what urllib3 raises there is the point.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from include.pipeline.errors import PermanentError
from include.transport.http import BearerAuth, RetryPolicy, TlsError, Transport, TransportError, never_sent

URL = "https://api.example/things"


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    response.headers.update(headers or {})
    response.url = URL
    return response


class Scripted:
    """A session that answers from a script (responses or exceptions) and records the headers each request had."""

    def __init__(self, *script: requests.Response | Exception) -> None:
        self.script = list(script)
        self.authorizations: list[str | None] = []

    def request(self, method: str, url: str, auth: Any = None, headers: Any = None, **_: Any) -> requests.Response:
        prepared = requests.Request(method, url, headers=headers).prepare()
        if auth is not None:
            auth(prepared)
        self.authorizations.append(prepared.headers.get("Authorization"))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Tokens:
    """A token source whose tokens are numbered; ``invalidate`` makes the next one new."""

    def __init__(self) -> None:
        self.issued = 1

    def token(self) -> str:
        return f"token-{self.issued}"

    def invalidate(self) -> None:
        self.issued += 1


class Budget:
    """Records what the transport asks of the shared budget."""

    def __init__(self) -> None:
        self.acquired = 0
        self.pauses: list[float] = []

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0

    def penalise(self, seconds: float) -> None:
        self.pauses.append(seconds)


def _transport(session: Any, **kwargs: Any) -> tuple[Transport, list[float]]:
    sleeps: list[float] = []
    kwargs.setdefault("policy", RetryPolicy(max_retries=3, backoff=1.0))
    return Transport(session, sleep=sleeps.append, **kwargs), sleeps


def test_a_429_waits_the_seconds_retry_after_gives() -> None:
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": "7"}), _response(200)))
    assert transport.send("GET", URL).status_code == 200
    assert sleeps == [7.0]
    assert (transport.requests_sent, transport.throttled) == (2, 1)


def test_a_429_waits_until_the_http_date_retry_after_gives() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    header = email.utils.format_datetime(when, usegmt=True)
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": header}), _response(200)))
    transport.send("GET", URL)
    assert len(sleeps) == 1
    assert 80 <= sleeps[0] <= 91  # whole seconds in the header; the clock moved a little since


def test_a_429_with_only_a_body_hint_waits_what_the_body_says() -> None:
    body = {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 45 seconds."}
    transport, sleeps = _transport(Scripted(_response(429, body), _response(200)))
    transport.send("POST", URL, json={})
    assert sleeps == [45.0]


def test_a_429_without_a_readable_hint_backs_off() -> None:
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": "soon"}), _response(200)))
    transport.send("GET", URL)
    assert sleeps == [1.0]


def test_a_server_wait_beyond_the_policy_is_capped() -> None:
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": "86400"}), _response(200)))
    transport.send("GET", URL)
    assert sleeps == [RetryPolicy().max_server_wait]


def test_5xx_backs_off_exponentially_and_the_last_answer_comes_back() -> None:
    transport, sleeps = _transport(Scripted(*[_response(503)] * 4))
    assert transport.send("GET", URL).status_code == 503
    assert sleeps == [1.0, 2.0, 4.0]
    assert transport.requests_sent == 4


def test_our_own_back_off_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, backoff=1.0, max_backoff=5.0)
    assert [policy.backoff_for(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_4xx_other_than_429_is_returned_at_once() -> None:
    transport, sleeps = _transport(Scripted(_response(400, {"error": "bad"})))
    assert transport.send("POST", URL, json={}).status_code == 400
    assert (sleeps, transport.requests_sent) == ([], 1)


def test_an_expired_token_is_replaced_once_and_the_request_resent() -> None:
    tokens = Tokens()
    session = Scripted(_response(401), _response(200))
    transport, sleeps = _transport(session, auth=BearerAuth(tokens))
    assert transport.send("GET", URL).status_code == 200
    assert session.authorizations == ["Bearer token-1", "Bearer token-2"]
    assert sleeps == []


def test_a_second_401_after_a_fresh_token_is_returned_for_the_caller_to_fail() -> None:
    tokens = Tokens()
    session = Scripted(_response(401), _response(401))
    transport, _ = _transport(session, auth=BearerAuth(tokens))
    assert transport.send("GET", URL).status_code == 401
    assert tokens.issued == 2


def test_an_auth_without_a_refresh_gets_its_401_back_at_once() -> None:
    def signer(request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = "TC signed"
        return request

    transport, _ = _transport(Scripted(_response(401)), auth=signer)
    assert transport.send("GET", URL).status_code == 401
    assert transport.requests_sent == 1


def test_every_physical_request_is_admitted_by_the_budget_and_a_429_pauses_it_for_everyone() -> None:
    budget = Budget()
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": "9"}), _response(200)), limiter=budget)
    transport.send("GET", URL)
    assert budget.acquired == 2
    assert budget.pauses == [9.0]
    assert sleeps == []  # the wait happens in the shared budget, not twice


def test_a_non_idempotent_call_refused_with_429_or_503_is_resent() -> None:
    transport, sleeps = _transport(Scripted(_response(429, None, {"Retry-After": "1"}), _response(503), _response(200)))
    assert transport.send("POST", URL, json={}, idempotent=False).status_code == 200
    assert sleeps == [1.0, 2.0]


def test_a_non_idempotent_call_answered_500_is_not_resent() -> None:
    transport, _ = _transport(Scripted(_response(500)))
    assert transport.send("POST", URL, json={}, idempotent=False).status_code == 500
    assert transport.requests_sent == 1


# ------------------------------------------------------------------------------- real sockets
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def hangs_up() -> Iterator[str]:
    """A server that reads the request, then closes the connection without answering."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/things"
    stop.set()
    server.close()
    thread.join(2)


def test_a_refused_connection_proves_the_request_never_left_so_even_a_submit_is_retried() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/things"
    with pytest.raises(requests.ConnectionError) as raised:
        requests.post(url, json={}, timeout=5)
    assert never_sent(raised.value)
    transport, _ = _transport(requests.Session(), policy=RetryPolicy(max_retries=2, backoff=0.0))
    with pytest.raises(TransportError) as failed:
        transport.send("POST", url, json={}, idempotent=False)
    assert not failed.value.ambiguous
    assert transport.requests_sent == 3


def test_a_connection_dropped_after_sending_is_retried_for_a_read(hangs_up: str) -> None:
    transport, _ = _transport(requests.Session(), policy=RetryPolicy(max_retries=2, backoff=0.0))
    with pytest.raises(TransportError) as failed:
        transport.send("GET", hangs_up)
    assert not failed.value.ambiguous
    assert transport.requests_sent == 3


def test_a_connection_dropped_after_a_submit_left_is_ambiguous_and_not_resent(hangs_up: str) -> None:
    transport, _ = _transport(requests.Session(), policy=RetryPolicy(max_retries=2, backoff=0.0))
    with pytest.raises(TransportError) as failed:
        transport.send("POST", hangs_up, json={"value": [1]}, idempotent=False)
    assert failed.value.ambiguous
    assert transport.requests_sent == 1
    assert "not resent" in str(failed.value)


def test_a_tls_failure_is_permanent_and_not_retried() -> None:
    transport, sleeps = _transport(Scripted(requests.exceptions.SSLError("certificate verify failed")))
    with pytest.raises(TlsError) as failed:
        transport.send("GET", URL)
    assert isinstance(failed.value, PermanentError)
    assert (transport.requests_sent, sleeps) == (1, [])


def test_log_lines_show_the_path_but_never_the_query_string(caplog: pytest.LogCaptureFixture) -> None:
    transport, _ = _transport(Scripted(_response(503), _response(200)))
    transport.send("GET", URL + "?$skiptoken=SECRETISH")
    assert "/things" in caplog.text
    assert "SECRETISH" not in caplog.text


def test_requests_refused_together_for_one_expired_token_drop_it_once() -> None:
    # Several requests in flight come back 401 for the same token: the first drops it, the rest resend with the new.
    tokens = Tokens()
    auth = BearerAuth(tokens)
    auth.refresh("Bearer token-1")
    auth.refresh("Bearer token-1")
    assert tokens.token() == "token-2"
    auth.refresh("Bearer token-2")
    assert tokens.token() == "token-3"

"""DefenderClient without a network: paging that refuses to loop, Retry-After as an HTTP date, results matched to
the indicators sent, and which failure reasons count as content refusals."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from typing import Any

import pytest
import requests

from include.microsoft.defender import DefenderClient, DefenderError
from include.microsoft.defender.client import align_results
from include.microsoft.defender.sink import is_content_refusal
from tests.fakes import FakeClock


class _Tokens:
    def token(self) -> str:
        return "token"


class _Session:
    """Answers queued (status, body, headers) triples and records every request."""

    def __init__(self, answers: list[tuple[int, Any, dict[str, str]]]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, str, dict[str, str] | None]] = []

    def request(self, method: str, url: str, params: dict[str, str] | None = None, **_: Any) -> requests.Response:
        self.sent.append((method, url, params))
        status, body, headers = self.answers.pop(0) if self.answers else (200, {"value": []}, {})
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        response.headers.update(headers)
        return response


def _client(session: _Session, clock: FakeClock | None = None) -> DefenderClient:
    clock = clock or FakeClock()
    return DefenderClient(
        "https://defender.invalid",
        _Tokens(),
        client_id="app",
        session=session,  # type: ignore[arg-type]
        sleep=clock.sleep,
    )


def test_a_repeated_next_link_ends_the_listing_with_an_error() -> None:
    link = "https://defender.invalid/api/indicators?$skip=1"
    session = _Session(
        [
            (200, {"value": [{"id": "1"}], "@odata.nextLink": link}, {}),
            (200, {"value": [{"id": "2"}], "@odata.nextLink": link}, {}),
        ]
    )
    with pytest.raises(DefenderError, match=r"repeated an @odata\.nextLink"):
        list(_client(session).list_indicators())


def test_a_server_that_ignores_skip_cannot_make_the_listing_loop() -> None:
    page = {"value": [{"id": "1"}, {"id": "2"}]}
    session = _Session([(200, page, {}), (200, page, {})])
    with pytest.raises(DefenderError, match="repeated a page"):
        list(_client(session).list_indicators(top=2))
    assert session.sent[1][2] == {"$top": "2", "$skip": "2"}


def test_retry_after_as_an_http_date_is_honoured() -> None:
    clock = FakeClock(now=dt.datetime.now(dt.UTC).timestamp())
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    session = _Session(
        [
            (429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": when}),
            (200, {"value": [{"id": "1", "indicator": "x", "isFailed": False}]}, {}),
        ]
    )
    _client(session, clock).import_indicators([{"indicatorValue": "x"}])
    assert len(clock.sleeps) == 1
    assert 25 <= clock.sleeps[0] <= 30


def test_results_out_of_order_are_matched_by_value_and_missing_ones_fail() -> None:
    sent = [{"indicatorValue": "a"}, {"indicatorValue": "B"}, {"indicatorValue": "c"}]
    results = [{"id": "2", "indicator": "b", "isFailed": False}, {"id": "1", "indicator": "a", "isFailed": False}]
    aligned = align_results(sent, results)
    assert [r["id"] for r in aligned] == ["1", "2", None]
    assert aligned[2]["isFailed"] is True


@pytest.mark.parametrize(
    ("reason", "content"),
    [
        ("InvalidIpAddress: indicators can't be created for internal IPs.", True),
        ("The tenant has reached the limit of 15000 active indicators", True),
        ("An indicator with this type and value already exists", True),
        ("Simulated internal error; try again later.", False),
        ("", False),
        (None, False),
    ],
)
def test_only_reasons_about_the_content_or_the_cap_count_as_refusals(reason: str | None, content: bool) -> None:
    assert is_content_refusal(reason) is content

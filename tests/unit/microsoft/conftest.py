"""Fixtures for the Microsoft-side unit tests (Graph)."""

from __future__ import annotations

import pytest

from include.microsoft.graph import GraphClient, GraphSink


class FakeTokenProvider:
    """Hands out numbered tokens and counts invalidations, instead of MSAL."""

    def __init__(self) -> None:
        self.issued = 0
        self.invalidations = 0

    def token(self) -> str:
        if self.issued == self.invalidations:
            self.issued += 1
        return f"token-{self.issued}"

    def invalidate(self) -> None:
        self.invalidations += 1


@pytest.fixture
def token_provider() -> FakeTokenProvider:
    return FakeTokenProvider()


@pytest.fixture
def offline_sink(token_provider: FakeTokenProvider) -> GraphSink:
    """A sink whose client is never called (payload and comparison tests)."""
    return GraphSink(GraphClient("https://graph.invalid", token_provider))  # type: ignore[arg-type]

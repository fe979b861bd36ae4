"""ThreatConnect HMAC signing: the reference's test vectors, encoded paths, and the injectable clock."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
import requests

from include.threatconnect.auth import HmacAuth, signature

SECRET = "my-secret-key"
TS = 1513703787


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v2/indicators?owner=Common%20Community", "M5XSZrlACf7Ephj0EwPsI6/ALQxynZXHYRjhb6XJO4E="),
        ("/api/v2/indicators?owner=Common%20Community", "/LUfAy6eU+A3QgDTaurm8qBUUyVKlXBPhp8GYQUmbSw="),
    ],
)
def test_the_signature_matches_the_reference_test_vectors(target: str, expected: str) -> None:
    assert signature(SECRET, target, "GET", TS) == expected


def test_the_method_is_signed_upper_case() -> None:
    assert signature(SECRET, "/v2/owners", "get", TS) == signature(SECRET, "/v2/owners", "GET", TS)


def _sign(url: str, clock: float = TS) -> requests.PreparedRequest:
    prepared = requests.Request("GET", url).prepare()
    return HmacAuth("12345678901234567890", SECRET, clock=lambda: clock)(prepared)


def _expected(target: str, timestamp: int = TS) -> str:
    digest = hmac.new(SECRET.encode(), f"{target}:GET:{timestamp}".encode(), hashlib.sha256).digest()
    return f"TC 12345678901234567890:{base64.b64encode(digest).decode()}"


def test_the_auth_class_signs_the_path_and_query_exactly_as_sent() -> None:
    prepared = _sign("https://app.threatconnect.com/api/v2/indicators?owner=Common%20Community")
    assert prepared.path_url == "/api/v2/indicators?owner=Common%20Community"
    assert prepared.headers["Timestamp"] == str(TS)
    assert prepared.headers["Authorization"] == "TC 12345678901234567890:/LUfAy6eU+A3QgDTaurm8qBUUyVKlXBPhp8GYQUmbSw="


def test_an_encoded_path_segment_is_signed_encoded() -> None:
    url = "https://tc.example/api/v2/indicators/urls/http%3A%2F%2Fbad.example%2Fx?owner=Org"
    prepared = _sign(url)
    assert prepared.path_url == "/api/v2/indicators/urls/http%3A%2F%2Fbad.example%2Fx?owner=Org"
    assert prepared.headers["Authorization"] == _expected(prepared.path_url)


def test_a_path_without_query_is_signed_without_a_question_mark() -> None:
    prepared = _sign("https://tc.example/api/v2/owners")
    assert prepared.headers["Authorization"] == _expected("/api/v2/owners")
    assert prepared.headers["Authorization"] != _expected("/api/v2/owners?")


def test_the_clock_is_injectable_and_truncated_to_whole_seconds() -> None:
    prepared = _sign("https://tc.example/api/v2/owners", clock=1_700_000_000.9)
    assert prepared.headers["Timestamp"] == "1700000000"
    assert prepared.headers["Authorization"] == _expected("/api/v2/owners", 1_700_000_000)


def test_the_repr_does_not_reveal_the_secret() -> None:
    text = repr(HmacAuth("my-access-id", SECRET))
    assert SECRET not in text
    assert "my-access-id" in text


def test_missing_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="required"):
        HmacAuth("", SECRET)

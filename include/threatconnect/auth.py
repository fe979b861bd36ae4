"""ThreatConnect API HMAC request signing as a ``requests`` auth class, with an injectable clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

import requests


def signature(secret_key: str, path_and_query: str, method: str, timestamp: int) -> str:
    """Compute ThreatConnect's request signature.

    Args:
        secret_key: The API user's secret key.
        path_and_query: The request-target exactly as sent on the wire (path, plus ``?`` and the raw,
            already percent-encoded query when there is one), without scheme and host.
        method: The HTTP method; ThreatConnect signs it upper-case.
        timestamp: Unix epoch seconds, the same integer sent in the ``Timestamp`` header.

    Returns:
        Standard base64 of HMAC-SHA256 over ``"<path?query>:<METHOD>:<timestamp>"``.
    """
    message = f"{path_and_query}:{method.upper()}:{int(timestamp)}"
    digest = hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class HmacAuth(requests.auth.AuthBase):
    """Sign each request with ThreatConnect's ``TC <access id>:<signature>`` scheme.

    The signature covers ``PreparedRequest.path_url``, i.e. the target as requests will put it on the wire,
    so whatever percent-encoding requests chose is what the server verifies (ThreatConnect hashes the raw
    bytes it received).
    """

    def __init__(self, access_id: str, secret_key: str, clock: Callable[[], float] = time.time) -> None:
        if not access_id or not secret_key:
            raise ValueError("access_id and secret_key are both required")
        self.access_id = access_id
        self._secret_key = secret_key
        self._clock = clock

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        timestamp = int(self._clock())
        sig = signature(self._secret_key, request.path_url, request.method or "GET", timestamp)
        request.headers["Timestamp"] = str(timestamp)
        request.headers["Authorization"] = f"TC {self.access_id}:{sig}"
        return request

    def __repr__(self) -> str:
        return f"HmacAuth(access_id={self.access_id!r}, secret_key=<redacted>)"

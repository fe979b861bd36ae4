"""ThreatConnect's REST indicator API (v2 and v3, HMAC-signed): the service's authentication and routing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from simulators.server import HttpsServer, Request, Response
from simulators.threatconnect.contract import BY_BRANCH, MAX_SKEW_SECONDS, HttpError
from simulators.threatconnect.store import IndicatorStore
from simulators.threatconnect.v2 import v2_deleted, v2_list
from simulators.threatconnect.v3 import v3_deleted, v3_list
from simulators.tls import TlsMaterial


class ThreatConnectService(IndicatorStore):
    """A handler for ``HttpsServer`` serving one ThreatConnect instance's indicators under ``base_path``.

    Records are the internal dicts of ``simulators.dataset.generate`` (datetimes for dates). Test hooks:
    ``requests`` (method and raw target of every request seen), ``fail_next`` (chaos), ``put``/``delete``, and
    ``deleted_date_added`` (what ``dateAdded`` means in the deleted-indicators listings).
    """

    def __init__(
        self,
        indicators: Iterable[dict[str, Any]],
        access_id: str,
        secret_key: str,
        owners: Sequence[str] = ("Example Organization",),
        clock: Callable[[], float] = time.time,
        base_path: str = "/api",
        auth_failure_status: int = 401,
        deleted_date_added: str = "added",
    ) -> None:
        self.access_id = access_id
        self.secret_key = secret_key
        self.clock = clock
        self.base_path = base_path.rstrip("/")
        self.auth_failure_status = auth_failure_status  # the code for a bad signature today is UNCONFIRMED
        self.requests: list[tuple[str, str]] = []
        super().__init__(indicators, owners, deleted_date_added)

    # --- dispatch -----------------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response | None:
        path = request.path
        prefix = self.base_path
        if not (path.startswith(prefix + "/v2/") or path.startswith(prefix + "/v3/")):
            return None
        route = path[len(prefix) :]
        v3 = route.startswith("/v3/")
        with self._lock:
            self.requests.append((request.method, request.target))
            if self._failures:
                status, retry_after = self._failures.pop(0)
                headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
                return Response(status, {"status": "Failure", "message": "Service Unavailable"}, headers)
        try:
            self._authenticate(request)
            if request.method != "GET":
                raise HttpError(405, f"Method {request.method} is not supported by the simulator")
            with self._lock:
                return self._route(request, route)
        except HttpError as error:
            if error.auth or not v3:
                return Response(error.status, {"status": "Failure", "message": error.message})
            return Response(error.status, {"errCode": "0x1001", "message": error.message, "status": "Error"})

    def _denied(self, message: str) -> HttpError:
        return HttpError(self.auth_failure_status, message, auth=True)

    def _authenticate(self, request: Request) -> None:
        scheme, _, credentials = (request.header("Authorization") or "").partition(" ")
        access_id, _, presented = credentials.rpartition(":")
        if scheme != "TC" or not access_id or not presented:
            raise self._denied("Access Denied")
        raw_timestamp = request.header("Timestamp") or ""
        try:
            timestamp = int(raw_timestamp)
        except ValueError:
            raise self._denied("Invalid timestamp") from None
        if abs(self.clock() - timestamp) > MAX_SKEW_SECONDS:
            raise self._denied("Timestamp out of acceptable time range")
        if not hmac.compare_digest(access_id, self.access_id):
            raise self._denied("Access Denied")
        # The raw request-target byte for byte: TC hashes what it received, never a decoded path.
        message = f"{request.target}:{request.method}:{raw_timestamp}"
        expected = base64.b64encode(
            hmac.new(self.secret_key.encode(), message.encode(), hashlib.sha256).digest()
        ).decode()
        if not hmac.compare_digest(expected, presented):
            raise self._denied("Signature data did not match expected result")

    def _route(self, request: Request, route: str) -> Response:
        parts = route.strip("/").split("/")
        if parts[:2] == ["v3", "indicators"]:
            if len(parts) == 2:
                return v3_list(self, request)
            if parts[2:] == ["deleted"]:
                return v3_deleted(self, request)
        if parts[:2] == ["v2", "indicators"]:
            rest = parts[2:]
            if not rest:
                return v2_list(self, request, None)
            if rest == ["deleted"]:
                return v2_deleted(self, request, None)
            kind = BY_BRANCH.get(rest[0])
            if kind is not None and len(rest) == 1:
                return v2_list(self, request, kind)
            if kind is not None and rest[1:] == ["deleted"]:
                return v2_deleted(self, request, kind)
        raise HttpError(404, "The requested resource was not found")


def start_threatconnect(
    tls: TlsMaterial, indicators: Iterable[dict[str, Any]], access_id: str, secret_key: str, **options: Any
) -> tuple[HttpsServer, ThreatConnectService]:
    """Start a ThreatConnect simulator on loopback; the API base URL is ``server.base_url + "/api"``.

    Args:
        tls: Certificate material from ``simulators.tls.make_tls_material``.
        indicators: Internal records (``simulators.dataset.generate``).
        access_id: The API user's access id.
        secret_key: The API user's secret key.
        **options: Passed to ``ThreatConnectService`` (owners, clock, base_path, auth_failure_status,
            deleted_date_added).

    Returns:
        The started server (stop it with ``server.stop()``) and the service, for its test hooks.
    """
    service = ThreatConnectService(indicators, access_id, secret_key, **options)
    server = HttpsServer([service], tls).start()
    return server, service

"""The one HTTP layer under every client: session, retry policy (tenacity), ``Retry-After``, auth refresh, budget.

Every client (ThreatConnect, Graph, Sentinel, Defender) is a thin layer of operations over a :class:`Transport`,
the way every Azure SDK client sits on azure-core's pipeline. What is decided here, once:

- **What is transient.** 429 and 5xx answers, dropped or refused connections and timeouts are retried with
  exponential back-off, at most ``max_retries`` times; a 429 waits what the server asks (``Retry-After`` or the body's
  "Try again in N seconds", see :func:`include.transport.retry_after.retry_after`) and pauses the shared budget for
  every process of the identity. A TLS failure is permanent (:class:`TlsError`): no retry fixes a certificate.
- **Non-idempotent calls** (``idempotent=False``) are resent only after answers that prove nothing was done (429,
  503) or a connection that never opened; any other failure after the request left raises
  :class:`TransportError` with ``ambiguous=True`` for the caller to reconcile (Graph looks the ids up).
- **Auth.** A :class:`BearerAuth` takes a fresh token after a 401 and resends once; an auth class without a refresh
  (ThreatConnect's HMAC) gets the 401 back.
- **Budget.** A :class:`RequestBudget` (the shared limiter) admits every physical request, retries included.

The transport returns the final response whatever its status: turning statuses into errors is each API's business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3

from include.pipeline.errors import PermanentError
from include.transport.batch import MAX_IN_FLIGHT
from include.transport.retry_after import retry_after

log = logging.getLogger(__name__)

USER_AGENT = "tc-sentinel/0.1 (+https://github.com/tc-sentinel)"


class RequestBudget(Protocol):
    """A request budget shared by every process of one identity (see ``include.transport.limiter``)."""

    max_requests: int  # admitted per window
    per_seconds: float  # the window

    def acquire(self) -> float:
        """Block until one more request fits; return the seconds waited."""
        ...

    def penalise(self, seconds: float) -> None:
        """Pause every holder of the budget for ``seconds`` (a server answered 429)."""
        ...


class TokenSource(Protocol):
    """Issues bearer tokens (``include.microsoft.auth.TokenProvider``) and forgets a cached one on request."""

    def token(self) -> str:
        """A valid access token."""
        ...

    def invalidate(self) -> None:
        """Forget the cached token: the next :meth:`token` asks the identity platform again."""
        ...


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` from a :class:`TokenSource`, refreshed by the transport after a 401."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._dropped: set[str] = set()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.source.token()}"
        return request

    def refresh(self, refused: str | None = None) -> None:
        """Drop the cached token (it expired or was revoked before its time).

        ``refused`` is the ``Authorization`` header the 401 answered. With several requests in flight, all of them
        may come back 401 for the same token: only the first drops it, so the others resend with the new token
        instead of each asking the identity platform for one more.
        """
        with self._lock:
            if refused is not None:
                seen = hashlib.sha256(refused.encode()).hexdigest()  # a digest: the token itself is not kept
                if seen in self._dropped:
                    return
                self._dropped.add(seen)
            self.source.invalidate()


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one logical request is retried (declared once, used by every client).

    Attributes:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
        backoff: the first back-off in seconds; it doubles per retry.
        max_backoff: our own back-off never waits longer than this.
        max_server_wait: a server-requested pause is honoured up to this; beyond it is a task retry's job.
        transient_statuses: answers worth another try.
        refused_statuses: answers that prove the request was not carried out (safe to resend a non-idempotent call).
    """

    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 120.0
    max_server_wait: float = 600.0
    transient_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 500, 502, 503, 504}))
    refused_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def backoff_for(self, retry: int) -> float:
        """The back-off before retry number ``retry`` (1-based): ``backoff * 2 ** (retry - 1)``, capped."""
        return min(self.backoff * 2 ** max(0, retry - 1), self.max_backoff)


class TransportError(RuntimeError):
    """The service could not be reached, or the connection failed, after the policy's retries.

    Attributes:
        ambiguous: the request may have been carried out (it left, then the connection failed) and was not resent
            because it is not idempotent: the caller must reconcile before sending it again.
    """

    def __init__(self, message: str, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


class TlsError(TransportError, PermanentError):
    """TLS verification failed: a certificate problem does not heal by retrying."""


def new_session(ca_bundle: str | None = None, pool_size: int = MAX_IN_FLIGHT) -> requests.Session:
    """A ``requests`` session that verifies TLS against ``ca_bundle`` (default: ``REQUESTS_CA_BUNDLE`` or certifi).

    Verification is never switched off; the simulators' throwaway CA reaches clients through the bundle.
    """
    session = requests.Session()
    bundle = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def safe_url(url: str) -> str:
    """Scheme, host and path only: query strings may carry skip tokens or filters, never worth a log line."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def never_sent(exc: BaseException) -> bool:
    """True when a connection error proves the request never left (the connection was not established)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


class _Unreachable(Exception):
    """One attempt's connection failure, carried through tenacity with what it proves."""

    def __init__(self, exc: requests.RequestException, sent: bool) -> None:
        super().__init__(type(exc).__name__)
        self.exc = exc
        self.sent = sent


_DEFAULT: Any = object()


class Transport:
    """Send requests for one client: its session, auth, budget and retry policy.

    Attributes:
        requests_sent: every physical request, retries and token-refresh resends included.
        throttled: 429 answers seen.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        auth: requests.auth.AuthBase | None = None,
        limiter: RequestBudget | None = None,
        policy: RetryPolicy | None = None,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        service: str = "HTTP",
    ) -> None:
        self.session = session if session is not None else new_session()
        self.auth = auth
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.sleep = sleep
        self.service = service
        self.requests_sent = 0
        self.throttled = 0
        self._counting = threading.Lock()  # the sends of one batch helper may run in several threads

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        auth: requests.auth.AuthBase | None = _DEFAULT,
        limiter: RequestBudget | None = _DEFAULT,
    ) -> requests.Response:
        """Send one logical request through the policy; return the final response, whatever its status.

        Args:
            method, url, params, json, headers: the request.
            idempotent: False for a call that must not be carried out twice (see the module docstring).
            auth: overrides the transport's auth for this call (a second plane with its own token).
            limiter: overrides the transport's budget for this call (None: no budget).

        Raises:
            TlsError: TLS verification failed.
            TransportError: the connection failed after the retries, or once after a non-idempotent call left.
            PermanentError: the token source refused for good (from the auth class).
        """
        auth = self.auth if auth is _DEFAULT else auth
        limiter = self.limiter if limiter is _DEFAULT else limiter
        policy = self.policy
        where = f"{self.service} {method} {safe_url(url)}"
        refreshed = False

        def attempt() -> requests.Response:
            nonlocal refreshed
            while True:
                response = self._once(method, url, params, json, headers, auth, limiter)
                if response.status_code == 401 and isinstance(auth, BearerAuth) and not refreshed:
                    # An expired or revoked token: take a fresh one and resend once (not a retry).
                    refreshed = True
                    log.info("%s answered 401; taking a fresh token and resending once", where)
                    auth.refresh(response.request.headers.get("Authorization") if response.request else None)
                    continue
                return response

        def retry_result(response: requests.Response) -> bool:
            status = response.status_code
            return status in policy.transient_statuses and (idempotent or status in policy.refused_statuses)

        def retry_exception(exc: BaseException) -> bool:
            return isinstance(exc, _Unreachable) and (idempotent or not exc.sent)

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            assert outcome is not None
            if outcome.failed:
                return policy.backoff_for(state.attempt_number)
            response = outcome.result()
            hinted = retry_after(response)
            if hinted is not None:
                hinted = min(hinted, policy.max_server_wait)
            if response.status_code == 429:
                delay = hinted if hinted is not None else policy.backoff_for(state.attempt_number)
                if limiter is not None:
                    # The pause is shared: every process of this identity waits in acquire(), this one included.
                    limiter.penalise(delay)
                    return 0.0
                return delay
            # The server knows best how long it will be busy; without a hint, back off.
            return hinted if hinted is not None else policy.backoff_for(state.attempt_number)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            assert outcome is not None
            what = type(outcome.exception()).__name__ if outcome.failed else f"HTTP {outcome.result().status_code}"
            if outcome.failed and isinstance(outcome.exception(), _Unreachable):
                what = str(outcome.exception())
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("%s: %s; retry %s/%s in %.1f s", where, what, state.attempt_number, policy.max_retries, delay)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.max_retries + 1),
            retry=tenacity.retry_if_result(retry_result) | tenacity.retry_if_exception(retry_exception),
            wait=wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            # Out of retries: the last answer goes back to the caller, the last connection failure is raised.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome is not None else None,
        )
        try:
            return retrying(attempt)
        except _Unreachable as failure:
            ambiguous = failure.sent and not idempotent
            tried = "once (not idempotent: not resent)" if ambiguous else "after retries"
            raise TransportError(f"{where} failed {tried}: {failure}", ambiguous=ambiguous) from failure.exc

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(seconds)

    def _once(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        headers: Mapping[str, str] | None,
        auth: requests.auth.AuthBase | None,
        limiter: RequestBudget | None,
    ) -> requests.Response:
        if limiter is not None:
            limiter.acquire()
        with self._counting:
            self.requests_sent += 1
        merged = {"Accept": "application/json", **(headers or {})}
        verify = self.session.verify if isinstance(self.session, requests.Session) else True
        try:
            # verify= passed explicitly: requests lets REQUESTS_CA_BUNDLE override a session's own CA file.
            response = self.session.request(
                method,
                url,
                params=params,
                json=body,
                headers=merged,
                auth=auth,
                timeout=self.timeout,
                verify=verify,
            )
        except requests.exceptions.SSLError:
            raise TlsError(f"TLS verification failed for {urlsplit(url).netloc}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Unreachable(exc, sent=not never_sent(exc)) from exc
        if response.status_code == 429:
            with self._counting:
                self.throttled += 1
        return response


class TransportClient:
    """Base of every API client: its HTTP goes through ``self.transport``, whose counters and session it shows."""

    transport: Transport

    @property
    def requests_sent(self) -> int:
        """Every HTTP request so far, retries included."""
        return self.transport.requests_sent

    @property
    def throttled(self) -> int:
        """429 answers seen."""
        return self.transport.throttled

    @property
    def session(self) -> requests.Session:
        """The transport's ``requests`` session (TLS bundle, connection pool)."""
        return self.transport.session

    @property
    def limiter(self) -> RequestBudget | None:
        """The shared request budget, if any."""
        return self.transport.limiter

    @property
    def requests_per_minute(self) -> float | None:
        """The budget's rate in requests a minute (None when the client has no budget)."""
        budget = self.transport.limiter
        return None if budget is None else budget.max_requests * 60.0 / budget.per_seconds

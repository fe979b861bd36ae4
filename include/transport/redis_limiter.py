"""The shared request budget of one identity kept in Redis: one budget for every process on every host."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "tc-sentinel"


def identity_key(identity: str) -> str:
    """The Redis name of one identity's budget: a hash, so no client id (let alone a secret) is stored in clear."""
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


class RedisRateLimiter:
    """At most ``max_requests`` per ``per_seconds`` moving window for one identity, across processes and hosts.

    The same interface as :class:`include.transport.limiter.SharedRateLimiter` (``acquire``, ``penalise``,
    ``in_window``, ``waited``), but the state lives in Redis, so the task processes of every Celery worker draw from
    one budget. The window is the ``limits`` library's moving window on its Redis storage (an atomic script per
    admission); a 429's pause is a key whose expiry Redis keeps, so it ends at the same moment for every holder
    whatever their clocks say. The window's entries are stamped with each host's clock: the hosts' clocks must be
    synchronised (NTP), as they must be for Airflow anyway.

    A Redis that cannot be reached raises ``redis.exceptions.ConnectionError`` from :meth:`acquire`: the request is
    not sent (spending without a budget could get the identity throttled for everyone), and Airflow retries the task.
    """

    def __init__(
        self,
        url: str,
        identity: str,
        max_requests: int,
        per_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        spread: bool = True,
        **redis_options: Any,
    ) -> None:
        """
        Args:
            url: ``redis://[:password]@host:port/db`` or ``rediss://…`` (TLS, verified). It carries the password:
                never log it.
            identity: what the remote API counts requests by (e.g. ``f"{client_id}|{tenant_id}|graph"``); only its
                hash reaches Redis.
            max_requests: requests admitted per window.
            per_seconds: the window, in whole seconds (the ``limits`` moving window counts whole seconds).
            sleep: how to wait (tests may count the waits).
            spread: admit two requests at least ``per_seconds / max_requests`` apart (see
                :class:`include.transport.limiter.SharedRateLimiter`): a key that lives that long marks the last
                admission, for every host.
            redis_options: passed to ``redis.Redis`` (e.g. ``socket_timeout``).
        """
        if max_requests < 1 or per_seconds < 1 or per_seconds != int(per_seconds):
            raise ValueError("max_requests must be >= 1 and per_seconds a whole number of seconds >= 1")
        self.max_requests = max_requests
        self.per_seconds = float(per_seconds)
        self.key = identity_key(identity)
        self._sleep = sleep
        self.waited = 0.0  # seconds this instance spent blocked in acquire(), for task metrics
        options: dict[str, Any] = {"socket_timeout": 30, "socket_connect_timeout": 10, **redis_options}
        self._storage = RedisStorage(url, key_prefix=f"{KEY_PREFIX}:budget", **options)
        self._redis: redis.Redis = self._storage.get_connection()
        self._window = MovingWindowRateLimiter(self._storage)
        self._item = RateLimitItemPerSecond(max_requests, int(per_seconds))
        self._pause_key = f"{KEY_PREFIX}:pause:{self.key}"
        self._gap_key = f"{KEY_PREFIX}:gap:{self.key}"
        self._gap_ms = max(1, math.floor(self.per_seconds * 1000 / max_requests)) if spread else 0

    def acquire(self) -> float:
        """Block until one more request fits the shared budget, and count it.

        Returns:
            The seconds spent waiting.
        """
        waited = 0.0
        while True:
            paused_ms = self._redis.pttl(self._pause_key)  # -2: no pause; -1 cannot happen (always set with PX)
            if paused_ms > 0:
                delay = paused_ms / 1000.0
            elif self._gap_ms and not self._redis.set(self._gap_key, "1", nx=True, px=self._gap_ms):
                # Another admission (on any host) was less than the spacing ago: wait for its key to expire.
                delay = max(self._redis.pttl(self._gap_key), 1) / 1000.0
            elif self._window.hit(self._item, self.key):
                self.waited += waited
                return waited
            else:
                # The oldest admission leaves the window at reset; another holder may take the slot first.
                reset, _ = self._window.get_window_stats(self._item, self.key)
                delay = reset - time.time()
            delay = min(max(delay, 0.001), self.per_seconds)
            waited += delay
            self._sleep(delay)

    def penalise(self, seconds: float) -> None:
        """Pause every holder of this budget, on every host, for ``seconds`` from now (a 429 "try again in N").

        A shorter pause never cuts a longer one short.
        """
        if seconds <= 0:
            return
        millis = max(1, math.ceil(seconds * 1000))
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._pause_key)
                    if pipe.pttl(self._pause_key) >= millis:
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.set(self._pause_key, "1", px=millis)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # another holder changed the pause meanwhile: read it again
        log.info("shared rate limit paused for %.1f s by a throttled response", seconds)

    def paused_for(self) -> float:
        """Seconds the budget stays paused by a 429 (0.0 when it is not paused)."""
        return max(self._redis.pttl(self._pause_key), 0) / 1000.0

    def in_window(self) -> int:
        """How many requests the shared window holds now (for tests and metrics)."""
        _, remaining = self._window.get_window_stats(self._item, self.key)
        return self.max_requests - remaining

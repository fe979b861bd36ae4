"""The shared request budget: a sliding window kept in a locked file, shared by every process of one identity."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from include.transport.http import RequestBudget

log = logging.getLogger(__name__)


#: ``budget(identity, max_requests, per_seconds)``: how a hook builds the shared budget (file lock or Redis).
BudgetFactory = Callable[[str, int, float], RequestBudget]


def configured_rate(extra: Mapping[str, Any], default: int) -> int:
    """A Connection's ``requests_per_minute`` extra, or the target's default when it is absent, empty or null."""
    return int(extra.get("requests_per_minute") or default)


def budget_for(
    identity: str, max_requests: int, budget: BudgetFactory | None, limiter_root: Path | None
) -> RequestBudget | None:
    """The identity's request budget a minute: ``budget``'s when given (the hook's choice), else a file lock under
    ``limiter_root``, else none."""
    if budget is not None:
        return budget(identity, max_requests, 60.0)
    if limiter_root is not None:
        return SharedRateLimiter(limiter_path(limiter_root, identity), max_requests=max_requests, per_seconds=60.0)
    return None


def limiter_path(root: Path, identity: str) -> Path:
    """Where the budget of one identity lives under ``root``.

    Args:
        root: a directory every task on the machine sees (created when missing).
        identity: what the remote API counts requests by, e.g. ``f"{client_id}|{workspace_id}"``. Never pass a
            secret: only its hash reaches the file name, but a secret has no business here at all.

    Returns:
        ``root / "ratelimit-<sha256 prefix>.json"``.
    """
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    return Path(root) / f"ratelimit-{digest}.json"


class SharedRateLimiter:
    """At most ``max_requests`` per ``per_seconds`` sliding window, across threads and processes, spread evenly.

    The state (send times inside the window, the earliest time of the next send, and a server-imposed pause) is a
    small JSON file guarded by ``fcntl.flock``, so the mapped load tasks of one identity share one budget instead of
    each assuming it owns the whole API limit, and a 429 seen by one task pauses them all. Times come from
    ``time.time`` because a monotonic clock is not comparable between processes.

    With ``spread`` (the default) two admissions are at least ``per_seconds / max_requests`` apart. A window alone
    lets a burst through whenever its oldest entries leave, and bursts repeat a window later; a request reaches the
    service a few milliseconds after it was admitted, and when several are in flight those few milliseconds vary,
    so a repeated burst arrives compressed and the service's own window (counting arrivals, with only the margin
    between its limit and ours to spare) answers 429. Evenly spread, arrivals would have to drift by a whole
    interval per request of margin before the service refused one.
    """

    def __init__(
        self,
        state_path: Path,
        max_requests: int,
        per_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        spread: bool = True,
    ) -> None:
        if max_requests < 1 or per_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and per_seconds > 0")
        self.state_path = Path(state_path)
        self.max_requests = max_requests
        self.per_seconds = float(per_seconds)
        # Two admissions are at least this far apart (0: a burst may fill the window at once).
        self.spacing = self.per_seconds / max_requests if spread else 0.0
        self._clock = clock
        self._sleep = sleep
        self.waited = 0.0  # seconds this instance spent blocked in acquire(), for task metrics
        self.state_path.parent.mkdir(parents=True, exist_ok=True)

    def acquire(self) -> float:
        """Block until one more request fits the shared budget, and count it.

        Returns:
            The seconds spent waiting.
        """
        waited = 0.0
        while True:
            with _LockedState(self.state_path) as state:
                now = self._clock()
                sent = [t for t in state.sent if now - self.per_seconds < t <= now + self.per_seconds]
                if state.paused_until > now:
                    delay = state.paused_until - now
                elif state.next_at > now:
                    delay = state.next_at - now
                elif len(sent) < self.max_requests:
                    sent.append(now)
                    state.sent = sent
                    state.next_at = now + self.spacing
                    state.save()
                    self.waited += waited
                    return waited
                else:
                    # The oldest send leaves the window at oldest + per_seconds.
                    delay = min(sent) + self.per_seconds - now
                state.sent = sent
                state.save()
            # Sleep outside the lock so other processes can read the state meanwhile.
            delay = max(delay, 0.001)
            waited += delay
            self._sleep(delay)

    def penalise(self, seconds: float) -> None:
        """Pause every holder of this budget for ``seconds`` from now (a server answered 429 "try again in N")."""
        if seconds <= 0:
            return
        with _LockedState(self.state_path) as state:
            until = self._clock() + seconds
            if until > state.paused_until:
                state.paused_until = until
                state.save()
        log.info("shared rate limit paused for %.1f s by a throttled response", seconds)

    def in_window(self) -> int:
        """How many requests the shared window holds now (for tests and metrics)."""
        with _LockedState(self.state_path) as state:
            now = self._clock()
            return sum(1 for t in state.sent if now - self.per_seconds < t <= now + self.per_seconds)


class _LockedState:
    """The limiter file, read under an exclusive ``flock`` and written back in place before unlocking."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1
        self.sent: list[float] = []
        self.paused_until = 0.0
        self.next_at = 0.0

    def __enter__(self) -> _LockedState:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(self._fd, 65536):
                raw += chunk
            self._load(raw)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def _load(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            data = json.loads(raw)
            self.sent = [float(t) for t in data.get("sent", [])]
            self.paused_until = float(data.get("paused_until", 0.0))
            self.next_at = float(data.get("next_at", 0.0))
        except (ValueError, TypeError, AttributeError):
            # A torn write (a process killed mid-save) only loses the window: start a fresh one.
            log.warning("rate-limit state %s was unreadable; starting a new window", self._path)
            self.sent, self.paused_until, self.next_at = [], 0.0, 0.0

    def save(self) -> None:
        payload = json.dumps({"sent": self.sent, "paused_until": self.paused_until, "next_at": self.next_at}).encode()
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, payload)

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)

"""Messages about the cost and progress of long work: a plan against the target's budget, and throttled progress.

Pure functions (the clock is passed in), called by the load stage (:func:`include.pipeline.delivery.load`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: At most one progress line per this many seconds.
PROGRESS_EVERY_SECONDS = 10.0


def duration(seconds: float) -> str:
    """``79`` -> ``1 min 19 s``; ``3725`` -> ``1 h 2 min``; under a minute ``42 s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


@dataclass(frozen=True)
class PlanCost:
    """What a plan costs a target: writes, the requests they take, and the time the budget needs for them."""

    writes: int
    requests: int
    per_minute: int
    seconds: float
    fits: bool  # inside the time the task (or run) has left; True when no limit was given
    limit_seconds: float | None


def plan_cost(writes: int, batch_size: int, per_minute: int, limit_seconds: float | None = None) -> PlanCost:
    """The time the budget needs for ``writes`` sent ``batch_size`` a request at ``per_minute`` requests a minute.

    Conservative: ``requests / per_minute`` minutes (a sliding window lets the first burst go at once, which only
    makes it faster). Raises ``ValueError`` on a non-positive batch size or budget.
    """
    if batch_size <= 0 or per_minute <= 0:
        raise ValueError(f"batch size and budget must be positive, got {batch_size} and {per_minute}")
    requests = math.ceil(max(0, writes) / batch_size)
    seconds = requests * 60.0 / per_minute
    fits = limit_seconds is None or seconds <= limit_seconds
    return PlanCost(max(0, writes), requests, per_minute, seconds, fits, limit_seconds)


def plan_message(target: str, cost: PlanCost) -> str:
    """``sentinel: 12,400 writes = 124 requests at 95/min ≈ 1 min 18 s``, and a warning when it cannot fit."""
    text = (
        f"{target}: {cost.writes:,} writes = {cost.requests:,} requests at {cost.per_minute:,}/min "
        f"≈ {duration(cost.seconds)}"
    )
    if not cost.fits and cost.limit_seconds is not None:
        text += (
            f"; this does NOT fit the {duration(cost.limit_seconds)} the task has (timeout): it will be "
            "stopped before it ends (raise the timeout, or split the work)"
        )
    return text


def plan_line(
    target: str, writes: int, batch_size: int, per_minute: float | None, limit: float | None
) -> tuple[str, bool]:
    """:func:`plan_message` for a target's budget, and whether the plan fits ``limit``; without a budget, the
    writes and requests alone (and it fits: nothing but the target slows it)."""
    if per_minute is None or per_minute <= 0:
        requests = math.ceil(max(0, writes) / max(1, batch_size))
        return f"{target}: {writes:,} writes = {requests:,} requests (no request budget configured)", True
    cost = plan_cost(writes, batch_size, max(1, math.floor(per_minute)), limit)
    return plan_message(target, cost), cost.fits


def chunk_for(batch_size: int, per_minute: float | None, most: int, every: float = PROGRESS_EVERY_SECONDS) -> int:
    """Rows to send between two progress checks: about ``every`` seconds of the budget, whole requests, at most
    ``most`` (all of ``most`` when there is no budget)."""
    if per_minute is None or per_minute <= 0:
        return most
    requests = max(1, math.floor(per_minute * every / 60.0))
    return max(1, min(most, batch_size * requests))


@dataclass
class Progress:
    """Progress of ``total`` items started at ``started`` (seconds, any monotonic clock); ``update`` returns a line
    at most every ``every`` seconds, and always for the last item."""

    total: int
    started: float
    every: float = PROGRESS_EVERY_SECONDS
    _last: float | None = field(default=None, init=False)

    def update(self, done: int, now: float) -> str | None:
        finished = done >= self.total
        if not finished and self._last is not None and now - self._last < self.every:
            return None
        if not finished and self._last is None and now - self.started < self.every:
            return None
        self._last = now
        return progress_message(done, self.total, now - self.started)


def progress_message(done: int, total: int, elapsed: float) -> str:
    """``4,000 / 12,400 (32 %), 50.0/s, about 2 min 48 s left``."""
    share = done / total if total else 1.0
    rate = done / elapsed if elapsed > 0 else 0.0
    left = (total - done) / rate if rate > 0 else None
    eta = "done" if done >= total else ("time left unknown" if left is None else f"about {duration(left)} left")
    return f"{done:,} / {total:,} ({share:.0%}), {rate:,.1f}/s, {eta}"

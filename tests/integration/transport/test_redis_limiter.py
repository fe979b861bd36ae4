"""The Redis request budget against a real redis-server: one budget across processes, pauses, and the hook's choice."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.redis import RedisServer
from include.transport.limiter import SharedRateLimiter
from include.transport.redis_limiter import RedisRateLimiter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENT_ID = "3c7e9a1b-2d4f-4a6c-8e0b-1f2a3b4c5d6e"


class WouldWait(Exception):
    """Raised by a sleep that refuses to sleep: the limiter asked to wait."""


class RefusingSleep:
    """Records the wait the limiter asked for and stops it there (no test here waits on the wall clock)."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        raise WouldWait(seconds)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port (installed from Debian's package when missing)."""
    with RedisServer() as running:
        yield running


@pytest.fixture
def url(server: RedisServer) -> Iterator[str]:
    yield server.url()
    redis.Redis.from_url(server.url()).flushdb()


def _limiter(
    url: str,
    identity: str = f"{CLIENT_ID}|tenant|graph",
    max_requests: int = 3,
    per_seconds: float = 60,
    sleep: RefusingSleep | None = None,
    spread: bool = False,
) -> RedisRateLimiter:
    """The window's own rules are tested without spreading (``spread=False``); spreading has its own tests."""
    return RedisRateLimiter(url, identity, max_requests, per_seconds, sleep=sleep or RefusingSleep(), spread=spread)


def _admitted_until_asked_to_wait(limiter: RedisRateLimiter, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        try:
            limiter.acquire()
        except WouldWait:
            break
        admitted += 1
    return admitted


def test_requests_within_the_budget_do_not_wait(url: str) -> None:
    sleep = RefusingSleep()
    limiter = _limiter(url, sleep=sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert sleep.asked == []
    assert limiter.in_window() == 3


def test_the_request_over_the_budget_waits_for_the_oldest_to_leave_the_window(url: str) -> None:
    sleep = RefusingSleep()
    limiter = _limiter(url, max_requests=3, per_seconds=60, sleep=sleep)
    for _ in range(3):
        limiter.acquire()
    with pytest.raises(WouldWait):
        limiter.acquire()
    # The oldest of the three leaves 60 s after it was admitted; the three took far less than 30 s.
    assert 30 < sleep.asked[0] <= 60
    assert limiter.in_window() == 3


def _draw(url: str, identity: str, attempts: int, results: multiprocessing.Queue) -> None:
    limiter = RedisRateLimiter(url, identity, 7, 60, sleep=RefusingSleep(), spread=False)
    results.put(_admitted_until_asked_to_wait(limiter, attempts))


def test_processes_of_one_identity_draw_from_one_budget(url: str) -> None:
    """Four processes, each wanting 5 requests, against a budget of 7: exactly 7 are admitted in all."""
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_draw, args=(url, "app|tenant|graph", 5, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    admitted = [results.get(timeout=10) for _ in workers]
    assert sum(admitted) == 7
    assert all(w.exitcode == 0 for w in workers)


def test_different_identities_do_not_throttle_each_other(url: str) -> None:
    first = _limiter(url, identity="client-a|tenant|graph", max_requests=1)
    second = _limiter(url, identity="client-b|tenant|graph", max_requests=1)
    assert first.acquire() == 0.0
    assert second.acquire() == 0.0
    with pytest.raises(WouldWait):
        first.acquire()


def test_a_penalty_pauses_every_holder_of_the_budget_and_a_shorter_one_does_not_cut_it_short(url: str) -> None:
    first = _limiter(url, max_requests=100)
    sleep = RefusingSleep()
    second = _limiter(url, max_requests=100, sleep=sleep)
    first.penalise(40)
    first.penalise(5)
    with pytest.raises(WouldWait):
        second.acquire()
    assert 30 < sleep.asked[0] <= 40
    assert 30 < second.paused_for() <= 40
    assert second.in_window() == 0  # a paused acquire admits nothing


def test_the_pause_is_a_key_redis_expires_itself(url: str) -> None:
    limiter = _limiter(url)
    limiter.penalise(2.5)
    pause_keys = [k for k in redis.Redis.from_url(url).keys("*") if b"pause" in k]
    assert len(pause_keys) == 1
    assert 0 < redis.Redis.from_url(url).pttl(pause_keys[0]) <= 2500


def test_a_paused_acquire_goes_through_once_the_pause_is_over(url: str) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        redis.Redis.from_url(url).delete(*[k for k in redis.Redis.from_url(url).keys("*") if b"pause" in k])

    limiter = RedisRateLimiter(url, "app|tenant|graph", 3, 60, sleep=sleep)
    limiter.penalise(30)
    waited = limiter.acquire()
    assert len(waits) == 1
    assert waited == pytest.approx(waits[0])
    assert limiter.waited == pytest.approx(waits[0])
    assert limiter.in_window() == 1


def test_by_default_two_admissions_on_any_host_are_the_budget_s_spacing_apart(url: str) -> None:
    sleep = RefusingSleep()
    first = RedisRateLimiter(url, "app|tenant|graph", 4, 60, sleep=RefusingSleep())
    second = RedisRateLimiter(url, "app|tenant|graph", 4, 60, sleep=sleep)
    assert first.acquire() == 0.0
    with pytest.raises(WouldWait):
        second.acquire()
    assert 10 < sleep.asked[0] <= 15  # 60 s / 4: the next admission is 15 s after the first


def test_redis_holds_no_identity_in_clear(url: str) -> None:
    limiter = _limiter(url, identity=f"{CLIENT_ID}|tenant-xyz|graph", spread=True)
    limiter.acquire()
    limiter.penalise(10)
    keys = redis.Redis.from_url(url).keys("*")
    assert len(keys) == 3  # the window, the pause and the spacing
    assert not [k for k in keys if CLIENT_ID.encode() in k or b"tenant-xyz" in k]


def test_a_redis_that_refuses_us_admits_nothing_rather_than_spend_without_a_budget(server: RedisServer) -> None:
    wrong = f"redis://:{server.password}-wrong@127.0.0.1:{server.port}/0"
    with pytest.raises(redis.exceptions.RedisError):
        RedisRateLimiter(wrong, "app|tenant|graph", 3, 60).acquire()


def test_the_window_must_be_whole_seconds(url: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        RedisRateLimiter(url, "a", 3, 0.5)
    with pytest.raises(ValueError, match="max_requests"):
        RedisRateLimiter(url, "a", 0, 60)


def test_it_offers_the_interface_of_the_file_limiter() -> None:
    public = {n for n in vars(SharedRateLimiter) if not n.startswith("_")}
    assert public <= {n for n in vars(RedisRateLimiter) if not n.startswith("_")}


# ------------------------------------------------------------------------- the hook's choice


def test_the_hook_uses_redis_when_the_connection_is_configured(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tc_sentinel.hooks import request_budget

    monkeypatch.setenv("TC_SENTINEL_LIMITER_DIR", str(tmp_path / "limiters"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TC_SENTINEL_REDIS",
        json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": server.port,
                "password": server.password,
                "extra": {"db": 3},
            }
        ),
    )
    budget = request_budget("app|tenant|graph", 5, 60.0)
    assert isinstance(budget, RedisRateLimiter)
    budget.acquire()
    assert redis.Redis.from_url(server.url(3)).keys("*")  # the budget lives in the Connection's database
    assert not (tmp_path / "limiters").exists()
    redis.Redis.from_url(server.url(3)).flushdb()


def test_the_hook_uses_the_celery_broker_when_it_is_redis_and_no_connection_is_configured(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tc_sentinel.hooks import request_budget

    monkeypatch.delenv("AIRFLOW_CONN_TC_SENTINEL_REDIS", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", server.url(4))
    budget = request_budget("app|tenant|graph", 5, 60.0)
    assert isinstance(budget, RedisRateLimiter)
    budget.acquire()
    assert redis.Redis.from_url(server.url(4)).keys("*")
    redis.Redis.from_url(server.url(4)).flushdb()


def test_without_redis_the_hook_keeps_the_file_lock_of_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tc_sentinel.hooks import request_budget

    monkeypatch.delenv("AIRFLOW_CONN_TC_SENTINEL_REDIS", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("TC_SENTINEL_LIMITER_DIR", str(tmp_path / "limiters"))
    budget = request_budget("app|tenant|graph", 5, 60.0)
    assert isinstance(budget, SharedRateLimiter)
    assert budget.state_path.parent == tmp_path / "limiters"

"""The shared sliding-window limiter: budget, pauses after 429, one budget across processes."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from pathlib import Path

import pytest

from include.transport.limiter import SharedRateLimiter, limiter_path
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _limiter(
    path: Path, clock: FakeClock, max_requests: int = 3, per_seconds: float = 10.0, spread: bool = False
) -> SharedRateLimiter:
    """The window's own rules are tested without spreading (``spread=False``); spreading has its own tests."""
    return SharedRateLimiter(path, max_requests, per_seconds, clock=clock, sleep=clock.sleep, spread=spread)


def test_by_default_admissions_are_spread_evenly_over_the_window(tmp_path: Path, clock: FakeClock) -> None:
    limiter = SharedRateLimiter(tmp_path / "rl.json", 3, 9.0, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire() for _ in range(4)] == pytest.approx([0.0, 3.0, 3.0, 3.0])


def test_spread_admissions_of_two_holders_share_one_spacing(tmp_path: Path, clock: FakeClock) -> None:
    first = _limiter(tmp_path / "rl.json", clock, max_requests=4, per_seconds=8.0, spread=True)
    second = _limiter(tmp_path / "rl.json", clock, max_requests=4, per_seconds=8.0, spread=True)
    first.acquire()
    assert second.acquire() == pytest.approx(2.0)
    clock.now += 5.0  # idle longer than the spacing: the next goes at once
    assert first.acquire() == 0.0


def test_a_spread_budget_never_lets_a_window_hold_more_than_the_budget(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock, max_requests=5, per_seconds=7, spread=True)
    times = []
    for _ in range(40):
        limiter.acquire()
        times.append(clock.now)
    assert max(sum(1 for t in times if start <= t < start + 7) for start in times) == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(7 / 5)


def test_requests_within_the_budget_do_not_wait(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []


def test_the_request_over_the_budget_waits_until_the_oldest_leaves_the_window(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock)
    limiter.acquire()
    clock.now += 4
    limiter.acquire()
    limiter.acquire()
    waited = limiter.acquire()
    assert waited == pytest.approx(6.0)
    assert limiter.in_window() == 3  # the first left, the fourth came in


def test_the_window_slides_rather_than_resetting_per_period(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock, max_requests=2, per_seconds=10)
    limiter.acquire()  # t=0
    clock.now += 9
    limiter.acquire()  # t=9
    clock.now += 2  # t=11: the first left the window, the second has not
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(8.0)  # waits for t=19, when the t=9 send leaves


def test_any_window_holds_at_most_the_budget(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock, max_requests=5, per_seconds=7)
    times = []
    for _ in range(40):
        limiter.acquire()
        times.append(clock.now)
        clock.now += 0.3
    assert max(sum(1 for t in times if start <= t < start + 7) for start in times) == 5


def test_two_limiters_on_one_file_share_one_budget(tmp_path: Path, clock: FakeClock) -> None:
    first = _limiter(tmp_path / "rl.json", clock)
    second = _limiter(tmp_path / "rl.json", clock)
    first.acquire()
    second.acquire()
    first.acquire()
    assert second.acquire() == pytest.approx(10.0)


def test_different_identities_do_not_throttle_each_other(tmp_path: Path, clock: FakeClock) -> None:
    first = _limiter(limiter_path(tmp_path, "client-a|ws"), clock, max_requests=1)
    second = _limiter(limiter_path(tmp_path, "client-b|ws"), clock, max_requests=1)
    assert first.acquire() == 0.0
    assert second.acquire() == 0.0


def test_a_penalty_pauses_every_holder_of_the_budget(tmp_path: Path, clock: FakeClock) -> None:
    first = _limiter(tmp_path / "rl.json", clock, max_requests=100)
    second = _limiter(tmp_path / "rl.json", clock, max_requests=100)
    first.penalise(30)
    assert second.acquire() == pytest.approx(30.0)
    assert first.acquire() == 0.0  # the pause is over for everyone


def test_a_shorter_penalty_does_not_shorten_a_longer_one(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock, max_requests=100)
    limiter.penalise(30)
    limiter.penalise(5)
    assert limiter.acquire() == pytest.approx(30.0)


def test_waiting_is_added_up_for_metrics(tmp_path: Path, clock: FakeClock) -> None:
    limiter = _limiter(tmp_path / "rl.json", clock, max_requests=1, per_seconds=2)
    for _ in range(3):
        limiter.acquire()
    assert limiter.waited == pytest.approx(4.0)


def test_an_unreadable_state_file_starts_a_fresh_window(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "rl.json"
    path.write_text('{"sent": [1, 2')
    limiter = _limiter(path, clock, max_requests=1)
    assert limiter.acquire() == 0.0
    assert limiter.in_window() == 1


def test_the_state_path_names_a_hash_and_never_the_identity(tmp_path: Path) -> None:
    path = limiter_path(tmp_path, "0f1e2d3c-client|workspace-42")
    assert path.parent == tmp_path
    assert "client" not in path.name
    assert "workspace" not in path.name
    assert path == limiter_path(tmp_path, "0f1e2d3c-client|workspace-42")
    assert path != limiter_path(tmp_path, "0f1e2d3c-client|workspace-43")


def test_a_budget_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_requests"):
        SharedRateLimiter(tmp_path / "rl.json", 0, 60)


class _LastRead:
    """A wall clock that remembers its last reading: right after ``acquire()`` returns, that is the admission
    time the limiter itself decided on (no scheduling delay in between)."""

    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        self.value = time.time()
        return self.value


def _worker(path: str, count: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    clock = _LastRead()
    limiter = SharedRateLimiter(Path(path), max_requests=6, per_seconds=1.0, clock=clock)
    for _ in range(count):
        limiter.acquire()
        queue.put(clock.value)


def test_two_processes_together_stay_under_the_budget(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    path = str(tmp_path / "rl.json")
    workers = [context.Process(target=_worker, args=(path, 9, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    times = sorted(queue.get(timeout=60) for _ in range(18))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # The admission times the limiter decided on: any window (t - 1 s, t] holds at most the budget, however
    # slowly the machine scheduled the processes.
    busiest = max(sum(1 for u in times if t - 1.0 < u <= t) for t in times)
    assert busiest <= 6
    # 18 admissions at 6 per second: the 13th cannot come before two seconds after the first.
    assert times[-1] - times[0] >= 2.0

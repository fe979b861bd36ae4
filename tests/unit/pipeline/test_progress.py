"""Plan cost against a target's budget, and throttled progress lines for long loads."""

from __future__ import annotations

import pytest

from include.pipeline.progress import Progress, duration, plan_cost, plan_message, progress_message


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (42.4, "42 s"), (79, "1 min 19 s"), (3725, "1 h 2 min")])
def test_durations_read_like_a_person_would_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_issues_example_12400_writes_at_sentinels_budget() -> None:
    cost = plan_cost(12_400, batch_size=100, per_minute=95)
    assert cost.requests == 124
    assert cost.seconds == pytest.approx(124 / 95 * 60)
    assert plan_message("sentinel", cost) == "sentinel: 12,400 writes = 124 requests at 95/min ≈ 1 min 18 s"


def test_a_partial_batch_is_one_more_request_and_nothing_costs_nothing() -> None:
    assert plan_cost(101, batch_size=100, per_minute=950).requests == 2
    assert plan_cost(0, batch_size=100, per_minute=950).requests == 0
    assert plan_cost(0, batch_size=100, per_minute=950).seconds == 0


def test_a_plan_that_does_not_fit_the_timeout_says_so_up_front() -> None:
    # 1,000,000 writes into Defender one at a time at 28 a minute: about 25 days, against a 4 h load timeout
    cost = plan_cost(1_000_000, batch_size=1, per_minute=28, limit_seconds=4 * 3600)
    assert not cost.fits
    message = plan_message("defender", cost)
    assert "does NOT fit the 4 h 0 min" in message
    assert plan_cost(10, batch_size=1, per_minute=28, limit_seconds=4 * 3600).fits
    assert "NOT" not in plan_message("defender", plan_cost(10, batch_size=1, per_minute=28, limit_seconds=3600))


def test_a_nonsense_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_cost(10, batch_size=0, per_minute=95)
    with pytest.raises(ValueError, match="positive"):
        plan_cost(10, batch_size=100, per_minute=0)


def test_progress_speaks_at_most_every_ten_seconds_and_always_at_the_end() -> None:
    progress = Progress(total=1000, started=100.0)
    said = {}
    for now, done in [(101, 10), (109.9, 90), (110, 100), (115, 150), (119.9, 199), (120, 200), (121, 1000)]:
        said[now] = progress.update(done, now)
    assert [now for now, line in said.items() if line] == [110, 120, 121]
    assert said[110] == "100 / 1,000 (10%), 10.0/s, about 1 min 30 s left"
    assert said[121] == "1,000 / 1,000 (100%), 47.6/s, done"


def test_progress_with_no_elapsed_time_does_not_divide_by_zero() -> None:
    assert progress_message(0, 10, 0) == "0 / 10 (0%), 0.0/s, time left unknown"


def test_the_plan_line_without_a_budget_counts_requests_and_always_fits() -> None:
    from include.pipeline.progress import plan_line

    text, fits = plan_line("graph", 250, 100, None, 60)
    assert text == "graph: 250 writes = 3 requests (no request budget configured)"
    assert fits


def test_the_plan_line_with_a_budget_warns_when_the_timeout_is_too_short() -> None:
    from include.pipeline.progress import plan_line

    text, fits = plan_line("defender", 30_000, 500, 28.0, 60)
    assert (text.startswith("defender: 30,000 writes = 60 requests at 28/min"), fits) == (True, False)


@pytest.mark.parametrize(
    ("batch", "per_minute", "most", "rows"),
    [
        (100, 95.0, 10_000, 1_500),  # Sentinel: 15 requests = about 10 s of its budget
        (500, 28.0, 10_000, 2_000),  # Defender: 4 imports
        (100, 950.0, 10_000, 10_000),  # Graph: 158 requests would be more than the cap
        (100, None, 10_000, 10_000),  # no budget: the cap
        (100, 3.0, 10_000, 100),  # a tiny budget still sends a whole request per step
    ],
)
def test_a_load_step_is_about_ten_seconds_of_the_budget_in_whole_requests(batch, per_minute, most, rows) -> None:
    from include.pipeline.progress import chunk_for

    assert chunk_for(batch, per_minute, most) == rows

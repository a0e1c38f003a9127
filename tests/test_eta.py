"""The estimate of how long a job at fal will still take: learnt from movement, never made up."""

from __future__ import annotations

import pytest

from bot.eta import QueueEstimator
from tests.fakes.discord import ManualClock


def moving_queue(clock: ManualClock, estimator: QueueEstimator, jobs: int, seconds: int, every_s: float) -> None:
    """``jobs`` jobs at positions 100, 101, …; the queue moves one place every ``every_s`` seconds."""
    for step in range(int(seconds / every_s) + 1):
        for n in range(jobs):
            estimator.queued(f"job{n}", 100 + n - step)
        clock.advance(every_s)


def test_no_estimate_without_evidence() -> None:
    clock = ManualClock(start=0.0)
    estimator = QueueEstimator(clock)
    assert estimator.eta_s(5) is None
    estimator.queued("a", 50)
    clock.advance(10)
    estimator.queued("a", 49)
    assert estimator.queue_speed() is None  # one move in ten seconds says nothing yet
    assert estimator.eta_s(49) is None


def test_the_estimate_is_the_way_to_the_front_plus_a_typical_run() -> None:
    clock = ManualClock(start=0.0)
    estimator = QueueEstimator(clock)
    moving_queue(clock, estimator, jobs=3, seconds=60, every_s=2.0)  # half a place per second
    assert estimator.eta_s(10) is None  # nobody has run yet: no run time, no estimate
    estimator.running("job0")
    clock.advance(20)
    estimator.finished("job0")
    speed = estimator.queue_speed()
    assert speed == pytest.approx(30 / 82)  # 30 places in 82 s: counted up to now, so a pause slows it
    assert estimator.eta_s(9) == pytest.approx(10 / speed + 20)


def test_a_stalled_queue_makes_the_estimate_grow() -> None:
    clock = ManualClock(start=0.0)
    estimator = QueueEstimator(clock)
    moving_queue(clock, estimator, jobs=2, seconds=60, every_s=1.0)
    estimator.running("job0")
    clock.advance(10)
    estimator.finished("job0")
    before = estimator.eta_s(30)
    clock.advance(120)  # nothing moved for two minutes
    after = estimator.eta_s(30)
    assert before is not None and after is not None and after > 2 * before


@pytest.mark.parametrize(
    ("position", "stale_s", "expected"),
    [
        (None, 0.0, 0.0),  # running: watched closely
        (5, 0.0, 0.0),  # near the front: every move is shown
        (100, 50.0, 45.0),  # at a place a second, 90 places to come near: at most half of that
        (60, 30.0, 25.0),
        (1000, 300.0, 300.0),  # no longer than the reply may stay stale
    ],
    ids=["running", "near", "half-way-to-near", "closer", "stale-bound"],
)
def test_a_job_far_back_is_looked_at_less_often(position: int | None, stale_s: float, expected: float) -> None:
    clock = ManualClock(start=0.0)
    estimator = QueueEstimator(clock)
    moving_queue(clock, estimator, jobs=3, seconds=60, every_s=1.0)  # one place a second
    # the speed is counted up to now: 60 places in 61 s
    assert estimator.unobserved_s(position, stale_s=stale_s, near=10, unknown_s=7.0) == pytest.approx(
        expected, rel=0.02
    )


def test_a_job_far_back_is_looked_at_often_while_the_queue_speed_is_unknown() -> None:
    estimator = QueueEstimator(ManualClock(start=0.0))
    assert estimator.unobserved_s(500, stale_s=250.0, near=10, unknown_s=7.0) == 7.0

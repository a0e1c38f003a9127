import asyncio
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import create_autospec

import pytest
from pydantic import SecretStr

from bot.models import InpaintOptions, Job, JobState, Origin
from bot.pipeline import JobPipeline
from bot.scheduler import Scheduler, fair_order
from bot.store import JobStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(user: int, minute: int, state: JobState = JobState.WAITING) -> Job:
    origin = Origin(
        user_id=user,
        guild_id=1,
        channel_id=2,
        application_id=3,
        interaction_id=minute,
        interaction_token=SecretStr("tok"),
        token_expires_at=T0 + timedelta(minutes=15),
    )
    return Job(
        origin=origin, options=InpaintOptions(prompt="p"), state=state, created_at=T0 + timedelta(minutes=minute)
    )


@pytest.mark.parametrize(
    ("jobs", "active", "expected_users"),
    [
        ([(1, 0), (1, 1), (1, 2), (2, 3), (3, 4)], {}, [1, 2, 3, 1, 1]),
        ([(1, 0), (2, 1), (1, 2), (2, 3)], {}, [1, 2, 1, 2]),
        ([(1, 0), (2, 1)], {1: 1}, [2, 1]),
        ([], {}, []),
    ],
    ids=["hog-does-not-block", "alternates", "active-user-goes-later", "empty"],
)
def test_fair_order_is_round_robin(
    jobs: list[tuple[int, int]], active: dict[int, int], expected_users: list[int]
) -> None:
    order = fair_order([job(u, m) for u, m in jobs], Counter(active))
    assert [j.origin.user_id for j in order] == expected_users


def test_ten_jobs_from_one_member_leave_room_for_others() -> None:
    waiting = [job(1, m) for m in range(10)] + [job(2, 20), job(3, 21)]
    first_four = fair_order(waiting, Counter())[:4]
    assert {2, 3} <= {j.origin.user_id for j in first_four}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def make_pipeline(*, refusal: str | None = None) -> Any:
    pipeline = create_autospec(JobPipeline, instance=True)
    pipeline.refusal.return_value = refusal
    started = asyncio.Event()

    async def run(j: Job) -> None:
        started.set()
        await asyncio.Event().wait()  # stays at fal until the test ends

    pipeline.run.side_effect = run
    pipeline.started = started
    return pipeline


def make_store(*answers: Any) -> Any:
    """A store whose line reads give ``answers`` in turn: lists of unfinished jobs, or exceptions to raise."""

    def line(jobs: list[Job]) -> tuple[list[Job], Counter[int]]:
        return [j for j in jobs if j.state is JobState.WAITING], Counter(j.origin.user_id for j in jobs if j.at_fal)

    store = create_autospec(JobStore, instance=True)
    store.waiting_line.side_effect = [a if isinstance(a, BaseException) else line(a) for a in answers]
    return store


def started_users(pipeline: Any) -> list[int]:
    return [call.args[0].origin.user_id for call in pipeline.run.call_args_list]


async def test_the_cap_holds_and_the_rest_of_the_line_is_told_its_place() -> None:
    waiting = [job(u, m) for m, u in enumerate([1, 1, 1, 2, 3])]
    at_fal = [job(9, 50, JobState.RUNNING)]
    pipeline = make_pipeline()
    scheduler = Scheduler(store=make_store(waiting + at_fal), pipeline=pipeline, max_concurrent=2, clock=Clock())

    await scheduler.fill()

    assert started_users(pipeline) == [1]  # one slot is taken by the job already at fal
    shown = [(c.args[0].origin.user_id, c.kwargs["position"]) for c in pipeline.show_waiting.call_args_list]
    assert shown == [(2, 1), (3, 2), (1, 3), (1, 4)]
    await scheduler.close()


async def test_a_held_member_is_not_started_and_is_told_why() -> None:
    pipeline = make_pipeline(refusal="paused")
    scheduler = Scheduler(store=make_store([job(1, 0)]), pipeline=pipeline, max_concurrent=2, clock=Clock())

    await scheduler.fill()

    pipeline.run.assert_not_called()
    pipeline.show_waiting.assert_awaited_once()
    assert pipeline.show_waiting.call_args.kwargs == {"held": "paused"}
    await scheduler.close()


async def test_a_job_back_in_line_waits_for_its_retry_time() -> None:
    clock = Clock()
    later = job(1, 0)
    later.retry_at = T0 + timedelta(seconds=30)
    pipeline = make_pipeline()
    scheduler = Scheduler(store=make_store([later], [later]), pipeline=pipeline, max_concurrent=2, clock=clock)

    await scheduler.fill()
    pipeline.run.assert_not_called()
    assert pipeline.show_waiting.call_args.kwargs == {"position": 1}

    clock.now = T0 + timedelta(seconds=31)
    await scheduler.fill()
    assert started_users(pipeline) == [1]
    await scheduler.close()


async def test_the_line_survives_a_pass_that_fails() -> None:
    pipeline = make_pipeline()
    store = make_store(sqlite3.OperationalError("database is locked"), [job(1, 0)])
    scheduler = Scheduler(store=store, pipeline=pipeline, max_concurrent=2, clock=Clock(), pass_retry_s=0.01)

    scheduler.begin()
    await asyncio.wait_for(pipeline.started.wait(), 5)

    assert store.waiting_line.await_count == 2
    assert started_users(pipeline) == [1]
    await scheduler.close()


async def test_a_periodic_task_survives_a_failing_pass(caplog: pytest.LogCaptureFixture) -> None:
    from bot.service import repeat

    passes: list[str] = []
    pauses: list[float] = []

    async def work() -> None:
        passes.append("pass")
        if len(passes) == 1:
            raise sqlite3.OperationalError("database is locked")
        if len(passes) == 3:
            raise asyncio.CancelledError  # the owner stops it

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        await repeat(work, interval_s=3600, retry_s=60, what="pruning", sleep=sleep)
    assert passes == ["pass"] * 3 and pauses == [60, 3600]
    assert "pruning failed" in caplog.text

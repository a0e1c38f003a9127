import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import create_autospec

import pytest
from pydantic import SecretStr

from bot.intake import Intake
from bot.models import InpaintOptions, Job, JobState, Origin
from bot.pipeline import JobPipeline
from bot.scheduler import Scheduler, fair_order
from bot.store import JobStore
from tests.pg import StoreDb, pg_cluster, pg_url

__all__ = ["pg_cluster", "pg_url"]  # fixtures, imported to be found here

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


async def test_the_line_length_is_the_waiting_jobs_of_the_last_pass() -> None:
    pipeline = make_pipeline()
    waiting = [job(u, m) for m, u in enumerate([1, 1, 2])]
    scheduler = Scheduler(store=make_store(waiting), pipeline=pipeline, max_concurrent=1, clock=Clock())
    assert scheduler.line_length == 0
    await scheduler.fill()
    assert scheduler.line_length == 3
    await scheduler.close()


# several processes on one PostgreSQL (SPEC 13): real stores, one per "process", each with its own scheduler


def shared_pipeline() -> Any:
    pipeline = make_pipeline()
    pipeline.settings = SimpleNamespace(limits=SimpleNamespace(max_jobs_per_user=100))
    pipeline.intake = create_autospec(Intake, instance=True)
    pipeline.intake.budgets.return_value = (None, None)
    return pipeline


@pytest.fixture
async def processes(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[tuple[Scheduler, Any]]]]:
    """``await process(clock)``: a store with its own pool and a scheduler on it, as one bot process has."""
    made: list[tuple[Scheduler, Any]] = []

    async def process(clock: Clock, max_concurrent: int = 3) -> tuple[Scheduler, Any]:
        store = await StoreDb("postgresql", dsn=pg_url).open(clock, lease_s=30)
        scheduler = Scheduler(store=store, pipeline=shared_pipeline(), max_concurrent=max_concurrent, clock=clock)
        made.append((scheduler, store))
        return scheduler, store

    yield process
    for scheduler, store in made:
        await scheduler.close()
        await store.close()


async def accepted(store: Any, j: Job) -> Job:
    """A job as the intake of ``store``'s process leaves it: stored, then in the line (that process's)."""
    j.state = JobState.ACCEPTED
    await store.create(j)
    reason = await store.reserve(
        j,
        user_daily_usd=None,
        guild_monthly_usd=None,
        day_start=T0,
        month_start=T0,
        max_unfinished_per_user=100,
    )
    assert reason is None
    return j


async def test_two_processes_share_one_fair_line_and_one_fal_cap(processes: Any) -> None:
    clock = Clock()
    (a, store_a), (b, store_b) = await processes(clock), await processes(clock)
    # members 1 and 2 used process a, member 3 process b; the line is every process's jobs in fair order
    jobs_a = [await accepted(store_a, job(u, m)) for m, u in enumerate([1, 1, 1, 2, 2])]
    jobs_b = [await accepted(store_b, job(3, m)) for m in range(5, 10)]
    await a.resume()
    await b.resume()

    await asyncio.gather(a.fill(), b.fill())
    await asyncio.gather(a.fill(), b.fill())  # nothing more: the cap is full

    started_a = [c.args[0].id for c in a.pipeline.run.call_args_list]
    started_b = [c.args[0].id for c in b.pipeline.run.call_args_list]
    # the first three of the fair order (members 1, 2, 3), each started by the process it belongs to
    assert started_a == [jobs_a[0].id, jobs_a[3].id] and started_b == [jobs_b[0].id]
    assert a.line_length == b.line_length == 7
    # each member is told their place by their own process only, and the places count every process's jobs
    shown_a = {c.args[0].id: c.kwargs.get("position") for c in a.pipeline.show_waiting.call_args_list}
    shown_b = {c.args[0].id: c.kwargs.get("position") for c in b.pipeline.show_waiting.call_args_list}
    assert set(shown_a) == {j.id for j in jobs_a[1:3] + jobs_a[4:]} and set(shown_b) == {j.id for j in jobs_b[1:]}
    assert sorted([*shown_a.values(), *shown_b.values()]) == list(range(1, 8))


async def test_a_dead_process_s_jobs_are_taken_over_when_its_lease_runs_out(processes: Any) -> None:
    clock = Clock()
    (a, store), (b, _) = await processes(clock), await processes(clock)
    queued = job(1, 0, JobState.QUEUED)
    queued.request_id = "req-1"
    await store.create(queued)
    await a.resume()
    assert [c.args[0].id for c in a.pipeline.run.call_args_list] == [queued.id]
    await b.resume()
    b.pipeline.run.assert_not_called()  # a carries it

    clock.now = T0 + timedelta(seconds=20)
    await a.keep_leases()  # renewed until T0 + 50 s; then a stops renewing, as a process killed with -9 does
    clock.now = T0 + timedelta(seconds=45)
    assert await b.keep_leases() == pytest.approx(5.2)  # it looks again right after a's lease runs out
    b.pipeline.run.assert_not_called()

    clock.now = T0 + timedelta(seconds=50.2)
    await b.keep_leases()
    (resumed,) = [c.args[0] for c in b.pipeline.run.call_args_list]
    assert (resumed.id, resumed.state, resumed.request_id) == (queued.id, JobState.QUEUED, "req-1")  # watched again

    (task,) = a._tasks.values()
    await a.keep_leases()  # a comes back (it was only stalled): it learns the job is b's and stops carrying it
    await asyncio.wait([task], timeout=5)
    assert task.cancelled() and a._tasks == {}


async def test_an_intake_is_failed_only_once_its_process_is_gone(processes: Any) -> None:
    clock = Clock()
    (_a, store), (b, _) = await processes(clock), await processes(clock)
    checking = job(1, 0, JobState.ACCEPTED)
    await store.create(checking)  # a is checking the upload
    await b.resume()
    b.pipeline.fail_interrupted_intake.assert_not_called()
    clock.now = T0 + timedelta(seconds=31)
    await b.keep_leases()
    await asyncio.sleep(0)  # the task that ends it runs
    (call,) = b.pipeline.fail_interrupted_intake.call_args_list
    assert call.args[0].id == checking.id
    b.pipeline.run.assert_not_called()


async def test_a_process_that_stops_gives_its_jobs_back_at_once(processes: Any) -> None:
    clock = Clock()
    (a, store), (b, _) = await processes(clock), await processes(clock)
    running = job(1, 0, JobState.RUNNING)
    submitting = job(2, 1, JobState.SUBMITTING)
    for j in (running, submitting):
        await store.create(j)
    await a.resume()
    await a.close()  # SIGTERM: no lease to wait for, except on the job that may be on the wire

    await b.resume()
    assert [c.args[0].id for c in b.pipeline.run.call_args_list] == [running.id]
    clock.now = T0 + timedelta(seconds=31)
    await b.keep_leases()
    assert [c.args[0].id for c in b.pipeline.run.call_args_list] == [running.id, submitting.id]

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from bot.models import InpaintOptions, Job, JobState, Origin
from bot.scheduler import Scheduler, fair_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(user: int, minute: int, state: JobState = JobState.WAITING) -> Job:
    origin = Origin(
        user_id=user,
        guild_id=1,
        channel_id=2,
        application_id=3,
        interaction_id=minute,
        interaction_token="tok",
        token_expires_at=T0 + timedelta(minutes=15),
    )  # type: ignore[arg-type]
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


async def test_scheduler_never_exceeds_the_cap() -> None:
    waiting = [job(u, m) for m, u in enumerate([1, 1, 1, 2, 3])]
    at_fal: list[Job] = []
    started: list[Job] = []
    release = asyncio.Event()

    async def load() -> tuple[list[Job], list[Job]]:
        return [j for j in waiting if j not in started], at_fal

    async def start(j: Job) -> None:
        started.append(j)
        at_fal.append(j)
        await release.wait()
        at_fal.remove(j)

    lines: list[list[Job]] = []

    async def on_line(line: list[Job]) -> None:
        lines.append(line)

    scheduler = Scheduler(max_concurrent=2, load=load, start=start, on_line_changed=on_line)
    await scheduler.fill()
    await asyncio.sleep(0)
    await scheduler.fill()
    assert [j.origin.user_id for j in started] == [1, 2]
    assert [j.origin.user_id for j in lines[-1]] == [3, 1, 1]
    release.set()
    await scheduler.close(grace_s=1)


async def test_a_held_job_is_not_started() -> None:
    waiting = [job(1, 0)]

    async def load() -> tuple[list[Job], list[Job]]:
        return waiting, []

    started: list[Job] = []

    async def start(j: Job) -> None:
        started.append(j)

    async def on_line(line: list[Job]) -> None:
        return None

    scheduler = Scheduler(max_concurrent=2, load=load, start=start, on_line_changed=on_line)
    assert scheduler.hold(waiting[0].id)
    await scheduler.fill()
    assert started == []
    await scheduler.close(grace_s=1)

"""ReplyEditor's decisions on a fake clock: what is sent when, and what makes way for a result.

Only the one method that talks to Discord (``_edit_reply``) is replaced; the rest is the module as it runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bot.config import UiSettings
from bot.models import Job, JobState
from bot.pacing import RequestBudget, prepaid, request_priority
from bot.progress import Reply, progress_reply
from bot.replies import ReplyEditor
from tests.test_progress import make_job as progress_job


class FakeTime:
    """A monotonic clock and a sleep that returns only when the test moves the clock past its end."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.budgets: list[RequestBudget] = []  # told when time moves, as their own timers would

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for at, future in list(self._sleepers):
            if at <= self.now and not future.done():
                future.set_result(None)
        self._sleepers = [(at, f) for at, f in self._sleepers if not f.done()]
        for budget in self.budgets:
            budget.grant()
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class RecordingEditor(ReplyEditor):
    def __init__(self, time: FakeTime, budget: RequestBudget) -> None:
        super().__init__(
            discord.Client(intents=discord.Intents.none()),
            UiSettings(),
            budget=budget,
            monotonic=time,
            sleep=time.sleep,
        )
        self.time = time
        time.budgets.append(budget)
        self.sent: list[tuple[float, str]] = []

    async def _edit_reply(self, job: Job, reply: Reply, **_: Any) -> bool:
        if prepaid.get():  # what budget_trace does before the request leaves
            prepaid.set(False)
        else:
            await self.budget.acquire(request_priority.get())
        if (state := self._editors.get(job.id)) is not None:
            state.window.take(self.time())  # what the trace does as the request leaves
        self.sent.append((self.time(), reply.content.splitlines()[0]))
        return True


def make_job(state: JobState, position: int | None = None) -> Job:
    return progress_job(state=state, queue_position=position)


async def test_a_new_step_goes_at_once_and_a_far_back_position_waits_its_refresh_time() -> None:
    time = FakeTime()
    editor = RecordingEditor(time, RequestBudget(40, clock=time))
    job = make_job(JobState.QUEUED, 483)
    await editor.update(job, progress_reply(job))
    await settle()
    assert editor.sent == [(1000.0, "🕒 Queued at fal: about 480th in line")]
    job.queue_position = 470
    await editor.update(job, progress_reply(job))
    await time.advance(60)
    assert len(editor.sent) == 1  # 235 s may pass before "about 470th" is worth an edit
    await time.advance(200)
    assert editor.sent[-1][1] == "🕒 Queued at fal: about 470th in line"
    job.state, job.queue_position = JobState.RUNNING, None
    await editor.update(job, progress_reply(job))
    await settle()
    assert editor.sent[-1] == (time(), "🎨 Generating…")
    await editor.close()


async def test_a_result_is_not_kept_waiting_by_an_edit_that_waits_for_room() -> None:
    time = FakeTime()
    editor = RecordingEditor(time, RequestBudget(40, clock=time))
    job = make_job(JobState.WAITING)
    for state in (JobState.WAITING, JobState.SUBMITTING, JobState.QUEUED):  # three steps in one second
        job.state = state
        await editor.update(job, progress_reply(job))
        await settle()
    job.state = JobState.RUNNING
    await editor.update(job, progress_reply(job))  # a fourth step: it waits for room in the window
    await settle()
    assert len(editor.sent) == 3
    state = editor._editor(job)
    state.wanted = None  # what post() does before it makes way
    await asyncio.wait_for(editor._settle(state), 1)  # returns at once: the waiting edit is called off
    assert state.task is None and time() == 1000.0
    await editor.close()


async def test_position_updates_go_stalest_first_within_their_share_of_the_budget() -> None:
    time = FakeTime()
    budget = RequestBudget(4, clock=time)  # position updates get 3 a second
    editor = RecordingEditor(time, budget)
    jobs = [make_job(JobState.QUEUED, 5) for _ in range(5)]
    for job in jobs:
        await editor.update(job, progress_reply(job))
    await settle()
    await time.advance(1)  # the fifth first text waited for this second
    await time.advance(1)
    sent_before = len(editor.sent)
    assert sent_before == 5
    for n, job in enumerate(jobs):  # each moves once, the first one earliest
        job.queue_position = 4
        await editor.update(job, progress_reply(job))
        await time.advance(0.01 * (n + 1))
    await time.advance(0)
    first_second = editor.sent[sent_before:]
    assert len(first_second) == 3  # a quarter of the budget stays free for results and new steps
    await time.advance(1)
    updated = [text for _, text in editor.sent[sent_before:]]
    assert updated == ["🕒 Queued at fal: position 4"] * 5
    await editor.close()


async def test_close_starts_nothing_new() -> None:
    time = FakeTime()
    editor = RecordingEditor(time, RequestBudget(40, clock=time))
    job = make_job(JobState.QUEUED, 3)
    for position in (3, 2, 1):
        job.queue_position = position
        await editor.update(job, progress_reply(job))
    job.state = JobState.RUNNING
    await editor.update(job, progress_reply(job))
    await editor.close()
    await settle()
    assert all(s.task is None or s.task.done() for s in editor._editors.values())
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("fluxpaint-")]
    assert [t for t in leftover if not t.done()] == []

"""The fair waiting line and the cap on jobs at fal: reads the line from the store, hands jobs to the pipeline, and
owns one task per running job; it never writes a job."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bot.models import Job, JobState, utcnow

if TYPE_CHECKING:
    from bot.pipeline import JobPipeline
    from bot.store import JobStore

log = logging.getLogger(__name__)

T = TypeVar("T")

PASS_RETRY_S = 5.0  # after a pass that failed (a locked database), the next one comes this much later


class CriticalSections:
    """Work that must finish once started (a submit and the write that records it), even at shutdown."""

    def __init__(self) -> None:
        self._inner: set[asyncio.Task[Any]] = set()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.ensure_future(coro)
        self._inner.add(task)
        task.add_done_callback(self._inner.discard)
        return await asyncio.shield(task)

    async def settle(self, timeout_s: float) -> None:
        if self._inner:
            await asyncio.wait(set(self._inner), timeout=timeout_s)


def fair_order(
    waiting: Sequence[Job], active_by_user: Counter[int], last_served: Mapping[int, int] | None = None
) -> list[Job]:
    """Round-robin across members: everyone's first job, then everyone's second, and so on.

    Within a round, members with fewer jobs already at fal go first, then the member served longest ago
    (``last_served`` maps a member to the sequence number of their latest start), then the older request.
    """
    served = last_served or {}
    by_user: dict[int, list[Job]] = defaultdict(list)
    for job in sorted(waiting, key=lambda j: j.created_at):
        by_user[job.origin.user_id].append(job)
    order: list[Job] = []
    depth = max((len(jobs) for jobs in by_user.values()), default=0)
    for round_no in range(depth):
        this_round = [jobs[round_no] for jobs in by_user.values() if len(jobs) > round_no]
        this_round.sort(
            key=lambda j: (active_by_user[j.origin.user_id] + round_no, served.get(j.origin.user_id, -1), j.created_at)
        )
        order.extend(this_round)
    return order


class Scheduler:
    """Starts waiting jobs in fair order while fewer than ``max_concurrent`` are at fal."""

    def __init__(
        self,
        *,
        store: JobStore,
        pipeline: JobPipeline,
        max_concurrent: int,
        clock: Callable[[], datetime] = utcnow,
        pass_retry_s: float = PASS_RETRY_S,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.max_concurrent = max_concurrent
        self.clock = clock
        self.pass_retry_s = pass_retry_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._served: dict[int, int] = {}  # member -> sequence number of their latest start (fairness)
        self._starts = 0

    async def resume(self) -> None:
        """At start: fail the jobs whose intake was cut short and carry on every job at fal or in delivery."""
        resumed = 0
        for job in await self.store.list_unfinished():
            if job.state is JobState.ACCEPTED:
                await self.pipeline.fail_interrupted_intake(job)
            elif job.state is not JobState.WAITING:
                self.run(job)
                resumed += 1
        log.info("resumed %d job(s) at fal or in delivery", resumed)

    @property
    def running(self) -> bool:
        """The line is being served: the pump task is alive (for /healthz)."""
        return self._pump is not None and not self._pump.done() and not self._closing

    def begin(self) -> None:
        self._pump = asyncio.create_task(self._pump_loop(), name="fluxpaint-scheduler")
        self._pump.add_done_callback(self._log_failure)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _wake_in(self, delay_s: float) -> None:
        """One timer for the earliest moment the line must be read again (a job back in line, a failed pass)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay_s, 0.0)
        if self._timer is not None and not self._timer.cancelled() and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self.wake)

    def run(self, job: Job) -> None:
        """Own the task that carries ``job`` to its end (used for resumed jobs too)."""
        if self._closing or job.id in self._tasks:
            return
        task = asyncio.create_task(self.pipeline.run(job), name=f"fluxpaint-job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(functools.partial(self._done, job.id))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._log_failure(task)
        self.wake()  # its slot is free

    @staticmethod
    def _log_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def _pump_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.fill()
            except Exception:  # a busy or locked database, a Discord hiccup: the line is read again shortly
                log.exception("the waiting line could not be read; trying again in %.0f s", self.pass_retry_s)
                self._wake_in(self.pass_retry_s)

    async def fill(self) -> None:
        """One pass: start what fits, tell the rest where they stand."""
        waiting_jobs, active = await self.store.waiting_line()
        now = self.clock()
        ready: list[Job] = []
        later: list[float] = []
        refusals: dict[tuple[int | None, int], str | None] = {}  # one look per member, not per job
        for job in waiting_jobs:
            if job.id in self._tasks:
                continue
            member = (job.origin.guild_id, job.origin.user_id)
            if member not in refusals:
                refusals[member] = await self.pipeline.refusal(job)
            if (reason := refusals[member]) is not None:
                await self.pipeline.show_waiting(job, held=reason)
            elif job.retry_at is not None and job.retry_at > now:
                later.append((job.retry_at - now).total_seconds())
                ready.append(job)  # keeps its place in the line, but does not start yet
            else:
                ready.append(job)
        line = fair_order(ready, active, self._served)
        free = self.max_concurrent - sum(active.values()) - self._starting(waiting_jobs)
        waiting: list[Job] = []
        for job in line:
            if free > 0 and not (job.retry_at is not None and job.retry_at > now):
                free -= 1
                self._starts += 1
                self._served[job.origin.user_id] = self._starts
                self.run(job)
            else:
                waiting.append(job)
        for position, job in enumerate(waiting, start=1):
            await self.pipeline.show_waiting(job, position=position)
        if later:
            self._wake_in(min(later))

    def _starting(self, waiting: Sequence[Job]) -> int:
        # jobs whose task runs but whose row still says waiting hold a slot too
        return sum(1 for job in waiting if job.id in self._tasks)

    async def close(self) -> None:
        """Stop starting jobs and cancel the job tasks; their rows stay as they are for the next start."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.wait([self._pump])  # a pass under way must not read the store after it closes
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

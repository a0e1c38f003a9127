"""Fair waiting line and the cap on jobs at fal; owns one task per running job and nothing else."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from bot.models import Job

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        max_concurrent: int,
        load: Callable[[], Awaitable[tuple[list[Job], list[Job]]]],
        start: Callable[[Job], Coroutine[Any, Any, None]],
        on_line_changed: Callable[[list[Job]], Awaitable[None]],
    ) -> None:
        """``load`` returns (waiting, at_fal) from the store; ``start`` runs one job to the end."""
        self.max_concurrent = max_concurrent
        self._load = load
        self._start = start
        self._on_line_changed = on_line_changed
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._closing = False
        self.critical = CriticalSections()
        self._held: set[str] = set()
        self._served: dict[int, int] = {}  # member -> sequence number of their latest start (fairness)
        self._starts = 0

    def begin(self) -> None:
        self._pump = asyncio.create_task(self._pump_loop(), name="fluxpaint-scheduler")
        self._pump.add_done_callback(self._log_failure)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def hold(self, job_id: str) -> bool:
        """Keep a waiting job from starting (a cancel is being decided); False if it already started."""
        if job_id in self._tasks:
            return False
        self._held.add(job_id)
        return True

    def release(self, job_id: str) -> None:
        self._held.discard(job_id)
        self.wake()

    def run(self, job: Job) -> None:
        """Own the task that carries ``job`` to its end (used for resumed jobs too)."""
        if self._closing or job.id in self._tasks:
            return
        task = asyncio.create_task(self._start(job), name=f"fluxpaint-job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(functools.partial(self._done, job.id))

    async def stop_job(self, job_id: str) -> None:
        """Cancel the task of ``job_id`` (after a cancel was decided) and wait until it has let go."""
        task = self._tasks.get(job_id)
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait([task])

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._log_failure(task)
        self.wake()

    @staticmethod
    def _log_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def _pump_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self.fill()

    async def fill(self) -> None:
        waiting, at_fal = await self._load()
        active = Counter(job.origin.user_id for job in at_fal)
        line = [
            job
            for job in fair_order(waiting, active, self._served)
            if job.id not in self._tasks and job.id not in self._held
        ]
        free = self.max_concurrent - len(at_fal) - self._starting(waiting)
        for job in line[: max(free, 0)]:
            self._starts += 1
            self._served[job.origin.user_id] = self._starts
            self.run(job)
        await self._on_line_changed(line[max(free, 0) :])

    def _starting(self, waiting: Iterable[Job]) -> int:
        # jobs whose task runs but whose row still says waiting hold a slot too
        return sum(1 for job in waiting if job.id in self._tasks)

    async def close(self, grace_s: float) -> None:
        """Stop starting jobs and cancel the job tasks; a submit under way gets ``grace_s`` to be recorded."""
        self._closing = True
        if self._pump is not None:
            self._pump.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.critical.settle(grace_s)

"""The fair waiting line and the cap on jobs at fal: reads the line from the store, hands jobs to the pipeline, and
owns one task per running job; it never writes a job. On a store several processes share (SPEC 13) it claims the
jobs it starts, renews the leases on the jobs it carries and takes over those of a process that died."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bot.intake import day_start, month_start
from bot.models import Job, JobState, utcnow
from bot.store import SharedLine
from bot.store_schema import ClaimRequest, LineRules

if TYPE_CHECKING:
    from bot.pipeline import JobPipeline
    from bot.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

PASS_RETRY_S = 5.0  # after a pass that failed (a locked database), the next one comes this much later
TAKE_OVER_MARGIN_S = 0.2  # a lease is looked at this long after it runs out, so that it has run out
LEASE_PASS_MIN_S = 0.25  # between two passes of the lease loop, however often other processes notify
# what a member reads while a claim leaves their job waiting (the budget was lowered since it entered the line)
CLAIM_REFUSALS = {
    "user_limit": "you have as many unfinished jobs as allowed.",
    "user_budget": "your daily budget here is used up.",
    "guild_budget": "this server's monthly budget is used up.",
}


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


def served_order(last_started: Mapping[int, datetime]) -> dict[int, int]:
    """Members' latest starts as ``fair_order``'s sequence numbers (the earliest start gets the smallest)."""
    ranked = sorted(last_started.items(), key=lambda item: item[1])
    return {user_id: rank for rank, (user_id, _) in enumerate(ranked)}


class Scheduler:
    """Starts waiting jobs in fair order while fewer than ``max_concurrent`` are at fal (across every process, on
    a store several share)."""

    def __init__(
        self,
        *,
        store: Store,
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
        self._line_length = 0
        # several processes (SPEC 13): the shared line, its lease loop, the jobs whose claim is to be given back
        self._line: SharedLine | None = store if isinstance(store, SharedLine) else None
        self._leases: asyncio.Task[None] | None = None
        self._ended: set[str] = set()
        self._lease_poke = asyncio.Event()

    async def resume(self) -> None:
        """At start: fail the jobs whose intake was cut short and carry on every job at fal or in delivery; on a
        store several processes share, only those no live process holds (their lease ran out)."""
        if self._line is not None:
            await self._line.listen(self._heard)
            orphans = await self._line.claim_orphans()
            log.info("resumed %d job(s) at fal or in delivery", self._take(orphans.jobs))
            return
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
        """The line is being served: the pump task is alive, and on a shared store the lease loop (for /healthz)."""
        leases_alive = self._line is None or (self._leases is not None and not self._leases.done())
        return self._pump is not None and not self._pump.done() and not self._closing and leases_alive

    @property
    def line_length(self) -> int:
        """The jobs waiting in the line at the last pass (for /metrics)."""
        return self._line_length

    def begin(self) -> None:
        self._pump = asyncio.create_task(self._pump_loop(), name="fluxpaint-scheduler")
        self._pump.add_done_callback(self._log_failure)
        if self._line is not None:
            self._leases = asyncio.create_task(self._lease_loop(self._line), name="fluxpaint-leases")
            self._leases.add_done_callback(self._log_failure)
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
        self._own(job.id, functools.partial(self.pipeline.run, job))

    def _own(self, job_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._closing or job_id in self._tasks:
            return
        task = asyncio.create_task(work(), name=f"fluxpaint-job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(functools.partial(self._done, job_id))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._log_failure(task)
        if self._line is not None:
            self._ended.add(job_id)  # its claim is given back at the next pass
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
        if self._line is not None:
            await self._fill_shared(self._line)
            return
        waiting_jobs, active = await self.store.waiting_line()
        self._line_length = len(waiting_jobs)
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

    # several processes on one store (SPEC 13)

    def _heard(self) -> None:
        """Another process changed the line: read it again, and look for jobs it handed over."""
        self.wake()
        self._lease_poke.set()

    async def _fill_shared(self, line: SharedLine) -> None:
        """One pass over the line every process shares: the fair order of every process's jobs; this process starts
        those of its own that are within the free slots (the store checks the fal cap, the member's cap and the
        budgets in the claim's transaction) and tells its own members where they stand."""
        await self._give_back(line)
        snapshot = await line.line_snapshot()
        self._line_length = len(snapshot.waiting)
        now = self.clock()
        ready: list[Job] = []
        later: list[float] = []
        refusals: dict[tuple[int | None, int], str | None] = {}
        for job in snapshot.waiting:
            if job.id in self._tasks:
                continue
            member = (job.origin.guild_id, job.origin.user_id)
            if member not in refusals:
                refusals[member] = await self.pipeline.refusal(job)
            if (reason := refusals[member]) is not None:
                if job.id in snapshot.mine:
                    await self.pipeline.show_waiting(job, held=reason)
                continue
            if job.retry_at is not None and job.retry_at > now:
                later.append((job.retry_at - now).total_seconds())
            ready.append(job)
        for job, refused in snapshot.refused:
            await self.pipeline.show_waiting(job, held=CLAIM_REFUSALS.get(refused, refused))
        order = fair_order(ready, snapshot.active, served_order(snapshot.last_started))
        free = self.max_concurrent - sum(snapshot.active.values())
        startable = [job for job in order if not (job.retry_at is not None and job.retry_at > now)]
        # the turn of a job another live process owns is that process's to take (it hears of the free slot)
        ours = [job for job in startable[: max(free, 0)] if job.id in snapshot.claimable]
        started: set[str] = set()
        if ours:
            rules = LineRules(
                max_at_fal=self.max_concurrent,
                max_unfinished_per_user=self.pipeline.settings.limits.max_jobs_per_user,
                day_start=day_start(now),
                month_start=month_start(now),
            )
            result = await line.claim_waiting(await self._claim_requests(ours), rules)
            for job_id, reason in result.refused.items():
                log.info("job=%s not started: %s", job_id, reason)
                self.wake()  # its slot goes to the next in line
            for job in result.claimed:
                self._starts += 1
                self._served[job.origin.user_id] = self._starts
                started.add(job.id)
                self.run(job)
        waiting = [job for job in order if job.id not in started]
        for position, job in enumerate(waiting, start=1):
            if job.id in snapshot.mine:
                await self.pipeline.show_waiting(job, position=position)
        if later:
            self._wake_in(min(later))

    async def _claim_requests(self, jobs: Sequence[Job]) -> list[ClaimRequest]:
        budgets: dict[tuple[int | None, int], tuple[float | None, float | None]] = {}  # one look per member
        requests: list[ClaimRequest] = []
        for job in jobs:
            member = (job.origin.guild_id, job.origin.user_id)
            if member not in budgets:
                budgets[member] = await self.pipeline.intake.budgets(job.origin)
            requests.append(ClaimRequest(job.id, *budgets[member]))
        return requests

    async def _give_back(self, line: SharedLine) -> None:
        """The slots of the jobs whose task ended are free (a job back in line stays this process's)."""
        if not self._ended:
            return
        ended, self._ended = self._ended, set()
        try:
            await line.release(ended)
        except BaseException:
            self._ended |= ended
            raise

    def _take(self, jobs: Sequence[Job]) -> int:
        """Carry on jobs taken from a process that stopped, as a restart does (one in the line is shown and started
        by this process from now on); how many go on at fal or in delivery."""
        resumed = 0
        for job in jobs:
            if job.state is JobState.ACCEPTED:
                self._own(job.id, functools.partial(self.pipeline.fail_interrupted_intake, job))
            elif job.state is not JobState.WAITING:
                self.run(job)
                resumed += 1
        return resumed

    async def keep_leases(self) -> float:
        """One pass of the lease loop: renew this process's leases (a task whose job another process took over is
        stopped) and take over the jobs whose lease ran out. Returns the seconds until the next pass."""
        line = self._line
        assert line is not None
        await line.listen(self._heard)  # again, if the listener's connection was lost
        for job_id in await line.renew(list(self._tasks)):
            if (task := self._tasks.get(job_id)) is not None:
                log.warning("job=%s was taken over by another process; this one stops carrying it", job_id)
                task.cancel()
        orphans = await line.claim_orphans()
        if orphans.jobs:
            taken = self._take(orphans.jobs)
            log.info("took over %d job(s) no live process held (%d at fal or in delivery)", len(orphans.jobs), taken)
        self.wake()  # slots of jobs that ended elsewhere, jobs taken over
        delay = line.lease_s / 3
        if orphans.next_expiry is not None:
            delay = min(delay, (orphans.next_expiry - self.clock()).total_seconds() + TAKE_OVER_MARGIN_S)
        return max(delay, 0.0)

    async def _lease_loop(self, line: SharedLine) -> None:
        while not self._closing:
            self._lease_poke.clear()
            delay = line.lease_s / 3
            try:
                delay = await self.keep_leases()
            except Exception:  # the database is away: leases are renewed at the next pass, if still ours
                log.exception("the leases could not be renewed; trying again in %.0f s", delay)
            await asyncio.sleep(min(delay, LEASE_PASS_MIN_S))  # notifications come in bursts: one pass for many
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_poke.wait(), max(delay - LEASE_PASS_MIN_S, 0.0))

    async def close(self) -> None:
        """Stop starting jobs and cancel the job tasks; their rows stay as they are for the next start (on a shared
        store their claims are given back, so another process carries them on at once)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for loop_task in (self._pump, self._leases):
            if loop_task is not None:
                loop_task.cancel()
                await asyncio.wait([loop_task])  # a pass under way must not read the store after it closes
        carried = set(self._tasks)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._line is not None:
            try:
                await self._line.release(carried | self._ended, hand_over=True)
            except Exception:  # the leases run out by themselves; the other processes take over then
                log.exception("the claims could not be given back at shutdown")

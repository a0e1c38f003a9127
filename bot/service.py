"""JobService: the one API the cogs call (check, accept, cancel, usage, admin changes) and the life cycle of the
pipeline and the line; free of Discord types. A job's own path is in ``bot.pipeline``."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp

from bot.admin import GuildAdmin
from bot.cancel import CancelResult, JobCanceller
from bot.config import Settings
from bot.errors import InputError, RefusedError
from bot.fal import FalQueueClient
from bot.files import JobFiles
from bot.intake import day_start, month_start, next_day
from bot.iterate import EditValues, Iterations, Verb, derived_options, edit_defaults
from bot.library import LoraLibrary
from bot.metrics import Metrics
from bot.models import InpaintOptions, Job, Origin, Upload, utcnow
from bot.paint_links import PaintLinks
from bot.painting import Painter
from bot.pipeline import JobPipeline
from bot.progress import JobNotifier, history_text, usd
from bot.scheduler import Scheduler
from bot.store import Store

log = logging.getLogger(__name__)

HISTORY_JOBS = 10

PRUNE_RETRY_S = 60.0
PAINT_SWEEP_S = 30.0  # how late a painter job whose link ran out may end
CHECKED_TTL_S = 30.0  # a checked command whose job never arrived (its acknowledgement failed) stops counting
CHECK_BUDGET_S = 1.5  # of Discord's 3 s to acknowledge a command, what the private checks may take

__all__ = ["CancelResult", "Draft", "JobService"]


@dataclass(frozen=True)
class Draft:
    """A job to be made from a result, checked as far as it can be without reading files."""

    source: Job
    verb: Verb
    options: InpaintOptions
    index: int | None  # Use k: the 0-based result file of the source
    message_id: int | None  # the result's message the click came from: the new job's reply answers it


async def repeat(
    work: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    retry_s: float,
    what: str,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """``work`` every ``interval_s`` until cancelled; a pass that fails is logged and tried again after ``retry_s``."""
    while True:
        try:
            await work()
        except Exception:  # a locked database or a file that will not go: the next pass tries again
            log.exception("%s failed; trying again in %.0f s", what, retry_s)
            await sleep(retry_s)
            continue
        await sleep(interval_s)


class JobService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        files: JobFiles,
        fal: FalQueueClient,
        session: aiohttp.ClientSession,
        notifier: JobNotifier,
        paint_links: PaintLinks | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.clock = clock
        self.admin = GuildAdmin(settings, store, clock)
        self.library = LoraLibrary(settings, store)
        self.pipeline = JobPipeline(
            settings=settings,
            store=store,
            files=files,
            fal=fal,
            session=session,
            notifier=notifier,
            admin=self.admin,
            library=self.library,
            clock=clock,
            metrics=metrics,
        )
        self.canceller = JobCanceller(self.pipeline)
        self.iterations = Iterations(settings=settings, store=store, files=files, intake=self.pipeline.intake)
        self.scheduler = Scheduler(
            store=store, pipeline=self.pipeline, max_concurrent=settings.fal.max_concurrent, clock=clock
        )
        # the mask painter (SPEC 12), when [web] is on: cli.py serves bot.web.PaintServer over it
        self.painter = (
            Painter(
                links=paint_links,
                store=store,
                files=files,
                pipeline=self.pipeline,
                wake=self.scheduler.wake,
                clock=clock,
            )
            if paint_links is not None
            else None
        )
        self._accepting = True
        self._pruner: asyncio.Task[None] | None = None
        self._paint_sweeper: asyncio.Task[None] | None = None
        # Commands that passed the private checks and whose job is not stored yet, by member: a burst of commands
        # all pass before the first job is written, so they count toward the cap (and are refused privately).
        self._checked: dict[tuple[int | None, int], list[float]] = {}

    # life cycle

    async def start(self) -> None:
        """Resume every unfinished job from its saved state, then start the waiting line."""
        self._warn_if_unbounded()
        await self.scheduler.resume()
        self.scheduler.begin()
        self._pruner = asyncio.create_task(self._prune_loop(), name="fluxpaint-prune")
        self._pruner.add_done_callback(self._log_end)
        if self.painter is not None:  # jobs whose mask was not painted in time end (also those from before a stop)
            sweep = repeat(
                self.pipeline.expire_paintings, interval_s=PAINT_SWEEP_S, retry_s=PRUNE_RETRY_S, what="expiring"
            )
            self._paint_sweeper = asyncio.create_task(sweep, name="fluxpaint-paint-expiry")
            self._paint_sweeper.add_done_callback(self._log_end)

    @staticmethod
    def _log_end(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def _warn_if_unbounded(self) -> None:
        budgets, access = self.settings.budgets, self.settings.access
        if access.guild_ids:
            return
        if budgets.capped("user_daily", budgets.user_daily_usd) is None and (
            budgets.capped("guild_monthly", budgets.guild_monthly_usd) is None
        ):
            log.warning(
                "the bot is open to every server and has no budget: any server's admins may spend without limit "
                "(set budgets.user_daily_usd / guild_monthly_usd or their max_* ceilings, or access.guild_ids)"
            )

    async def prune(self) -> int:
        """Delete finished jobs older than ``storage.keep_finished_days`` and their files; blank expired tokens."""
        await self.store.forget_expired_tokens()
        cutoff = self.clock() - timedelta(days=self.settings.storage.keep_finished_days)
        ids = await self.store.prune(cutoff)
        for job_id in ids:
            await asyncio.to_thread(self.files.remove, job_id)
        if ids:
            log.info("pruned %d finished job(s)", len(ids))
        return len(ids)

    async def _prune_loop(self) -> None:
        await repeat(
            self.prune, interval_s=self.settings.storage.prune_interval_s, retry_s=PRUNE_RETRY_S, what="pruning"
        )

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop taking jobs; let a submit under way be recorded; everything else resumes at the next start."""
        self._accepting = False
        for task in (self._pruner, self._paint_sweeper):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        await self.scheduler.close()
        await self.pipeline.critical.settle(grace_s)

    # members

    async def check(self, options: InpaintOptions, origin: Origin, *, mask_file: bool = False) -> None:
        """The refusals that need no download, so the cog can answer them privately before anything is public.

        Raises:
            UserFacingError: the member may not run this job now; nothing was stored.
        """
        if not self._accepting:
            raise RefusedError("The bot is restarting; please try again in a minute.")
        member = (origin.guild_id, origin.user_id)
        now = time.monotonic()
        pending = [t for t in self._checked.get(member, []) if now - t < CHECKED_TTL_S]
        self._checked[member] = [*pending, now]  # counted before the first await: the burst runs meanwhile
        try:
            async with asyncio.timeout(CHECK_BUDGET_S):
                await self.pipeline.intake.check(options, origin, pending=len(pending), mask_file=mask_file)
        except TimeoutError:  # a busy store must not cost the acknowledgement: accept checks again after it
            log.warning(
                "guild=%s user=%s the checks before the defer were slow; deferring first",
                origin.guild_id,
                origin.user_id,
            )
        except BaseException:
            self._forget_checked(member, now)
            raise

    def _forget_checked(self, member: tuple[int | None, int], at: float | None = None) -> None:
        """One checked command of ``member`` reached its end (the one checked ``at``, else the oldest)."""
        checked = self._checked.get(member, [])
        if checked:
            checked.remove(at if at is not None and at in checked else checked[0])
        if not checked:
            self._checked.pop(member, None)

    async def accept(self, options: InpaintOptions, origin: Origin, image: Upload, mask: Upload | None) -> Job:
        """Validate everything, store the inputs and put the job in the waiting line.

        Raises:
            UserFacingError: the job was refused; nothing was submitted and nothing is charged.
        """
        if not self._accepting:
            raise RefusedError("The bot is restarting; please try again in a minute.")
        self._forget_checked((origin.guild_id, origin.user_id))  # its job is stored next: the store counts it
        job = await self.pipeline.accept(options, origin, image, mask)
        self.scheduler.wake()
        return job

    # building on a result (SPEC 10): a full job, checked and paid for like a slash command

    async def iteration_source(self, job_id: str, verb: Verb, origin: Origin, *, index: int | None = None) -> Job:
        """The result a button names, if the member may build on it now (for the Edit modal's prefill): the form
        is not opened for a member who would be refused anyway.

        Raises:
            UserFacingError: access, a ban or a pause; the job or its files are gone; or ``ui.iterate_by`` keeps
            it to its requester.
        """
        await self.pipeline.intake.check_member(origin)
        return await self.iterations.source(job_id, user_id=origin.user_id, verb=verb, index=index)

    def edit_defaults(self, job: Job) -> EditValues:
        return edit_defaults(job)

    async def draft(
        self,
        job_id: str,
        verb: Verb,
        origin: Origin,
        *,
        index: int | None = None,
        values: EditValues | None = None,
        message_id: int | None = None,
    ) -> Draft:
        """Every check that needs no file, so the cog can refuse privately before anything is public.

        Raises:
            UserFacingError: the member may not make this job now; nothing was stored.
        """
        if verb is Verb.REPAINT and self.painter is None:
            raise RefusedError("The mask painter is not enabled on this bot.")
        source = await self.iterations.source(job_id, user_id=origin.user_id, verb=verb, index=index)
        options = derived_options(source, verb, values)
        await self.check(options, origin, mask_file=True)
        message_id = message_id or next(iter(source.delivered_message_ids), None)
        return Draft(source=source, verb=verb, options=options, index=index, message_id=message_id)

    async def accept_draft(self, draft: Draft, origin: Origin) -> Job:
        """Make the job: its inputs come from the source's folder, never from Discord.

        Raises:
            UserFacingError: the job was refused; nothing was submitted and nothing is charged.
        """
        self._forget_checked((origin.guild_id, origin.user_id))
        if not self._accepting:
            raise RefusedError("The bot is restarting; please try again in a minute.")
        if draft.verb is Verb.USE:
            assert draft.index is not None
            prepare = functools.partial(self.iterations.use_result, source=draft.source, index=draft.index)
        elif draft.verb is Verb.REPAINT:  # the painter is on: draft() made sure
            prepare = functools.partial(self.iterations.paint_on_result, source=draft.source, index=draft.index or 0)
        else:
            prepare = functools.partial(self.iterations.copy_inputs, source=draft.source)
        job = await self.pipeline.accept_from(
            draft.options, origin, draft.source, draft.message_id, prepare, as_ran=draft.verb is Verb.REROLL
        )
        log.info(
            "job=%s guild=%s user=%s made from job=%s (%s)",
            job.id,
            origin.guild_id,
            origin.user_id,
            draft.source.id,
            draft.verb.value,
        )
        self.scheduler.wake()
        return job

    async def paint_link(self, job_id: str, *, user_id: int) -> str:
        """A single-use link to the mask painter for the member whose job waits for its mask (SPEC 12).

        Raises:
            UserFacingError: the painter is off, it is someone else's job, or the job no longer waits.
        """
        if self.painter is None:
            raise RefusedError("The mask painter is not enabled on this bot.")
        return await self.painter.link(job_id, user_id)

    def release_check(self, origin: Origin) -> None:
        """A checked command whose job will not be made after all (its reply could not be posted)."""
        self._forget_checked((origin.guild_id, origin.user_id))

    async def mask_picture(self, job_id: str) -> bytes:
        """The mask over the image, as the job's reply showed it (the Mask button).

        Raises:
            InputError: the job or the picture is gone.
        """
        return await self.iterations.mask_picture(job_id)

    async def deletable_messages(self, job_id: str, *, user_id: int, can_manage: bool) -> list[int]:
        """The result's messages, if this member may delete them: its requester, or a moderator.

        Raises:
            RefusedError: anyone else; InputError: the job is gone.
        """
        job = await self.store.get(job_id)
        if job is None:
            if can_manage:
                return []  # pruned: the clicked message itself goes
            raise InputError("This result's job is no longer stored; a moderator can delete the message.")
        if user_id not in (job.origin.user_id, job.origin.photo_owner_id) and not can_manage:
            raise RefusedError(
                "Only the member who made this result (or whose photo it was made from), or someone with Manage "
                "Messages, can delete it."
            )
        return list(job.delivered_message_ids)

    async def cancel(self, job_id: str, *, user_id: int, can_manage: bool) -> CancelResult:
        """Cancel a job for its requester or a moderator; fal's answer decides the outcome."""
        result = await self.canceller.cancel(job_id, user_id=user_id, can_manage=can_manage)
        if result.cancelled:
            self.scheduler.wake()
        return result

    async def history_text(self, *, user_id: int, guild_id: int | None) -> str:
        """The member's last ten jobs here (SPEC 10's /history)."""
        return history_text(await self.store.recent_jobs(user_id=user_id, guild_id=guild_id, limit=HISTORY_JOBS))

    async def usage_text(self, *, user_id: int, guild_id: int | None) -> str:
        now = self.clock()
        today = await self.store.spend(user_id=user_id, guild_id=guild_id, since=day_start(now))
        month = await self.store.spend(user_id=user_id, guild_id=guild_id, since=month_start(now))
        unfinished = await self.store.count_unfinished(user_id)
        lines = [f"Your spend today: {usd(today)}", f"This month: {usd(month)}", f"Unfinished jobs: {unfinished}"]
        user_daily, guild_monthly = await self.admin.budgets(guild_id)
        if user_daily is not None:
            resets = int(next_day(now).timestamp())
            lines.append(
                f"Daily budget: {usd(user_daily)} ({usd(max(user_daily - today, 0))} left, resets <t:{resets}:R>)"
            )
        if guild_id is not None and guild_monthly is not None:
            server = await self.store.spend(guild_id=guild_id, since=month_start(now))
            lines.append(f"Server this month: {usd(server)} of {usd(guild_monthly)}")
        return "\n".join(lines)

    # admins: changes that move the line

    async def set_paused(self, guild_id: int, paused: bool, *, by: int) -> str:
        text = await self.admin.set_paused(guild_id, paused, by=by)
        self.scheduler.wake()
        return text

    async def ban(self, guild_id: int, user_id: int, *, by: int, reason: str | None) -> str:
        newly, text = await self.admin.ban(guild_id, user_id, by=by, reason=reason)
        if newly:
            await self.canceller.drop_waiting(guild_id, user_id)
            self.scheduler.wake()
        return text

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> str:
        text = await self.admin.unban(guild_id, user_id, by=by)
        self.scheduler.wake()
        return text

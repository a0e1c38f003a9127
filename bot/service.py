"""JobService: accept, cancel, usage, resume; the only API that cogs call, and free of Discord types."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from bot import images
from bot.admin import GuildAdmin
from bot.config import Settings
from bot.downloads import DownloadError, fetch
from bot.errors import InputError, RefusedError, UserFacingError
from bot.fal import FalQueueClient
from bot.files import JobFiles
from bot.models import InpaintOptions, Job, JobState, Origin, Upload, utcnow
from bot.progress import JobNotifier, progress_reply, usd
from bot.runner import MASK_FILE, JobRunner, estimate_cost, input_file
from bot.scheduler import Scheduler
from bot.store import JobStore

log = logging.getLogger(__name__)

RESTARTED_WHILE_CHECKING = "The bot restarted while checking your upload; please run /inpaint again."


@dataclass(frozen=True)
class CancelResult:
    message: str
    cancelled: bool


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_day(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


class JobService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        files: JobFiles,
        fal: FalQueueClient,
        session: aiohttp.ClientSession,
        notifier: JobNotifier,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.fal = fal
        self.session = session
        self.notifier = notifier
        self.clock = clock
        self.admin = GuildAdmin(
            settings, store, clock, on_ban=self._drop_waiting, on_change=lambda: self.scheduler.wake()
        )
        self.scheduler = Scheduler(
            max_concurrent=settings.fal.max_concurrent,
            load=self._load_line,
            start=self._run,
            on_line_changed=self._show_line,
        )
        self.runner = JobRunner(
            settings=settings,
            store=store,
            files=files,
            fal=fal,
            session=session,
            notifier=notifier,
            critical=self.scheduler.critical,
            on_slot_free=self.scheduler.wake,
            gate=self.admin.job_refusal,
            clock=clock,
        )
        self._accepting = True
        self._pruner: asyncio.Task[None] | None = None

    # life cycle

    async def start(self) -> None:
        """Resume every unfinished job from its saved state, then start the waiting line."""
        resumed = 0
        for job in await self.store.list_unfinished():
            if job.state is JobState.ACCEPTED:
                job.error = RESTARTED_WHILE_CHECKING
                job.state = JobState.FAILED
                await self.store.save(job)
                await self.notifier.update(job, progress_reply(job))
            elif job.state is not JobState.WAITING:
                self.scheduler.run(job)
                resumed += 1
        log.info("resumed %d job(s) at fal or in delivery", resumed)
        self.scheduler.begin()
        self._pruner = asyncio.create_task(self._prune_loop(), name="fluxpaint-prune")

    async def prune(self) -> int:
        """Delete finished jobs older than ``storage.keep_finished_days`` and their files."""
        cutoff = self.clock() - timedelta(days=self.settings.storage.keep_finished_days)
        ids = await self.store.prune(cutoff)
        for job_id in ids:
            await asyncio.to_thread(self.files.remove, job_id)
        if ids:
            log.info("pruned %d finished job(s)", len(ids))
        return len(ids)

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune()
            except OSError as exc:
                log.warning("pruning failed (%s); trying again later", exc)
            await asyncio.sleep(self.settings.storage.prune_interval_s)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop taking jobs; let a submit under way be recorded; everything else resumes at the next start."""
        self._accepting = False
        if self._pruner is not None:
            self._pruner.cancel()
        await self.scheduler.close(grace_s)

    async def _run(self, job: Job) -> None:
        await self.runner.run(job)

    async def _load_line(self) -> tuple[list[Job], list[Job]]:
        """The waiting line minus jobs an admin holds back (paused guild, banned member), and the jobs at fal."""
        unfinished = await self.store.list_unfinished()
        waiting: list[Job] = []
        refusals: dict[tuple[int | None, int], str | None] = {}  # one look per member, not per job
        for job in unfinished:
            if job.state is not JobState.WAITING:
                continue
            member = (job.origin.guild_id, job.origin.user_id)
            if member not in refusals:
                refusals[member] = await self.admin.job_refusal(job)
            reason = refusals[member]
            if reason is None:
                waiting.append(job)
            else:
                await self.notifier.update(job, progress_reply(job, held=reason))
        at_fal = [job for job in unfinished if job.at_fal]
        return waiting, at_fal

    async def _drop_waiting(self, guild_id: int, user_id: int) -> None:
        """A member was banned: their jobs that fal does not have yet are cancelled, free of charge."""
        for job in await self.store.list_unfinished():
            if job.origin.guild_id == guild_id and job.origin.user_id == user_id and job.state is JobState.WAITING:
                if not self.scheduler.hold(job.id):
                    continue  # being submitted this very moment: the runner's gate stops it
                try:
                    await self._mark_cancelled(job, None, "Cancelled: an admin stopped your use of /inpaint here.")
                finally:
                    self.scheduler.release(job.id)

    async def _show_line(self, line: list[Job]) -> None:
        for position, job in enumerate(line, start=1):
            await self.notifier.update(job, progress_reply(job, line_position=position))

    # accept

    def _check_access(self, origin: Origin) -> None:
        access = self.settings.access
        if access.guild_ids and origin.guild_id not in access.guild_ids:
            raise RefusedError("This bot isn't enabled in this server.")
        if access.channel_ids and origin.channel_id not in access.channel_ids:
            where = ", ".join(f"<#{cid}>" for cid in access.channel_ids)
            raise RefusedError(f"/inpaint can be used in {where}.")
        if access.role_ids and not set(access.role_ids) & set(origin.role_ids):
            roles = ", ".join(f"<@&{rid}>" for rid in access.role_ids)
            raise RefusedError(f"/inpaint is limited to members with one of these roles: {roles}.")

    def _effective_options(self, options: InpaintOptions, origin: Origin) -> InpaintOptions:
        limits, safety = self.settings.limits, self.settings.safety
        if not options.prompt.strip():
            raise InputError("The prompt is empty; describe what should appear in the masked area.")
        if len(options.prompt) > limits.max_prompt_chars:
            raise InputError(
                f"The prompt is {len(options.prompt)} characters; the limit here is {limits.max_prompt_chars}."
            )
        if options.num_images > limits.max_num_images:
            raise InputError(f"num_images is {options.num_images}; this server allows at most {limits.max_num_images}.")
        if options.num_inference_steps > limits.max_num_inference_steps:
            raise InputError(
                f"num_inference_steps is {options.num_inference_steps}; "
                f"this server allows at most {limits.max_num_inference_steps}."
            )
        lowered = options.prompt.casefold()
        if any(term.casefold() in lowered for term in safety.blocked_terms if term):
            raise RefusedError("The prompt contains a term that isn't allowed on this server.")
        checker_off = origin.channel_nsfw and safety.allow_nsfw_in_age_restricted
        return options.model_copy(update={"prompt": options.prompt.strip(), "enable_safety_checker": not checker_off})

    async def _download(self, upload: Upload, what: str) -> bytes:
        limits = self.settings.limits
        if upload.size > limits.max_input_bytes:
            raise InputError(f"The {what} is {_mb(upload.size)}; the limit is {_mb(limits.max_input_bytes)}.")
        try:
            return await fetch(
                self.session,
                upload.url,
                allowed_hosts=self.settings.discord.attachment_hosts,
                max_bytes=limits.max_input_bytes,
                timeout_s=limits.download_timeout_s,
                what=what,
            )
        except DownloadError as exc:
            raise InputError(exc.message) from exc

    async def accept(self, options: InpaintOptions, origin: Origin, image: Upload, mask: Upload | None) -> Job:
        """Validate everything, store the inputs and put the job in the waiting line.

        Raises:
            UserFacingError: the job was refused; nothing was submitted and nothing is charged.
        """
        if not self._accepting:
            raise RefusedError("The bot is restarting; please try again in a minute.")
        self._check_access(origin)
        await self.admin.check(origin.guild_id, origin.user_id)
        options = self._effective_options(options, origin)
        job = Job(origin=origin, options=options)
        await self.store.create(job)
        log.info("job=%s guild=%s user=%s accepted", job.id, origin.guild_id, origin.user_id)
        if self.settings.logging.log_prompts:
            log.info("job=%s prompt=%r", job.id, options.prompt)
        try:
            await self._prepare(job, image, mask)
            exempt = bool(set(self.settings.budgets.exempt_role_ids) & set(origin.role_ids))
            user_daily, guild_monthly = (None, None) if exempt else await self.admin.budgets(origin.guild_id)
            reason = await self.store.reserve(
                job,
                user_daily_usd=user_daily,
                guild_monthly_usd=guild_monthly,
                day_start=day_start(self.clock()),
                month_start=month_start(self.clock()),
                max_unfinished_per_user=self.settings.limits.max_jobs_per_user,
            )
            if reason is not None:
                raise RefusedError(await self._refusal_text(reason, job, user_daily, guild_monthly))
        except UserFacingError as exc:
            job.error = exc.message
            job.state = JobState.FAILED
            await self.store.save(job)
            await asyncio.to_thread(self.files.remove, job.id)
            log.info("job=%s refused: %s", job.id, exc.message)
            raise
        self.scheduler.wake()
        return job

    async def _prepare(self, job: Job, image: Upload, mask: Upload | None) -> None:
        image_bytes = await self._download(image, "image")
        mask_bytes = await self._download(mask, "mask") if mask is not None else None
        prepared = await asyncio.to_thread(
            images.prepare, image_bytes, mask_bytes, invert=job.options.invert_mask, limits=self.settings.limits
        )
        job.input_mime = prepared.image_mime
        await asyncio.to_thread(self.files.write, job.id, input_file(job), prepared.image)
        await asyncio.to_thread(self.files.write, job.id, MASK_FILE, prepared.mask)
        job.width, job.height = prepared.width, prepared.height
        job.sent_width, job.sent_height = prepared.sent_width, prepared.sent_height
        job.notes = list(prepared.notes)
        job.cost_estimate_usd = estimate_cost(
            self.settings.fal.price_per_megapixel, prepared.sent_width, prepared.sent_height, job.options.num_images
        )

    async def _refusal_text(self, reason: str, job: Job, user_daily: float | None, guild_monthly: float | None) -> str:
        now = self.clock()
        if reason == "user_limit":
            return (
                f"You already have {self.settings.limits.max_jobs_per_user} unfinished jobs; "
                "wait for one to finish or cancel one."
            )
        if reason == "user_budget" and user_daily is not None:
            spent = await self.store.spend(user_id=job.origin.user_id, since=day_start(now))
            left = max(user_daily - spent, 0.0)
            resets = int(next_day(now).timestamp())
            return (
                f"This job would cost about {usd(job.cost_estimate_usd)}, but you have {usd(left)} left of your "
                f"daily {usd(user_daily)}. Your budget resets <t:{resets}:R>."
            )
        if reason == "guild_budget" and guild_monthly is not None:
            spent = await self.store.spend(guild_id=job.origin.guild_id, since=month_start(now))
            left = max(guild_monthly - spent, 0.0)
            resets = int(next_month(now).timestamp())
            return (
                f"This job would cost about {usd(job.cost_estimate_usd)}, but this server has {usd(left)} left of its "
                f"monthly {usd(guild_monthly)}. The budget resets <t:{resets}:R>."
            )
        return "The job was refused by this server's limits."

    # cancel

    async def cancel(self, job_id: str, *, user_id: int, can_manage: bool) -> CancelResult:
        """Cancel a job for its requester or a moderator; fal's answer decides the outcome."""
        job = await self.store.get(job_id)
        if job is None:
            return CancelResult("That job no longer exists.", cancelled=False)
        if user_id != job.origin.user_id and not can_manage:
            return CancelResult("Only the member who started this job or a moderator can cancel it.", cancelled=False)
        if job.state.finished:
            return CancelResult(f"This job has already ended ({job.state.value}).", cancelled=False)
        if job.state is JobState.WAITING:
            if not self.scheduler.hold(job.id):
                return CancelResult("The job is being sent to fal right now; try again in a moment.", cancelled=False)
            try:
                return await self._mark_cancelled(job, user_id, "Cancelled before it reached fal; nothing was charged.")
            finally:
                self.scheduler.release(job.id)
        if job.state in (JobState.QUEUED, JobState.RUNNING) and job.request_id:
            outcome = await self.fal.cancel(self.fal.handle_for(job.request_id))
            if outcome == "already_completed":
                return CancelResult(
                    "Too late: fal had already finished this job, so its results will be posted.", False
                )
            await self.scheduler.stop_job(job.id)
            job = await self.store.get(job_id) or job
            if job.state not in (JobState.QUEUED, JobState.RUNNING):
                self.scheduler.run(job)  # it moved on meanwhile: let it finish
                return CancelResult("Too late: the results are already on their way.", cancelled=False)
            note = "Cancelled at fal." if job.state is JobState.QUEUED else "Cancelled; fal may bill the part that ran."
            if job.state is JobState.RUNNING:
                job.cost_usd = job.cost_estimate_usd
            result = await self._mark_cancelled(job, user_id, note)
            self.scheduler.wake()
            return result
        if job.state is JobState.SUBMITTING:
            return CancelResult("The job is being sent to fal right now; try again in a moment.", cancelled=False)
        return CancelResult("Too late: the results are already on their way.", cancelled=False)

    async def _mark_cancelled(self, job: Job, user_id: int | None, note: str) -> CancelResult:
        job.cancel_requested_by = user_id
        job.state = JobState.CANCELLED
        job.notes = [*job.notes, f"Cancelled by <@{user_id}>." if user_id is not None else note]
        await self.store.save(job)
        await self.notifier.update(job, progress_reply(job))
        await self.notifier.forget(job.id)
        log.info("job=%s cancelled by user=%s", job.id, user_id)
        return CancelResult(note, cancelled=True)

    # usage

    async def usage_text(self, *, user_id: int, guild_id: int | None) -> str:
        now = self.clock()
        today = await self.store.spend(user_id=user_id, since=day_start(now))
        month = await self.store.spend(user_id=user_id, since=month_start(now))
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

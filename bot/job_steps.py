"""The small steps of a job's path (save, show, fail and charge, retry, read its files), and what a cancel and
the waiting line need from it; the path itself reads top to bottom in ``bot.pipeline``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import aiohttp

from bot import images
from bot.admin import GuildAdmin
from bot.config import Settings, app_id
from bot.downloads import fetch
from bot.errors import InputError, RefusedError, UserFacingError, user_message
from bot.eta import QueueEstimator
from bot.fal import FalQueueClient
from bot.fal_models import (
    FalHandle,
    InpaintInput,
    LoraWeight,
    fal_input,
)
from bot.files import JobFiles
from bot.intake import (
    FULL_MASK_FILE,
    MASK_FILE,
    ORIGINAL_FILE,
    SEGMENT_INPUT_FILE,
    Intake,
    day_start,
    input_file,
    month_start,
)
from bot.library import LoraLibrary
from bot.metrics import Metrics
from bot.models import Job, JobState, utcnow
from bot.policy import Action, Step, decide
from bot.progress import (
    JobNotifier,
    ResultPart,
    eta_text,
    place,
    progress_reply,
)
from bot.scheduler import CriticalSections
from bot.store import Store
from bot.store_schema import StaleJobError

log = logging.getLogger(__name__)

T = TypeVar("T")

PAINT_EXPIRED = "The link to paint the mask expired before a mask came; nothing was charged. Run /inpaint again."


class PaintGoneError(UserFacingError):
    """A painted mask for a job that no longer waits for one (or not from this member)."""


SUBMIT_UNKNOWN = (
    "fal did not answer when the job was sent, so it may still run and be billed. "
    "It was not sent again; check back or run /inpaint again."
)
SEGMENT_UNKNOWN = (
    "fal did not answer when the bot asked it to find the mask, so it was not asked again (it may bill that "
    "search). Please run /inpaint again."
)
RESTARTED_WHILE_CHECKING = "The bot restarted while checking your upload; please run /inpaint again."


class StopJob(Exception):
    """A step failed in a way ``bot.policy`` says ends the job."""

    def __init__(self, action: Action, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.action = action
        self.cause = cause


class JobSteps:
    """The small steps a job's path is made of (saving, showing, failing and charging, retrying, reading its
    files), and what a cancel and the waiting line need; ``JobPipeline`` walks the path with them."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        files: JobFiles,
        fal: FalQueueClient,
        session: aiohttp.ClientSession,
        notifier: JobNotifier,
        admin: GuildAdmin,
        library: LoraLibrary,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._running_since: dict[str, float] = {}  # when fal was first seen running a job (its run time)
        self.store = store
        self.files = files
        self.fal = fal
        self.session = session
        self.notifier = notifier
        self.admin = admin
        self.clock = clock
        self.sleep = sleep
        self.intake = Intake(
            settings=settings, store=store, admin=admin, files=files, session=session, library=library, clock=clock
        )
        self.critical = CriticalSections()
        self.eta = QueueEstimator()
        self._watches: dict[str, asyncio.Task[object]] = {}  # what a cancel stops: a watch at fal
        self._cancel_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def _segment_image(self, job: Job) -> str:
        image = await asyncio.to_thread(self.files.read, job.id, SEGMENT_INPUT_FILE)
        if not self.settings.fal.upload_inputs:
            return await asyncio.to_thread(images.data_uri, image, "image/jpeg")
        if job.image_url is None:  # uploaded once; a requeued job reuses the fal URL
            job.image_url = await self.fal.upload(image, "image/jpeg", SEGMENT_INPUT_FILE)
        return job.image_url

    async def _payload(self, job: Job) -> InpaintInput:
        image = await asyncio.to_thread(self.files.read, job.id, input_file(job))
        mask = await asyncio.to_thread(self.files.read, job.id, MASK_FILE)
        if self.settings.fal.upload_inputs:
            image_url, mask_url = job.image_url, job.mask_url
            if image_url is None or mask_url is None:  # uploaded once; a resumed job reuses the fal URLs
                image_url = await self.fal.upload(image, job.input_mime, input_file(job))
                mask_url = await self.fal.upload(mask, "image/png", MASK_FILE)
                job.image_url, job.mask_url = image_url, mask_url
                job = await self._save(job)
        else:
            # base64 of megabytes: off the event loop, like every other byte-crunching step
            image_url = await asyncio.to_thread(images.data_uri, image, job.input_mime)
            mask_url = await asyncio.to_thread(images.data_uri, mask, "image/png")
        loras = [LoraWeight(path=lora.path, scale=lora.scale) for lora in job.loras]
        return fal_input(job.options, image_url, mask_url, prompt=job.fal_prompt, loras=loras)

    async def _download(self, url: str) -> bytes:
        limits = self.settings.limits
        return await fetch(
            self.session,
            url,
            allowed_hosts=self.settings.fal.media_hosts,
            max_bytes=limits.max_output_bytes,
            timeout_s=limits.download_timeout_s,
            what="result image",
        )

    async def _decode(self, job: Job, raw: bytes) -> bytes:
        """fal's result at the input's size: pasted into the member's photo inside the mask (SPEC 11), or, for a job
        stored before crops existed, the whole result scaled back."""
        assert job.width is not None and job.height is not None
        original = full_mask = None
        if job.crop is not None:
            original = await asyncio.to_thread(self.files.read, job.id, ORIGINAL_FILE)
            full_mask = await asyncio.to_thread(self.files.read, job.id, FULL_MASK_FILE)
        async with self.intake.image_slots:  # decoding the original at full size: as many at once as intakes
            return await asyncio.to_thread(
                images.finish_output,
                raw,
                width=job.width,
                height=job.height,
                output_format=job.options.output_format,
                limits=self.settings.limits,
                original=original,
                crop=job.crop,
                full_mask=full_mask,
                feather_px=job.options.mask_feather,
            )

    def cancel_lock(self, job_id: str) -> asyncio.Lock:
        """The lock a cancel of ``job_id`` holds while it decides; the watch waits for it before going on."""
        lock = self._cancel_locks.get(job_id)
        if lock is None:
            lock = self._cancel_locks[job_id] = asyncio.Lock()
        return lock

    def pause_watch(self, job_id: str) -> None:
        """Stop following fal for ``job_id`` while a cancel is decided: never a fetch or a delivery. The job is
        followed again if the cancel does not end it."""
        if (watch := self._watches.get(job_id)) is not None:
            watch.cancel()

    async def end_cancelled(self, job: Job, user_id: int | None, note: str, *, billed: bool = False) -> Job:
        """Save ``job`` as CANCELLED over the version read, then show it.

        Raises:
            StaleJobError: the job moved on meanwhile; nothing was written.
        """
        self.eta.forget(job.id)
        job.cancel_requested_by = user_id
        self._charge(job, billed=billed)
        job.notes = [*job.notes, f"Cancelled by <@{user_id}>." if user_id is not None else note]
        job = await self._save(job, JobState.CANCELLED)
        log.info("job=%s cancelled by user=%s", job.id, user_id)
        await self.notifier.finish(job, progress_reply(job))
        await self.notifier.forget(job.id)
        return job

    async def refusal(self, job: Job) -> str | None:
        return await self.admin.job_refusal(job)

    async def show_waiting(self, job: Job, *, position: int | None = None, held: str | None = None) -> None:
        await self.notifier.update(job, progress_reply(job, line_position=position, held=held))

    async def _attempt(self, job: Job, step: Step, call: Callable[[], Awaitable[T]], deadline: datetime) -> T:
        """``call`` until it succeeds, retried while ``bot.policy`` says RETRY and the deadline allows."""
        while True:
            try:
                return await call()
            except StaleJobError:
                raise
            except Exception as exc:
                action = decide(step, exc)
                if action is not Action.RETRY or self.clock() >= deadline:
                    raise StopJob(Action.FAIL if action is Action.RETRY else action, exc) from exc
                log.warning("job=%s %s failed (%s); trying again", job.id, step.value, exc)
                await self.sleep(self.settings.fal.retry_pause_s)

    async def _post(
        self, job: Job, part: ResultPart, tries: itertools.count[int], interrupted: int | None
    ) -> int | None:
        # a retry, like a resumed delivery, may find its post already there: a failed post can still have landed
        maybe_posted = next(tries) > 0 or part.index == interrupted
        return await self.notifier.post(job, part, maybe_posted=maybe_posted)

    async def _save(self, job: Job, state: JobState | None = None) -> Job:
        if state is not None:
            job.state = state
        job = await self.store.save(job)
        if state is not None and state.finished and self.metrics is not None:  # once: a stale save raised above
            self.metrics.charged(job.origin.guild_id, job.cost_usd or 0.0)
            self.metrics.job_finished(state)
            self._running_since.pop(job.id, None)
        return job

    def _seen_running(self, job: Job) -> None:
        """fal started the job: its time in fal's queue is known (for /metrics)."""
        if self.metrics is None or job.id in self._running_since:
            return
        self._running_since[job.id] = time.monotonic()
        if job.submitted_at is not None:
            self.metrics.observe_queue_s((self.clock() - job.submitted_at).total_seconds())

    def _seen_completed(self, job: Job) -> None:
        """fal finished the job: its run time, when it was seen starting (not across a restart)."""
        started = self._running_since.pop(job.id, None)
        if self.metrics is not None and started is not None:
            self.metrics.observe_run_s(time.monotonic() - started)

    async def _reread(self, job: Job) -> Job:
        return await self.store.get(job.id) or job

    def _eta_s(self, job: Job) -> float | None:
        if job.state is JobState.QUEUED and job.queue_position is not None:
            return self.eta.eta_s(job.queue_position)
        return None

    def _place(self, job: Job) -> tuple[str, str] | None:
        """What a member reads of a job's place at fal: the rounded position and the estimate."""
        if job.queue_position is None:
            return None
        return place(job.queue_position), eta_text(self._eta_s(job))

    async def _show(self, job: Job) -> None:
        await self.notifier.update(job, progress_reply(job, eta_s=self._eta_s(job)))

    def _charge(self, job: Job, *, billed: bool) -> None:
        """What a job that ends early costs: its estimate when the inpainting may be paid (``billed``), the
        segmentation's price when only that reached fal (or may have: ``billed`` while it was being sent), else
        nothing."""
        if job.cost_usd is not None:
            return
        searching = job.state is JobState.SEGMENTING and job.request_id is None
        if billed and not searching:
            job.cost_usd = job.cost_estimate_usd
        elif job.segment_request_id is not None or (billed and searching):
            job.cost_usd = self.settings.masks.segment_price_usd

    async def _fail(self, job: Job, message: str, *, billed: bool) -> Job:
        self.eta.forget(job.id)
        job.error = message
        self._charge(job, billed=billed)
        job = await self._save(job, JobState.FAILED)
        log.warning("job=%s failed: %s", job.id, message)
        await self.notifier.finish(job, progress_reply(job))
        await self.notifier.forget(job.id)
        return job

    async def _fail_with(self, job: Job, exc: BaseException, *, billed: bool, message: str | None = None) -> None:
        """End the job FAILED with a member-safe text."""
        message = message or _naming_loras(job, user_message(exc))
        try:
            try:
                await self._fail(job, message, billed=billed)  # over the version last read: a cancel that won stays
            except StaleJobError:
                fresh = await self._reread(job)
                if fresh.state.finished:
                    log.info("job=%s was ended by another writer meanwhile", job.id)
                    return
                await self._fail(fresh, message, billed=billed)
        except Exception as again:  # the store itself is failing: the next start resumes the row
            log.error("job=%s could not be marked failed", job.id, exc_info=again)

    def segment_handle(self, job: Job) -> FalHandle:
        assert job.segment_request_id is not None
        return self.fal.handle_for(job.segment_request_id, app=app_id(self.settings.masks.segment_endpoint))

    def handle(self, job: Job) -> FalHandle:
        assert job.request_id is not None
        if job.status_url and job.response_url and job.cancel_url:
            return FalHandle(
                request_id=job.request_id,
                status_url=job.status_url,
                response_url=job.response_url,
                cancel_url=job.cancel_url,
            )
        return self.fal.handle_for(job.request_id)

    async def _reserve(self, job: Job) -> None:
        """Into the line (WAITING) if the member's cap and both budgets allow it.

        Raises:
            RefusedError: they do not; the row is unchanged.
        """
        user_daily, guild_monthly = await self.intake.budgets(job.origin)
        now = self.clock()
        reason = await self.store.reserve(
            job,
            user_daily_usd=user_daily,
            guild_monthly_usd=guild_monthly,
            day_start=day_start(now),
            month_start=month_start(now),
            max_unfinished_per_user=self.settings.limits.max_jobs_per_user,
        )
        if reason is not None:
            raise RefusedError(await self.intake.refusal_text(reason, job, user_daily, guild_monthly))

    # the mask painter (SPEC 12): a job that waits in PAINTING until its mask comes

    async def paint_mask(self, job_id: str, user_id: int, mask: bytes) -> Job:
        """The mask painted for a job in PAINTING: its inputs are built, its budget reserved, and it joins the line.

        Raises:
            PaintGoneError: the job no longer waits for this member's mask (painted, cancelled, expired, pruned).
            InputError: the mask cannot be used; the job still waits.
            RefusedError: the cap or a budget refuses it now; the job ended (the reply says why).
        """
        async with self.cancel_lock(job_id):
            job = await self.store.get(job_id)
            if job is None or job.state is not JobState.PAINTING or job.origin.user_id != user_id:
                raise PaintGoneError("This link was used already, or its job has ended.")
            if job.paint_expires_at is not None and job.paint_expires_at <= self.clock():
                raise PaintGoneError("This link has expired; run /inpaint again.")
            try:  # the mask is this upload's before any file is written: one at another process loses here
                job = await self._save(job, JobState.ACCEPTED)
            except StaleJobError as exc:
                raise PaintGoneError("This link was used already, or its job has ended.") from exc
            try:
                await self.intake.mask_painted(job, mask)
            except InputError:
                job = await self._save(job, JobState.PAINTING)  # the member may paint again
                raise
            job.notes = [*job.notes, "Mask received from the painter."]  # the channel says so, as the page does
            try:
                await self._reserve(job)
            except RefusedError as exc:
                await self._fail(job, exc.message, billed=False)
                raise
        log.info("job=%s guild=%s user=%s mask painted", job.id, job.origin.guild_id, job.origin.user_id)
        await self._show(job)
        return job

    async def expire_paintings(self) -> int:
        """End the jobs whose mask was not painted in time; how many."""
        ended = 0
        for job in await self.store.list_unfinished():
            if job.state is not JobState.PAINTING or job.paint_expires_at is None:
                continue
            if job.paint_expires_at > self.clock():
                continue
            async with self.cancel_lock(job.id):
                current = await self.store.get(job.id)
                if current is not None and current.state is JobState.PAINTING:
                    await self._fail(current, PAINT_EXPIRED, billed=False)
                    ended += 1
        return ended


def _naming_loras(job: Job, message: str) -> str:
    """fal's refusal of a LoRA file names the LoRA, so the member knows which one to drop (fal's own text hides
    links, and with them the LoRA's path)."""
    if not job.loras or "lora" not in message.casefold():
        return message
    names = ", ".join(lora.label.rsplit(" × ", 1)[0] for lora in job.loras)
    which = f"the LoRA {names}" if len(job.loras) == 1 else f"one of the LoRAs {names}"
    return f"fal could not use {which}. {message}"

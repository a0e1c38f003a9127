"""Carries one job from the waiting line to its delivered result; every state is saved before its side effect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiohttp

from bot import images
from bot.config import Settings
from bot.downloads import DownloadError, fetch
from bot.errors import UserFacingError
from bot.fal import FalQueueClient
from bot.fal_models import FalHandle, FalJobError, FalRejectedError, FalSubmitUnknownError, InpaintInput
from bot.files import JobFiles
from bot.models import InpaintOptions, Job, JobState, utcnow
from bot.progress import JobNotifier, ResultFile, progress_reply, result_reply
from bot.scheduler import CriticalSections
from bot.store import JobStore

log = logging.getLogger(__name__)

MASK_FILE = "mask.png"
SUBMIT_UNKNOWN = (
    "fal did not answer when the job was sent, so it may still run and be billed. "
    "It was not sent again; check back or run /inpaint again."
)
WATCH_RETRY_S = 30.0


def input_file(job: Job) -> str:
    return "input.png" if job.input_mime == "image/png" else "input.jpg"


def result_file(job: Job, index: int) -> str:
    ext = "png" if job.options.output_format == "png" else "jpg"
    return f"result-{index + 1}.{ext}"


def estimate_cost(price_per_megapixel: float, width: int, height: int, num_images: int) -> float:
    return round(price_per_megapixel * width * height / 1_000_000 * num_images, 6)


def fal_input(options: InpaintOptions, image_url: str, mask_url: str) -> InpaintInput:
    """What fal is sent for these options: the one place the member's choices become fal's input."""
    return InpaintInput(
        prompt=options.prompt,
        image_url=image_url,
        mask_url=mask_url,
        strength=options.strength,
        num_inference_steps=options.num_inference_steps,
        guidance_scale=options.guidance_scale,
        num_images=options.num_images,
        seed=options.seed,
        enable_safety_checker=options.enable_safety_checker,
        output_format=options.output_format,
    )


class JobRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        files: JobFiles,
        fal: FalQueueClient,
        session: aiohttp.ClientSession,
        notifier: JobNotifier,
        critical: CriticalSections,
        on_slot_free: Callable[[], None],
        gate: Callable[[Job], Awaitable[str | None]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``gate`` says why a waiting job may not go to fal right now (a pause, a ban); it then stays waiting."""
        self.settings = settings
        self.store = store
        self.files = files
        self.fal = fal
        self.session = session
        self.notifier = notifier
        self.critical = critical
        self.on_slot_free = on_slot_free
        self.gate = gate
        self.clock = clock

    async def run(self, job: Job) -> None:
        """Continue ``job`` from whatever state it was saved in."""
        try:
            if job.state is JobState.WAITING:
                job = await self.critical.run(self._submit(job))
            if job.state is JobState.SUBMITTING:
                # Only a crash between "submitting" and "queued" leaves this state: the submit may be paid.
                job = await self._fail(job, SUBMIT_UNKNOWN, maybe_billed=True)
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                job = await self._watch(job)
                self.on_slot_free()
            if job.state in (JobState.FETCHED, JobState.DELIVERING):
                await self._deliver(job)
        except UserFacingError as exc:
            log.warning("job=%s failed: %s", job.id, exc.message)
            await self._fail(job, exc.message, maybe_billed=job.request_id is not None)
            self.on_slot_free()

    async def _save(self, job: Job, state: JobState | None = None) -> Job:
        if state is not None:
            job.state = state
        return await self.store.save(job)

    async def _show(self, job: Job) -> None:
        await self.notifier.update(job, progress_reply(job))

    async def _fail(self, job: Job, message: str, *, maybe_billed: bool) -> Job:
        job.error = message
        if maybe_billed and job.cost_usd is None:
            job.cost_usd = job.cost_estimate_usd
        job = await self._save(job, JobState.FAILED)
        await self._show(job)
        await self.notifier.forget(job.id)
        return job

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
            image_url, mask_url = images.data_uri(image, job.input_mime), images.data_uri(mask, "image/png")
        return fal_input(job.options, image_url, mask_url)

    async def _submit(self, job: Job) -> Job:
        if self.gate is not None and (reason := await self.gate(job)) is not None:
            log.info("job=%s held back: %s", job.id, reason)
            return job  # still waiting; the scheduler leaves it out of the line until the hold ends
        payload = await self._payload(job)
        job = await self._save(job, JobState.SUBMITTING)  # from here on, a crash means "maybe paid"
        await self._show(job)
        try:
            handle, status = await self.fal.submit(payload)
        except FalSubmitUnknownError:
            log.error("job=%s submit unanswered; not re-sent", job.id)
            return await self._fail(job, SUBMIT_UNKNOWN, maybe_billed=True)
        except UserFacingError as exc:
            log.warning("job=%s submit refused: %s", job.id, exc.message)
            return await self._fail(job, exc.message, maybe_billed=False)
        job.request_id = handle.request_id
        job.status_url, job.response_url, job.cancel_url = handle.status_url, handle.response_url, handle.cancel_url
        job.queue_position = status.queue_position
        job.submitted_at = self.clock()
        job = await self._save(job, JobState.RUNNING if status.status == "IN_PROGRESS" else JobState.QUEUED)
        log.info(
            "job=%s guild=%s user=%s submitted request=%s",
            job.id,
            job.origin.guild_id,
            job.origin.user_id,
            job.request_id,
        )
        await self._show(job)
        return job

    def _handle(self, job: Job) -> FalHandle:
        assert job.request_id is not None
        if job.status_url and job.response_url and job.cancel_url:
            return FalHandle(
                request_id=job.request_id,
                status_url=job.status_url,
                response_url=job.response_url,
                cancel_url=job.cancel_url,
            )
        return self.fal.handle_for(job.request_id)

    async def _watch(self, job: Job) -> Job:
        handle = self._handle(job)
        while True:
            try:
                async for status in self.fal.watch(handle):
                    if status.status == "COMPLETED":
                        return await self._fetch(job, handle)
                    state = JobState.RUNNING if status.status == "IN_PROGRESS" else JobState.QUEUED
                    position = status.queue_position if state is JobState.QUEUED else None
                    if (state, position) != (job.state, job.queue_position):
                        job.queue_position = position
                        job = await self._save(job, state)
                        await self._show(job)
                raise FalJobError("fal stopped reporting on this job before it finished.")
            except (FalJobError, FalRejectedError):
                raise
            except UserFacingError as exc:  # transient trouble: the job is still fal's, keep watching
                if (
                    self.clock() - (job.submitted_at or job.created_at)
                ).total_seconds() > self.settings.fal.job_timeout_s:
                    raise FalJobError("fal did not finish this job in time.") from exc
                log.warning("job=%s watch interrupted (%s); retrying", job.id, exc.message)
                await asyncio.sleep(WATCH_RETRY_S)

    async def _fetch(self, job: Job, handle: FalHandle) -> Job:
        output = await self.fal.result(handle)
        limits = self.settings.limits
        names: list[str] = []
        megapixels = 0.0
        assert job.width is not None and job.height is not None
        for index, image in enumerate(output.images):
            try:
                raw = await fetch(
                    self.session,
                    image.url,
                    allowed_hosts=self.settings.fal.media_hosts,
                    max_bytes=limits.max_output_bytes,
                    timeout_s=limits.download_timeout_s,
                    what="result image",
                )
            except DownloadError as exc:
                raise FalJobError(f"fal finished, but its image could not be downloaded: {exc.message}") from exc
            final = await asyncio.to_thread(
                images.finish_output,
                raw,
                width=job.width,
                height=job.height,
                output_format=job.options.output_format,
                limits=limits,
            )
            name = result_file(job, index)
            await asyncio.to_thread(self.files.write, job.id, name, final)
            names.append(name)
            megapixels += (
                (image.width or job.sent_width or job.width) * (image.height or job.sent_height or job.height) / 1e6
            )
        if not names:
            raise FalJobError("fal finished but returned no images.")
        job.result_files = names
        job.seed = output.seed if output.seed is not None else job.options.seed
        job.nsfw_flags = list(output.has_nsfw_concepts)
        job.cost_usd = round(self.settings.fal.price_per_megapixel * megapixels, 6)
        job.completed_at = self.clock()
        job.queue_position = None
        return await self._save(job, JobState.FETCHED)

    async def _deliver(self, job: Job) -> None:
        job = await self._save(job, JobState.DELIVERING)
        files: list[ResultFile] = []
        withheld = 0
        for index, name in enumerate(job.result_files):
            flagged = index < len(job.nsfw_flags) and job.nsfw_flags[index]
            if flagged and not job.origin.channel_nsfw:
                withheld += 1
                continue
            data = await asyncio.to_thread(self.files.read, job.id, name)
            files.append(ResultFile(filename=name, data=data, spoiler=flagged))
        elapsed = ((job.completed_at or self.clock()) - job.created_at).total_seconds()
        await self.notifier.deliver(job, result_reply(job, elapsed_s=elapsed, withheld=withheld), files)
        job = await self.store.get(job.id) or job  # delivery recorded its progress on the row
        job = await self._save(job, JobState.DONE)
        await self.notifier.forget(job.id)
        log.info(
            "job=%s guild=%s user=%s delivered %d image(s)", job.id, job.origin.guild_id, job.origin.user_id, len(files)
        )

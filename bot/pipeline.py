"""One job's whole path, top to bottom: accept, submit, watch, fetch, deliver, cancel. Every path ends in a final
state, or (at shutdown) leaves a row that the next start resumes; each state is saved before its side effect."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Literal

from bot.errors import RefusedError, UserFacingError, user_message
from bot.fal_models import (
    FalError,
    FalHandle,
    FalJobError,
    InpaintInput,
    QueueStatus,
    SegmentInput,
    SegmentOutput,
)
from bot.intake import (
    PaintNeeded,
    result_file,
)
from bot.job_steps import RESTARTED_WHILE_CHECKING, SEGMENT_UNKNOWN, SUBMIT_UNKNOWN, JobSteps, StopJob
from bot.models import InpaintOptions, Job, JobState, LoraUse, Origin, Upload
from bot.policy import Action, Step, decide
from bot.progress import (
    EXACT_POSITIONS,
    ResultFile,
    refresh_s,
    result_reply,
)
from bot.store_schema import StaleJobError

log = logging.getLogger(__name__)


class JobPipeline(JobSteps):
    """A job from the command to the posted images, top to bottom: accept, wait, (find the mask,) submit, follow,
    fetch, deliver."""

    # 1. accept: everything is checked before the job enters the line

    async def accept(self, options: InpaintOptions, origin: Origin, image: Upload, mask: Upload | None) -> Job:
        """Validate everything, store the inputs and put the job in the waiting line (state WAITING).

        Raises:
            UserFacingError: the job was refused; nothing was submitted and nothing is charged.
        """
        prepare = functools.partial(self.intake.prepare, image=image, mask=mask)
        return await self._accept(options, origin, prepare, mask_file=mask is not None)

    async def accept_from(
        self,
        options: InpaintOptions,
        origin: Origin,
        parent: Job,
        parent_message_id: int | None,
        prepare: Callable[[Job], Awaitable[None]],
        *,
        as_ran: bool = False,
    ) -> Job:
        """A job made from ``parent``'s result (SPEC 10), a full job like any other: ``prepare`` fills its inputs
        from the job folders. ``as_ran``: the prompt fal received and the LoRAs as the parent ran them (a reroll),
        though the names must still be usable here.

        Raises:
            UserFacingError: the job was refused; nothing was submitted and nothing is charged.
        """
        return await self._accept(
            options, origin, prepare, mask_file=True, parent=(parent, parent_message_id), as_ran=as_ran
        )

    async def _accept(
        self,
        options: InpaintOptions,
        origin: Origin,
        prepare: Callable[[Job], Awaitable[None]],
        *,
        mask_file: bool,
        parent: tuple[Job, int | None] | None = None,
        as_ran: bool = False,
    ) -> Job:
        # again: things may have changed since the cog asked
        options = await self.intake.check(options, origin, mask_file=mask_file)
        resolved = await self.intake.resolve(options, origin)
        job = Job(
            origin=origin,
            options=options,
            fal_prompt=resolved.prompt if resolved.prompt != options.prompt else None,
            loras=[
                LoraUse(path=weight.path, scale=weight.scale, label=label)
                for weight, label in zip(resolved.loras, resolved.described, strict=True)
            ],
            parent_job_id=parent[0].id if parent is not None else None,
            parent_message_id=parent[1] if parent is not None else None,
        )
        if parent is not None and as_ran:  # the same style and LoRAs as they ran, whatever changed in the catalog
            job.fal_prompt, job.loras = parent[0].fal_prompt, list(parent[0].loras)
        if not await self.store.create(job, max_unfinished_per_user=self.settings.limits.max_jobs_per_user):
            raise RefusedError(self.intake.cap_text())
        log.info("job=%s guild=%s user=%s accepted", job.id, origin.guild_id, origin.user_id)
        if self.settings.logging.log_prompts:
            log.info("job=%s prompt=%r", job.id, options.prompt)
        try:
            await prepare(job)
            await self._reserve(job)
        except PaintNeeded:  # no mask at all: the member paints it in the web page (SPEC 12); nothing charged yet
            job.paint_expires_at = self.clock() + timedelta(seconds=self.settings.web.link_ttl_s)
            job = await self._save(job, JobState.PAINTING)
            log.info("job=%s waits for its mask to be painted", job.id)
            await self._show(job)
            return job
        except Exception as exc:  # refused or broken: the row ends FAILED and the inputs go
            if not isinstance(exc, UserFacingError):
                log.error("job=%s could not be accepted", job.id, exc_info=exc)
            job.error = user_message(exc)
            job.state = JobState.FAILED
            await self.store.save(job)
            await asyncio.to_thread(self.files.remove, job.id)
            log.info("job=%s refused: %s", job.id, job.error)
            raise
        return job

    async def fail_interrupted_intake(self, job: Job) -> None:
        """A job that was being checked when the process died: its uploads' links may be gone, so it ends."""
        await self._fail(job, RESTARTED_WHILE_CHECKING, billed=False)

    # 2. run: from the waiting line to the delivered result

    async def run(self, job: Job) -> None:
        """Carry ``job`` from the state it is in to a final one; a job held or turned away stays WAITING."""
        try:
            while not job.state.finished:
                match job.state:
                    case JobState.PAINTING:
                        return  # the member paints the mask in the web page: paint_mask puts it in the line
                    case JobState.WAITING:
                        job = await self.critical.run(self._submit(job))
                        if job.state is JobState.WAITING:
                            return  # held by an admin, or fal turned it away: the line takes it again later
                    case JobState.SEGMENTING:
                        job = await self._find_mask(job)  # back to WAITING with its mask, and on to the submit
                    case JobState.SUBMITTING:
                        # Only a crash between "submitting" and "queued" leaves this state: the submit may be paid.
                        job = await self._fail(job, SUBMIT_UNKNOWN, billed=True)
                    case JobState.QUEUED | JobState.RUNNING:
                        job = await self._follow(job)
                    case JobState.FETCHED | JobState.DELIVERING:
                        job = await self._deliver(job)
                    case _:
                        raise RuntimeError(f"job in state {job.state} given to the pipeline")
        except StaleJobError:
            log.info("job=%s was changed by another writer (a cancel); its runner stops", job.id)
        except StopJob as stop:
            if not isinstance(stop.cause, UserFacingError):
                log.error("job=%s failed on our side", job.id, exc_info=stop.cause)
            unknown = stop.action is Action.FAIL_UNKNOWN
            searching = job.state is JobState.SEGMENTING  # the search's submit went unanswered, not the inpainting's
            await self._fail_with(
                job,
                stop.cause,
                billed=unknown or job.request_id is not None,
                message=(SEGMENT_UNKNOWN if searching else SUBMIT_UNKNOWN) if unknown else None,
            )
        except Exception as exc:  # the last line: nothing leaves a job in a live state
            if not isinstance(exc, UserFacingError):
                log.exception("job=%s failed on our side", job.id)
            await self._fail_with(job, exc, billed=job.request_id is not None)

    async def _submit(self, job: Job) -> Job:
        if (reason := await self.admin.job_refusal(job)) is not None:
            log.info("job=%s held back: %s", job.id, reason)
            return job  # still waiting; the line leaves it out until the hold ends
        if job.crop is None and job.options.mask_prompt is not None:
            return await self._submit_segmentation(job)
        job, sent = await self._send_once(job, JobState.SUBMITTING, functools.partial(self._payload, job))
        if sent is None:
            return job  # back in line: fal did not take it
        handle, status = sent
        job.request_id = handle.request_id
        job.status_url, job.response_url, job.cancel_url = handle.status_url, handle.response_url, handle.cancel_url
        job.queue_position = status.queue_position
        job.submitted_at = self.clock()
        job.retry_at = None
        if status.status == "IN_PROGRESS":
            self.eta.running(job.id)
            self._seen_running(job)
        elif status.queue_position is not None:
            self.eta.queued(job.id, status.queue_position)
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

    # 2a. a mask from words: fal's segmentation model first, submitted once like the inpainting (SPEC 11)

    async def _submit_segmentation(self, job: Job) -> Job:
        job, sent = await self._send_once(
            job, JobState.SEGMENTING, functools.partial(self._segment_input, job), self.settings.masks.segment_endpoint
        )
        if sent is None:
            return job  # back in line: fal did not take it
        handle, _ = sent
        job.segment_request_id = handle.request_id
        job.submitted_at = self.clock()  # the search's deadline counts from here, across restarts
        log.info("job=%s segmentation submitted request=%s", job.id, handle.request_id)
        return await self._save(job)

    async def _find_mask(self, job: Job) -> Job:
        """Wait for the segmentation, fetch its mask and build the inpainting's inputs from it."""
        if job.segment_request_id is None:  # the process died while the segmentation was being sent
            return await self._fail(job, SEGMENT_UNKNOWN, billed=True)  # the search may have reached fal
        handle = self.segment_handle(job)
        deadline = (job.submitted_at or self.clock()) + timedelta(seconds=self.settings.fal.job_timeout_s)
        search = self._attempt(job, Step.WATCH, functools.partial(self._completed, handle), deadline)
        outcome = await self._until_done(job, search, deadline, name=f"fluxpaint-segment-{job.id}")
        if outcome == "expired":
            try:
                await self.fal.cancel(handle)
            except FalError as exc:  # the job ends either way; a search that runs on is billed its small price
                log.warning("job=%s mask search past its deadline; fal could not cancel it (%s)", job.id, exc.message)
            return await self._fail(job, "fal did not find the mask in time, so the job was cancelled.", billed=False)
        if outcome == "stopped":  # a cancel decided: the job is ended, or is watched again
            return await self._reread(job)
        output = await self._attempt(job, Step.RESULT, lambda: self.fal.result(handle, SegmentOutput), deadline)
        raw = await self._attempt(job, Step.DOWNLOAD, functools.partial(self._download, output.image.url), deadline)
        try:
            await self.intake.mask_found(job, raw)
        except UserFacingError as exc:  # "nothing matched …": no inpainting is sent
            raise StopJob(Action.FAIL, exc) from exc
        log.info("job=%s mask found", job.id)
        job = await self._save(job, JobState.WAITING)
        await self._show(job)
        return job

    async def _completed(self, handle: FalHandle) -> None:
        try:
            async for status in self.fal.watch(handle):
                if status.status == "COMPLETED":
                    return
        except FalJobError as exc:
            raise FalJobError(f"fal could not find the mask: {exc.message}") from exc
        raise FalJobError("fal stopped reporting on the mask search before it finished.")

    async def _segment_input(self, job: Job) -> SegmentInput:
        return SegmentInput(prompt=job.options.mask_prompt or "", image_url=await self._segment_image(job))

    async def _send_once(
        self,
        job: Job,
        state: JobState,
        payload: Callable[[], Awaitable[InpaintInput | SegmentInput]],
        endpoint: str | None = None,
    ) -> tuple[Job, tuple[FalHandle, QueueStatus] | None]:
        """Save ``state`` (from here on a crash means "maybe paid", so it is never sent again), show it and send the
        payload once; no answer when fal did not take it, and the job is back in line."""
        try:
            body = await payload()
            job = await self._save(job, state)
            await self._show(job)
            return job, await self.fal.submit(body, endpoint=endpoint)
        except StaleJobError:
            raise
        except Exception as exc:
            action = decide(Step.SUBMIT, exc)
            if action is Action.REQUEUE:
                return await self._requeue(job, exc), None
            raise StopJob(action, exc) from exc

    async def _requeue(self, job: Job, exc: BaseException) -> Job:
        """fal did not take the job (nothing was sent): back in line for a later try, within the job's deadline."""
        if (self.clock() - job.created_at).total_seconds() > self.settings.fal.job_timeout_s:
            raise StopJob(Action.FAIL, exc) from exc
        log.warning("job=%s fal did not take it (%s); back in line", job.id, exc)
        job.retry_at = self.clock() + timedelta(seconds=self.settings.fal.retry_pause_s)
        job = await self._save(job, JobState.WAITING)
        await self._show(job)
        return job

    async def _follow(self, job: Job) -> Job:
        """Watch fal until COMPLETED, within the job's deadline, then fetch the result (FETCHED)."""
        handle = self.handle(job)
        deadline = (job.submitted_at or job.created_at) + timedelta(seconds=self.settings.fal.job_timeout_s)
        outcome = await self._until_done(job, self._watch(job, handle), deadline, name=f"fluxpaint-watch-{job.id}")
        if outcome == "stopped":  # a cancel decided: the job is either ended or followed again
            return await self._reread(job)
        if outcome == "expired":
            job = await self._reread(job)
            if not await self._time_out(job, handle):
                return await self._reread(job)
            # fal had finished it after all (or while the bot was down): fetch it rather than throw it away
        self.eta.finished(job.id)
        return await self._fetch(job, handle)

    async def _until_done(
        self, job: Job, work: Coroutine[Any, Any, object], deadline: datetime, *, name: str
    ) -> Literal["done", "expired", "stopped"]:
        """Run a watch at fal as the task a cancel may stop (``pause_watch``), until it ends or the deadline; a
        stopped watch returns once the cancel has decided. At shutdown the row stays as it is and the next start
        watches again, by the request id."""
        watch = asyncio.create_task(work, name=name)
        self._watches[job.id] = watch
        try:
            async with asyncio.timeout(max((deadline - self.clock()).total_seconds(), 0.0)) as scope:
                await watch
            return "done"
        except TimeoutError:
            if not scope.expired():
                raise
            return "expired"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # shutdown
            if (lock := self._cancel_locks.get(job.id)) is not None:  # a cancel is deciding
                async with lock:
                    pass
            return "stopped"
        finally:
            self._watches.pop(job.id, None)

    async def _watch(self, job: Job, handle: FalHandle) -> Job:
        shown_place = self._place(job)
        while True:
            try:
                async for status in self.fal.watch(handle, self._pace):
                    if status.status == "COMPLETED":
                        self._seen_completed(job)
                        job.completed_at = job.completed_at or self.clock()  # COMPLETED-to-posted starts here
                        return job
                    state = JobState.RUNNING if status.status == "IN_PROGRESS" else JobState.QUEUED
                    position = status.queue_position if state is JobState.QUEUED else None
                    if (state, position) == (job.state, job.queue_position):
                        continue
                    same_step = state is job.state
                    job.queue_position = position  # shown, not saved: a position is not worth a write
                    if not same_step:
                        job = await self._save(job, state)
                    if state is JobState.RUNNING:
                        self.eta.running(job.id)
                        self._seen_running(job)
                    elif position is not None:
                        self.eta.queued(job.id, position)
                    place_now = self._place(job)
                    if same_step and place_now == shown_place:
                        continue  # 483 → 482 both read "about 480th" and the estimate reads the same: nothing to show
                    shown_place = place_now
                    await self._show(job)
                raise FalJobError("fal stopped reporting on this job before it finished.")
            except StaleJobError:
                raise
            except Exception as exc:
                if decide(Step.WATCH, exc) is not Action.RETRY:
                    raise StopJob(decide(Step.WATCH, exc), exc) from exc
                log.warning("job=%s watch interrupted (%s); retrying", job.id, exc)
                await self.sleep(self.settings.fal.retry_pause_s)

    def _pace(self, status: QueueStatus) -> float:
        """How long the watch may go without news of a job: as long as its reply may stay stale, and never so long
        that it could reach the front unseen."""
        position = status.queue_position if status.status == "IN_QUEUE" else None
        return self.eta.unobserved_s(
            position,
            stale_s=refresh_s(position),
            near=EXACT_POSITIONS,
            unknown_s=self.settings.fal.max_poll_interval_s,  # knowing nothing, as often as a poll that sees no change
        )

    async def _time_out(self, job: Job, handle: FalHandle) -> bool:
        """Cancel a job past its deadline at fal and end it; True when fal had finished it, so it is fetched."""
        if job.state.finished:
            return False
        try:
            outcome = await self.fal.cancel(handle)
        except FalError as exc:
            log.warning("job=%s timed out and fal could not be asked to cancel it (%s)", job.id, exc.message)
            outcome = "cancelled"
        if outcome == "already_completed":
            log.info("job=%s reached its deadline as fal finished it; fetching", job.id)
            return True
        minutes = self.settings.fal.job_timeout_s / 60
        limit = f"{minutes:.0f} minutes" if minutes >= 1 else f"{self.settings.fal.job_timeout_s:g} seconds"
        billed = job.state is JobState.RUNNING
        charge = "fal may bill the part that ran." if billed else "Nothing was charged."
        log.warning("job=%s timed out at fal after %s (cancel: %s)", job.id, limit, outcome)
        await self._fail(
            job, f"fal did not finish this job within {limit}, so it was cancelled. {charge}", billed=billed
        )
        return False

    async def _fetch(self, job: Job, handle: FalHandle) -> Job:
        deadline = self.clock() + timedelta(seconds=self.settings.fal.job_timeout_s)
        output = await self._attempt(job, Step.RESULT, functools.partial(self.fal.result, handle), deadline)
        assert job.width is not None and job.height is not None
        names: list[str] = []
        megapixels = 0.0
        for index, image in enumerate(output.images):
            raw = await self._attempt(job, Step.DOWNLOAD, functools.partial(self._download, image.url), deadline)
            final = await self._attempt(job, Step.DECODE, functools.partial(self._decode, job, raw), deadline)
            name = result_file(job, index)
            await asyncio.to_thread(self.files.write, job.id, name, final)
            names.append(name)
            width, height = image.width or job.sent_width or job.width, image.height or job.sent_height or job.height
            megapixels += width * height / 1e6
        if not names:
            raise StopJob(Action.FAIL, FalJobError("fal finished but returned no images."))
        job.result_files = names
        job.seed = output.seed if output.seed is not None else job.options.seed
        job.nsfw_flags = list(output.has_nsfw_concepts)
        searched = self.settings.masks.segment_price_usd if job.segment_request_id is not None else 0.0
        job.cost_usd = round(self.settings.fal.price_per_megapixel * megapixels + searched, 6)
        job.completed_at = job.completed_at or self.clock()
        job.queue_position = None
        return await self._save(job, JobState.FETCHED)

    async def _deliver(self, job: Job) -> Job:
        if job.state is not JobState.DELIVERING:
            job = await self._save(job, JobState.DELIVERING)
        files: list[ResultFile] = []
        shown: list[int] = []  # which results the message shows: each gets its Use button
        withheld = 0
        for index, name in enumerate(job.result_files):
            flagged = index < len(job.nsfw_flags) and job.nsfw_flags[index]
            if flagged and not job.origin.channel_nsfw:
                withheld += 1
                continue
            files.append(ResultFile(name, await asyncio.to_thread(self.files.read, job.id, name), spoiler=flagged))
            shown.append(index + 1)
        elapsed = ((job.completed_at or self.clock()) - job.created_at).total_seconds()
        reply = result_reply(job, elapsed_s=elapsed, withheld=withheld, shown=shown, repaint=self.settings.web.enabled)
        parts = await self.notifier.plan(job, reply, files)
        deadline = self.clock() + timedelta(seconds=self.settings.fal.job_timeout_s)
        interrupted = job.posting_part  # the part being posted when the process died: it may be on Discord already
        for part in parts[job.delivered_parts :]:
            if job.posting_part != part.index:
                job.posting_part = part.index
                job = await self._save(job)
            post = functools.partial(self._post, job, part, itertools.count(), interrupted)
            message_id = await self._attempt(job, Step.DELIVER, post, deadline)
            job.delivered_parts = part.index + 1
            job.posting_part = None
            if message_id is not None:
                job.delivered_message_ids = [*job.delivered_message_ids, message_id]
            job = await self._save(job)
        job = await self._save(job, JobState.DONE)
        await self.notifier.forget(job.id)
        if self.metrics is not None and job.completed_at is not None:
            self.metrics.observe_posted_s((self.clock() - job.completed_at).total_seconds())
        log.info(
            "job=%s guild=%s user=%s delivered %d image(s)", job.id, job.origin.guild_id, job.origin.user_id, len(files)
        )
        return job

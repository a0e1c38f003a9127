"""Cancelling a job: the requester or a moderator may; fal's answer decides the final text. A cancel never cuts off
a fetch or a delivery, and two cancels of one job are decided one after the other."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.fal_models import FalError
from bot.models import Job, JobState
from bot.pipeline import JobPipeline
from bot.store_schema import StaleJobError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CancelResult:
    message: str
    cancelled: bool


class JobCanceller:
    def __init__(self, pipeline: JobPipeline) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.fal = pipeline.fal

    async def cancel(self, job_id: str, *, user_id: int, can_manage: bool) -> CancelResult:
        """Cancel a job; never raises for fal's trouble (the member is told)."""
        async with self.pipeline.cancel_lock(job_id):
            return await self._cancel(job_id, user_id=user_id, can_manage=can_manage)

    async def _cancel(self, job_id: str, *, user_id: int, can_manage: bool) -> CancelResult:
        job = await self.store.get(job_id)
        if job is None:
            return CancelResult("That job no longer exists.", cancelled=False)
        if user_id != job.origin.user_id and not can_manage:
            return CancelResult("Only the member who started this job or a moderator can cancel it.", cancelled=False)
        if job.state.finished:
            return CancelResult(f"This job has already ended ({job.state.value}).", cancelled=False)
        if job.state is JobState.PAINTING:
            note = "Cancelled before a mask was painted; nothing was charged."
            try:
                await self.pipeline.end_cancelled(job, user_id, note)
            except StaleJobError:
                return await self._cancel(job_id, user_id=user_id, can_manage=can_manage)
            return CancelResult(note, cancelled=True)
        if job.state is JobState.WAITING:
            note = (
                "Cancelled before the inpainting reached fal; only the mask search was charged."
                if job.segment_request_id is not None
                else "Cancelled before it reached fal; nothing was charged."
            )
            try:  # wins only over the version read: a runner that saved "submitting" first wins instead
                await self.pipeline.end_cancelled(job, user_id, note)
            except StaleJobError:
                return await self._cancel(job_id, user_id=user_id, can_manage=can_manage)
            return CancelResult(note, cancelled=True)
        if job.state in (JobState.QUEUED, JobState.RUNNING) and job.request_id:
            self.pipeline.pause_watch(job.id)  # followed again once this is decided, unless it ends the job
            try:
                outcome = await self.fal.cancel(self.pipeline.handle(job))
            except FalError as exc:
                log.warning("job=%s cancel could not reach fal: %s", job.id, exc.message)
                return CancelResult(
                    f"fal could not be reached to cancel the job ({exc.message}). It goes on; try again in a minute.",
                    cancelled=False,
                )
            if outcome == "already_completed":
                return CancelResult(
                    "Too late: fal had already finished this job, so its results will be posted.", cancelled=False
                )
            job = await self.store.get(job_id) or job
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                running = job.state is JobState.RUNNING
                note = "Cancelled; fal may bill the part that ran." if running else "Cancelled at fal."
                try:
                    await self.pipeline.end_cancelled(job, user_id, note, billed=running)
                except StaleJobError:
                    return await self._cancel(job_id, user_id=user_id, can_manage=can_manage)
                return CancelResult(note, cancelled=True)
            if job.state.finished:
                return CancelResult(f"This job has already ended ({job.state.value}).", cancelled=False)
        if job.state is JobState.SEGMENTING and job.segment_request_id is not None:
            return await self._cancel_segmentation(job, user_id)
        if job.state is JobState.SEGMENTING:  # on the wire, its request id unknown: ended now, it runs on uncancelled
            return CancelResult(
                "The mask search is being sent to fal right now; try again in a moment.", cancelled=False
            )
        if job.state is JobState.SUBMITTING:
            return CancelResult("The job is being sent to fal right now; try again in a moment.", cancelled=False)
        return CancelResult("Too late: the results are already on their way.", cancelled=False)

    async def _cancel_segmentation(self, job: Job, user_id: int) -> CancelResult:
        """fal is looking for the mask: stop that (best effort) and end the job; the inpainting is never sent."""
        self.pipeline.pause_watch(job.id)
        try:
            await self.fal.cancel(self.pipeline.segment_handle(job))
        except FalError as exc:  # the job ends anyway: a search that finishes regardless is billed, no more
            log.warning("job=%s cancel of the mask search could not reach fal: %s", job.id, exc.message)
        note = "Cancelled while fal looked for the mask; only that search may be billed."
        try:
            await self.pipeline.end_cancelled(job, user_id, note)
        except StaleJobError:
            return await self._cancel(job.id, user_id=user_id, can_manage=True)
        return CancelResult(note, cancelled=True)

    async def drop_waiting(self, guild_id: int, user_id: int) -> None:
        """A member was banned: their jobs that fal does not have yet are cancelled (only a mask search already done
        is charged)."""
        for job in await self.store.list_unfinished():
            if job.origin.guild_id == guild_id and job.origin.user_id == user_id and job.state is JobState.WAITING:
                try:
                    await self.pipeline.end_cancelled(
                        job, None, "Cancelled: an admin stopped your use of /inpaint here."
                    )
                except StaleJobError:
                    continue  # it was being submitted this very moment: the submit's own check stops it

"""The jobs side of the mask painter (SPEC 12): the links members get, the picture the page shows, and the painted
mask handed to the pipeline; implements ``bot.web.PaintJobs`` and knows nothing of HTTP or Discord."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

from bot.config import Settings
from bot.errors import InputError, RefusedError
from bot.files import JobFiles
from bot.intake import PAINT_FILE
from bot.job_steps import PaintGoneError
from bot.models import Job, JobState, utcnow
from bot.paint_links import PaintGrant, PaintLinks, UsedLinkError, load_or_create_secret
from bot.pipeline import JobPipeline
from bot.progress import message_link
from bot.store import Store
from bot.store_schema import StaleJobError

log = logging.getLogger(__name__)


def _waits_for(job: Job | None, user_id: int, now: datetime) -> bool:
    return (
        job is not None
        and job.state is JobState.PAINTING
        and job.origin.user_id == user_id
        and (job.paint_expires_at is None or job.paint_expires_at > now)
    )


class Painter:
    """Which jobs wait for a painted mask, for whom, and what happens to the mask."""

    def __init__(
        self,
        *,
        links: PaintLinks,
        store: Store,
        files: JobFiles,
        pipeline: JobPipeline,
        wake: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.links = links
        self.store = store
        self.files = files
        self.pipeline = pipeline
        self.wake = wake
        self.clock = clock

    async def link(self, job_id: str, user_id: int) -> str:
        """A fresh single-use link for the member whose job waits for its mask.

        Raises:
            RefusedError: it is another member's job; InputError: the job no longer waits for a mask.
        """
        job = await self.store.get(job_id)
        if job is not None and job.origin.user_id != user_id:
            raise RefusedError("Only the member who started this job can paint its mask.")
        if not _waits_for(job, user_id, self.clock()):
            raise InputError("This job no longer waits for a mask.")
        return self.links.link(job_id, user_id)

    # bot.web.PaintJobs

    async def image(self, grant: PaintGrant) -> tuple[bytes, str] | None:
        job = await self.store.get(grant.job_id)
        if not _waits_for(job, grant.user_id, self.clock()):
            return None
        try:
            return await asyncio.to_thread(self.files.read, grant.job_id, PAINT_FILE), "image/jpeg"
        except FileNotFoundError:
            return None

    async def submit_mask(self, grant: PaintGrant, png: bytes) -> str:
        try:
            job = await self.pipeline.paint_mask(grant.job_id, grant.user_id, png)
        except (PaintGoneError, StaleJobError) as exc:  # used, or moved on meanwhile (a cancel, another process)
            raise UsedLinkError() from exc
        self.wake()
        origin = job.origin
        where = message_link(origin.guild_id, origin.channel_id, origin.message_id) if origin.message_id else ""
        return f"Mask received: your job continues in Discord. You can close this page. {where}".strip()


def paint_links(settings: Settings) -> PaintLinks | None:
    """The painter's link maker when ``[web]`` is on, with its key (``web.secret``, else kept in the data dir).

    Raises:
        PaintSecretError: the key cannot be had.
    """
    web = settings.web
    if not web.enabled or web.public_url is None:
        return None
    secret = load_or_create_secret(Path(settings.storage.data_dir), web.secret)
    return PaintLinks(secret, ttl_s=web.link_ttl_s, public_url=web.public_url)


@contextlib.asynccontextmanager
async def paint_server(settings: Settings, painter: Painter | None) -> AsyncIterator[None]:
    """Serve the painter's page while the bot runs (nothing when ``[web]`` is off)."""
    if painter is None:
        yield
        return
    from bot.web import PaintServer

    async with PaintServer(settings.web, painter.links, painter):
        yield

"""What a job must pass before it enters the line: access, admin holds, options, caps, budgets and its inputs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import aiohttp

from bot import images, masks
from bot.admin import GuildAdmin
from bot.config import Settings
from bot.downloads import DownloadError, fetch
from bot.errors import InputError, RefusedError
from bot.files import PREVIEW_FILE, JobFiles
from bot.library import LoraLibrary
from bot.loras import Resolved
from bot.models import InpaintOptions, Job, Origin, Upload, utcnow
from bot.progress import usd
from bot.store import Store
from bot.store_schema import MemberFacts

log = logging.getLogger(__name__)

MASK_FILE = "mask.png"  # the mask fal receives: of the crop, at the size sent
FULL_MASK_FILE = "full-mask.png"  # the mask at the input's size, after invert and grow: where the result goes
ORIGINAL_FILE = "original"  # the member's image as uploaded: the composite's base
SEGMENT_INPUT_FILE = "segment-input.jpg"  # what fal's segmentation model receives (mask_prompt)
PAINT_FILE = "paint.jpg"  # what the mask painter shows (SPEC 12)


class PaintNeeded(Exception):
    """No mask source and no transparency, and the painter is on: the job waits for a painted mask."""


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_day(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


def input_file(job: Job) -> str:
    return "input.png" if job.input_mime == "image/png" else "input.jpg"


def result_file(job: Job, index: int) -> str:
    ext = "png" if job.options.output_format == "png" else "jpg"
    return f"result-{index + 1}.{ext}"


def estimate_cost(price_per_megapixel: float, width: int, height: int, num_images: int) -> float:
    return round(price_per_megapixel * width * height / 1_000_000 * num_images, 6)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


class Intake:
    """Checks that need no download come first (``check``), so a refusal costs nothing and can stay private."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        admin: GuildAdmin,
        files: JobFiles,
        session: aiohttp.ClientSession,
        library: LoraLibrary,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.admin = admin
        self.files = files
        self.session = session
        self.library = library
        self.clock = clock
        # downloads and decodes at once: each holds up to max_input_bytes plus the decoded pixels
        self.image_slots = asyncio.Semaphore(settings.limits.max_parallel_prepare)  # the composites share it

    # checks without a download

    async def check(
        self, options: InpaintOptions, origin: Origin, *, pending: int = 0, mask_file: bool = False
    ) -> InpaintOptions:
        """The options as they will run, or why the member may not run them now; ``pending``: the member's commands
        checked already whose jobs are not stored yet; ``mask_file``: a mask is attached.

        Raises:
            RefusedError: access, a ban or pause, the per-member cap, a blocked term or a spent budget.
            InputError: an option past this server's limits, a blank prompt, two mask sources or a bad box.
        """
        masks.mask_source(options, has_file=mask_file)  # two sources, or a box it cannot read
        facts = await self.check_member(origin)
        resolved = await self.resolve(options, origin)
        options = self._effective_options(resolved.options, origin)
        self._check_sent_prompt(resolved.prompt)
        if facts.unfinished + pending >= self.settings.limits.max_jobs_per_user:
            raise RefusedError(self.cap_text())
        user_daily, guild_monthly = (
            (None, None) if self._exempt(origin) else self.admin.budgets_in(origin.guild_id, facts.settings)
        )
        now = self.clock()
        if user_daily is not None:
            spent = await self.store.spend(user_id=origin.user_id, guild_id=origin.guild_id, since=day_start(now))
            if spent >= user_daily:
                raise RefusedError(
                    f"You have used your daily budget of {usd(user_daily)} here. "
                    f"It resets <t:{int(next_day(now).timestamp())}:R>."
                )
        if origin.guild_id is not None and guild_monthly is not None:
            spent = await self.store.spend(guild_id=origin.guild_id, since=month_start(now))
            if spent >= guild_monthly:
                raise RefusedError(
                    f"This server has used its monthly budget of {usd(guild_monthly)}. "
                    f"It resets <t:{int(next_month(now).timestamp())}:R>."
                )
        return options

    async def check_member(self, origin: Origin) -> MemberFacts:
        """Whether the member may run jobs here at all (access, a ban, a pause), before anything else (a form is
        not opened otherwise); what the store knows of them.

        Raises:
            RefusedError: they may not.
        """
        self._check_access(origin)
        facts = await self.store.member_facts(origin.guild_id, origin.user_id)  # one query: bursts come here first
        if (reason := self.admin.refusal_in(origin.guild_id, facts)) is not None:
            raise RefusedError(reason)
        return facts

    async def resolve(self, options: InpaintOptions, origin: Origin) -> Resolved:
        """The options with the member's style and LoRAs applied; what the member set explicitly wins.

        Raises:
            LoraError: an unknown style or LoRA, the same LoRA twice, too many, or a link that is not allowed.
        """
        return await self.library.resolve(options, origin.guild_id, frozenset(options.model_fields_set))

    def cap_text(self) -> str:
        return (
            f"You already have {self.settings.limits.max_jobs_per_user} unfinished jobs; "
            "wait for one to finish or cancel one."
        )

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
        words = options.mask_prompt.strip() if options.mask_prompt is not None else None
        if words == "":
            raise InputError("mask_prompt is empty; say what to repaint, like “the sky”, or leave it out.")
        lowered = f"{options.prompt}\n{words or ''}".casefold()
        if any(term.casefold() in lowered for term in safety.blocked_terms if term):
            raise RefusedError("The prompt contains a term that isn't allowed on this server.")
        checker_off = origin.channel_nsfw and safety.allow_nsfw_in_age_restricted
        return options.model_copy(
            update={"prompt": options.prompt.strip(), "mask_prompt": words, "enable_safety_checker": not checker_off}
        )

    def _check_sent_prompt(self, prompt: str) -> None:
        """The prompt fal receives (a style's template and the LoRAs' trigger words, from a server's admins) within
        the owner's rules too.

        Raises:
            InputError, RefusedError: too long, or a blocked term.
        """
        limit = self.settings.limits.max_prompt_chars
        if len(prompt) > limit:
            raise InputError(
                f"With the style and the LoRAs' trigger words the prompt is {len(prompt)} characters; "
                f"the limit here is {limit}. Shorten your prompt."
            )
        lowered = prompt.casefold()
        if any(term.casefold() in lowered for term in self.settings.safety.blocked_terms if term):
            raise RefusedError("The prompt this style or LoRA makes contains a term that isn't allowed on this server.")

    def _exempt(self, origin: Origin) -> bool:
        return bool(set(self.settings.budgets.exempt_role_ids) & set(origin.role_ids))

    async def budgets(self, origin: Origin) -> tuple[float | None, float | None]:
        """(member daily, server monthly) in force for this member; exempt roles have none."""
        return (None, None) if self._exempt(origin) else await self.admin.budgets(origin.guild_id)

    async def refusal_text(self, reason: str, job: Job, user_daily: float | None, guild_monthly: float | None) -> str:
        """The member-facing text for a reason ``JobStore.reserve`` gave."""
        now = self.clock()
        if reason == "user_limit":
            return self.cap_text()
        if reason == "user_budget" and user_daily is not None:
            spent = await self.store.spend(
                user_id=job.origin.user_id, guild_id=job.origin.guild_id, since=day_start(now)
            )
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

    # the inputs

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

    async def prepare(self, job: Job, image: Upload, mask: Upload | None) -> None:
        """Download, decode and store the inputs; fills the job's sizes, notes and estimate (not saved here). A job
        whose mask comes from words keeps its image for the segmentation, and is estimated as if the whole image
        were repainted until the mask is found.

        Raises:
            InputError: an input that cannot be used, with what is wrong with it.
        """
        limits = self.settings.limits
        source = masks.mask_source(job.options, has_file=mask is not None)
        for upload, what in ((image, "image"), (mask, "mask")):
            if upload is not None and upload.size > limits.max_input_bytes:  # before waiting for a slot
                raise InputError(f"The {what} is {_mb(upload.size)}; the limit is {_mb(limits.max_input_bytes)}.")
        async with self.image_slots:
            image_bytes = await self._download(image, "image")
            mask_bytes = await self._download(mask, "mask") if mask is not None else None
            try:
                if source.kind == "words":
                    found = await asyncio.to_thread(images.prepare_for_segmentation, image_bytes, limits=limits)
                else:
                    prepared = await asyncio.to_thread(self._prepare, job, image_bytes, mask_bytes, source)
            except images.NoMaskError:
                if not self.settings.web.enabled:
                    raise
                await self.wait_for_painting(job, image_bytes)
            del mask_bytes
        await asyncio.to_thread(self.files.write, job.id, ORIGINAL_FILE, image_bytes)  # for the composite
        if source.kind != "words":
            await self.keep(job, prepared)
            return
        await asyncio.to_thread(self.files.write, job.id, SEGMENT_INPUT_FILE, found.image)
        job.width, job.height = found.width, found.height
        job.sent_width, job.sent_height = masks.sent_size(found.width, found.height, limits.max_megapixels, 0)
        job.cost_estimate_usd = self.estimate(job, job.sent_width, job.sent_height)  # the most it can cost

    async def wait_for_painting(self, job: Job, image: bytes) -> NoReturn:
        """Keep ``image`` for the mask painter (SPEC 12): the composite's base and the picture the page shows.

        Raises:
            PaintNeeded: always, once the image is kept: the job waits for its mask.
            InputError: the image cannot be used.
        """
        canvas, job.width, job.height = await asyncio.to_thread(images.paint_canvas, image, limits=self.settings.limits)
        await asyncio.to_thread(self.files.write, job.id, ORIGINAL_FILE, image)
        await asyncio.to_thread(self.files.write, job.id, PAINT_FILE, canvas)
        raise PaintNeeded()

    async def mask_painted(self, job: Job, mask: bytes) -> None:
        """Build the inpainting's inputs from the mask painted in the web page (not saved here).

        Raises:
            InputError: the mask cannot be read, has another shape, or selects nothing.
        """
        original = await asyncio.to_thread(self.files.read, job.id, ORIGINAL_FILE)
        async with self.image_slots:
            prepared = await asyncio.to_thread(
                self._prepare, job, original, mask, masks.MaskSource("file"), accepted=True
            )
        await self.keep(job, prepared)

    async def mask_found(self, job: Job, segmentation: bytes) -> None:
        """Build the inpainting's inputs from fal's segmentation of the job's stored image (not saved here).

        Raises:
            InputError: the mask cannot be read, or the words matched nothing.
        """
        original = await asyncio.to_thread(self.files.read, job.id, ORIGINAL_FILE)
        source = masks.MaskSource("words", words=job.options.mask_prompt)
        async with self.image_slots:  # a full-size decode, as at the intake
            prepared = await asyncio.to_thread(self._prepare, job, original, segmentation, source, accepted=True)
        await self.keep(job, prepared)

    def _prepare(
        self, job: Job, image: bytes, mask: bytes | None, source: masks.MaskSource, *, accepted: bool = False
    ) -> images.PreparedInput:
        options = job.options
        return images.prepare(
            image,
            mask,
            invert=options.invert_mask,
            limits=self.settings.limits,
            source=source,
            grow_px=options.mask_grow,
            feather_px=options.mask_feather,
            accepted=accepted,
        )

    async def keep(self, job: Job, prepared: images.PreparedInput) -> None:
        job.input_mime = prepared.image_mime
        await asyncio.to_thread(self.files.write, job.id, input_file(job), prepared.image)
        await asyncio.to_thread(self.files.write, job.id, MASK_FILE, prepared.mask)
        await asyncio.to_thread(self.files.write, job.id, FULL_MASK_FILE, prepared.full_mask)
        await asyncio.to_thread(self.files.write, job.id, PREVIEW_FILE, prepared.preview)
        job.width, job.height = prepared.width, prepared.height
        job.sent_width, job.sent_height = prepared.sent_width, prepared.sent_height
        job.crop = prepared.crop
        job.notes = list(prepared.notes)
        job.cost_estimate_usd = self.estimate(job, prepared.sent_width, prepared.sent_height)

    def estimate(self, job: Job, width: int, height: int) -> float:
        """The inpainting at the size sent, plus the segmentation when the mask comes from words."""
        cost = estimate_cost(self.settings.fal.price_per_megapixel, width, height, job.options.num_images)
        if job.options.mask_prompt is not None:
            cost += self.settings.masks.segment_price_usd
        return round(cost, 6)

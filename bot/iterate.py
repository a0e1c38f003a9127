"""Jobs made from a result (Reroll, Edit, Use k; SPEC 10): who may make them, what they change, and their inputs
taken from the source job's folder as they are (never a Discord link, which expires); free of Discord types."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from bot import images, masks
from bot.config import Settings
from bot.errors import InputError, RefusedError
from bot.files import PREVIEW_FILE, JobFiles
from bot.intake import FULL_MASK_FILE, MASK_FILE, ORIGINAL_FILE, Intake, input_file
from bot.models import InpaintOptions, Job, JobState
from bot.store import Store

log = logging.getLogger(__name__)

MAX_SEED = 2**53 - 1
SEED_RANGE = 2**32  # a reroll's new seed: fal's own random seeds are in this range


class Verb(StrEnum):
    REROLL = "reroll"
    EDIT = "edit"
    USE = "use"
    REPAINT = "repaint"  # a new mask painted on result k (SPEC 12)


class EditValues(BaseModel):
    """What the Edit modal shows and returns: the four options a member changes most (SPEC 10)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    strength: float
    seed: int | None  # None: a random one
    num_images: int


def edit_defaults(job: Job) -> EditValues:
    """The modal's prefilled values: the source job's prompt and options, and the seed its result used."""
    return EditValues(
        prompt=job.options.prompt,
        strength=job.options.strength,
        seed=job.seed if job.seed is not None else job.options.seed,
        num_images=job.options.num_images,
    )


def _number(raw: str, name: str, low: float, high: float, *, integer: bool) -> float:
    text = raw.strip()
    kind = "a whole number" if integer else "a number"
    try:
        value = float(int(text)) if integer else float(text.replace(",", "."))
    except ValueError:
        raise InputError(f"{name} must be {kind} from {low:g} to {high:g}; “{text[:20]}” is not.") from None
    if not low <= value <= high or value != value:  # NaN compares false
        raise InputError(f"{name} must be {kind} from {low:g} to {high:g}; {text[:20]} is outside.")
    return value


def parse_edit(raw: Mapping[str, str], *, max_num_images: int) -> EditValues:
    """The modal's text fields as options, with the slash command's ranges.

    Raises:
        InputError: a value that is not a number or is out of range; says which and what is allowed.
    """
    prompt = raw.get("prompt", "").strip()
    if not prompt:
        raise InputError("The prompt is empty; describe what should appear in the masked area.")
    strength = _number(raw.get("strength") or "0.85", "strength", 0.01, 1.0, integer=False)
    seed_text = (raw.get("seed") or "").strip()
    seed = None if not seed_text else int(_number(seed_text, "seed", 0, MAX_SEED, integer=True))
    num_images = int(_number(raw.get("num_images") or "1", "num_images", 1, 4, integer=True))
    if num_images > max_num_images:
        raise InputError(f"num_images is {num_images}; this server allows at most {max_num_images}.")
    return EditValues(prompt=prompt, strength=strength, seed=seed, num_images=num_images)


def message_options(texts: Mapping[str, str]) -> InpaintOptions:
    """The "Inpaint this image" form as options; only what the member filled in is set (a style's defaults).

    Raises:
        InputError: a value the slash command would refuse.
    """
    prompt = texts.get("prompt", "").strip()
    if not prompt:
        raise InputError("The prompt is empty; describe what should appear in the masked area.")
    chosen: dict[str, object] = {"prompt": prompt}
    if strength := texts.get("strength", "").strip():
        chosen["strength"] = _number(strength, "strength", 0.01, 1.0, integer=False)
    if words := texts.get("mask_prompt", "").strip():
        chosen["mask_prompt"] = words
    return InpaintOptions.model_validate(chosen)


def new_seed(old: int | None) -> int:
    """A random seed unlike the one the result used, so that a reroll always shows something new."""
    while (seed := secrets.randbelow(SEED_RANGE)) == old:
        continue
    return seed


def derived_options(source: Job, verb: Verb, values: EditValues | None) -> InpaintOptions:
    """The source's options as they ran, with the clicker's changes; the mask is the source's, already built."""
    update: dict[str, object] = {
        "mask_prompt": None,  # the mask was found (or drawn) once; it is reused, not searched for again
        "box": None,
        "region": None,
        "invert_mask": False,  # the kept mask is already inverted and grown
        "mask_grow": 0,
    }
    if verb in (Verb.REROLL, Verb.REPAINT):
        update["seed"] = new_seed(source.seed)
    else:
        assert values is not None
        update |= values.model_dump()
    return source.options.model_copy(update=update)


def pruned_text(settings: Settings) -> str:
    days = settings.storage.keep_finished_days
    return (
        f"The files of this job were removed after {days:g} days (storage.keep_finished_days), so it cannot be "
        "reused. Start anew with /inpaint."
    )


class Iterations:
    """Finds a result's job for a click and builds a new job's inputs from its folder."""

    def __init__(self, *, settings: Settings, store: Store, files: JobFiles, intake: Intake) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.intake = intake

    async def source(self, job_id: str, *, user_id: int, verb: Verb | None, index: int | None = None) -> Job:
        """The finished job a button names, if ``user_id`` may build on it (``verb``; None: only look at it).

        Raises:
            InputError: the job or its files are gone, or it has no such result.
            RefusedError: ``ui.iterate_by`` keeps its results to its requester.
        """
        job = await self.store.get(job_id)
        if job is None:
            raise InputError(pruned_text(self.settings))
        # a click can come while the last part of the result is still being posted: its images are on disk
        if job.state not in (JobState.FETCHED, JobState.DELIVERING, JobState.DONE) or not job.result_files:
            raise InputError("This job has no result to build on.")
        if verb is not None and self.settings.ui.iterate_by == "requester" and user_id != job.origin.user_id:
            raise RefusedError(
                f"Only <@{job.origin.user_id}>, who made this result, can {verb.value} it in this server."
            )
        needed = [ORIGINAL_FILE, input_file(job), MASK_FILE, FULL_MASK_FILE]
        if index is not None:
            withheld = index < len(job.nsfw_flags) and job.nsfw_flags[index] and not job.origin.channel_nsfw
            if not 0 <= index < len(job.result_files) or withheld:
                raise InputError(f"This result has no image {index + 1}.")
            needed.append(job.result_files[index])
        present = await asyncio.to_thread(lambda: all(self.files.exists(job.id, name) for name in needed))
        if not present:
            raise InputError(pruned_text(self.settings))
        return job

    async def mask_picture(self, job_id: str) -> bytes:
        """The picture of the mask over the image that the job's reply showed (the Mask button).

        Raises:
            InputError: the job or the picture is gone.
        """
        job = await self.source(job_id, user_id=0, verb=None)
        try:
            return await asyncio.to_thread(self.files.read, job.id, PREVIEW_FILE)
        except FileNotFoundError:
            raise InputError(pruned_text(self.settings)) from None

    async def copy_inputs(self, job: Job, source: Job) -> None:
        """The source's image and mask bytes as fal received them, and their sizes (Reroll, Edit)."""
        names = [ORIGINAL_FILE, input_file(source), MASK_FILE, FULL_MASK_FILE, PREVIEW_FILE]

        def copy() -> None:
            for name in names:
                if name == PREVIEW_FILE and not self.files.exists(source.id, name):
                    continue  # only a picture for the reply
                self.files.write(job.id, name, self.files.read(source.id, name))

        try:
            await asyncio.to_thread(copy)
        except FileNotFoundError:  # pruned between the click's check and now
            raise InputError(pruned_text(self.settings)) from None
        job.input_mime = source.input_mime
        job.width, job.height = source.width, source.height
        job.sent_width, job.sent_height = source.sent_width, source.sent_height
        job.crop = source.crop
        job.notes = list(source.notes)
        assert job.sent_width is not None and job.sent_height is not None
        job.cost_estimate_usd = self.intake.estimate(job, job.sent_width, job.sent_height)

    async def paint_on_result(self, job: Job, source: Job, index: int) -> None:
        """Result ``index`` as the new image, its mask to be painted (Repaint).

        Raises:
            PaintNeeded: always, once the image is kept: the job waits for its mask.
        """
        image = await asyncio.to_thread(self.files.read, source.id, source.result_files[index])
        await self.intake.wait_for_painting(job, image)

    async def use_result(self, job: Job, source: Job, index: int) -> None:
        """Result ``index`` of the source at full size as the new image, under the source's mask (Use k).

        Raises:
            InputError: the result cannot be used as an input.
        """
        image = await asyncio.to_thread(self.files.read, source.id, source.result_files[index])
        mask = await asyncio.to_thread(self.files.read, source.id, FULL_MASK_FILE)
        async with self.intake.image_slots:
            prepared = await asyncio.to_thread(
                images.prepare,
                image,
                mask,
                invert=False,
                limits=self.settings.limits,
                source=masks.MaskSource("file"),
                feather_px=job.options.mask_feather,
                accepted=True,  # it is the size the source was accepted at
            )
        await asyncio.to_thread(self.files.write, job.id, ORIGINAL_FILE, image)
        await self.intake.keep(job, prepared)

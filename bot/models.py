"""Plain job data: options, origin, state; no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

OutputFormat = Literal["jpeg", "png"]
MaskRegion = Literal["top", "bottom", "left", "right", "center", "everything"]


def new_job_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobState(StrEnum):
    ACCEPTED = "accepted"  # row written at acknowledge; inputs not yet validated
    PAINTING = "painting"  # the image is kept; the member paints the mask in the web page (SPEC 12); not charged
    WAITING = "waiting"  # validated, inputs on disk, in this bot's line
    SEGMENTING = "segmenting"  # the mask is asked of fal's segmentation model (mask_prompt): never re-sent on resume
    SUBMITTING = "submitting"  # a submit may be on the wire: never re-sent on resume
    QUEUED = "queued"  # fal holds it (request id known), IN_QUEUE
    RUNNING = "running"  # IN_PROGRESS at fal
    FETCHED = "fetched"  # result images are on disk
    DELIVERING = "delivering"  # posting to Discord has started
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES

    @property
    def at_fal(self) -> bool:
        return self in (JobState.SEGMENTING, JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)


FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class InpaintOptions(BaseModel):
    """The member's choices, named as fal names them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(min_length=1, max_length=2000)
    strength: float = Field(0.85, ge=0.01, le=1.0)
    num_images: int = Field(1, ge=1, le=4)
    num_inference_steps: int = Field(28, ge=1, le=50)
    guidance_scale: float = Field(3.5, ge=0, le=35)
    seed: int | None = Field(None, ge=0, le=2**53 - 1)  # Discord's integer limit (Int53)
    output_format: OutputFormat = "jpeg"
    invert_mask: bool = False
    enable_safety_checker: bool = True
    # mask sources besides an attachment (SPEC 11): at most one of these, checked by the intake
    mask_prompt: str | None = Field(None, min_length=1, max_length=200)  # words, segmented by fal
    box: str | None = Field(None, max_length=100)  # "x1,y1,x2,y2" in percent of width and height
    region: MaskRegion | None = None
    mask_grow: int = Field(0, ge=0, le=128)  # px of the input the mask is dilated by
    mask_feather: int = Field(8, ge=0, le=64)  # px over which the composite's seam is softened
    # LoRAs and styles (SPEC 9): catalog names (or URLs where the owner allows them), resolved by bot.loras
    style: str | None = Field(None, max_length=100)
    lora: str | None = Field(None, max_length=500)
    lora_scale: float | None = Field(None, ge=0, le=4)  # None: the entry's own scale
    lora2: str | None = Field(None, max_length=500)
    lora2_scale: float | None = Field(None, ge=0, le=4)


class Upload(BaseModel):
    """An attachment as Discord described it; the URL is fetched once and never stored past validation."""

    model_config = ConfigDict(frozen=True)

    url: str
    filename: str
    size: int
    content_type: str | None = None


class LoraUse(BaseModel):
    """A LoRA as fal receives it, and its name for the result embed (bot.loras resolves the member's choice)."""

    model_config = ConfigDict(frozen=True)

    path: str
    scale: float
    label: str  # "pixel-art × 0.8"


class Origin(BaseModel):
    """Where a job came from and how to reach its reply."""

    model_config = ConfigDict(frozen=True)

    user_id: int
    guild_id: int | None
    channel_id: int
    application_id: int
    interaction_id: int
    interaction_token: SecretStr
    token_expires_at: datetime
    channel_nsfw: bool = False
    upload_limit_bytes: int = 10 * 1024 * 1024
    role_ids: tuple[int, ...] = ()
    message_id: int | None = None  # the deferred reply; known from the defer answer or one GET of @original
    # "channel": the reply is a message the bot posted itself (a job made from a result or a message replies to
    # it), edited through the channel; the interaction token only answered the clicker privately
    reply_via: Literal["interaction", "channel"] = "interaction"
    photo_owner_id: int | None = None  # "Inpaint this image" on another member's photo: they may delete the result


class Job(BaseModel):
    """One /inpaint request from acknowledge to delivery; the job store keeps one row per job."""

    model_config = ConfigDict(validate_assignment=True)

    id: str = Field(default_factory=new_job_id)
    version: int = 0  # the row's version: a save succeeds only over the version it read (one writer wins)
    state: JobState = JobState.ACCEPTED
    origin: Origin
    options: InpaintOptions
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    # the style and LoRAs applied (SPEC 9): what fal receives instead of the member's own prompt, and the LoRAs
    fal_prompt: str | None = None
    loras: list[LoraUse] = Field(default_factory=list)
    parent_job_id: str | None = None  # the result this job was made from (Reroll, Edit, Use; SPEC 10)
    parent_message_id: int | None = None  # that result's message, which this job's reply answers
    paint_expires_at: datetime | None = None  # PAINTING: the job ends unless a mask is painted before this

    # filled by validation
    width: int | None = None  # the input's size; results are delivered at this size
    height: int | None = None
    sent_width: int | None = None  # the size sent to fal (after the megapixel cap)
    sent_height: int | None = None
    notes: list[str] = Field(default_factory=list)  # "downscaled to …", "the mask selects everything"
    cost_estimate_usd: float = 0.0
    input_mime: str = "image/jpeg"  # how the prepared image is stored in the job's folder
    image_url: str | None = None  # fal storage URLs when fal.upload_inputs is on
    mask_url: str | None = None
    # the part of the input sent to fal (left, top, right, bottom; SPEC 11), set once the mask is known; None for a
    # job stored before crops existed (the whole image was sent) or one whose mask fal has not found yet
    crop: tuple[int, int, int, int] | None = None
    segment_request_id: str | None = None  # the segmentation at fal (mask_prompt); its price is charged once sent

    # filled at fal
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    queue_position: int | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    seed: int | None = None
    nsfw_flags: list[bool] = Field(default_factory=list)
    result_files: list[str] = Field(default_factory=list)  # file names in the job's folder

    retry_at: datetime | None = None  # back in line after fal refused the submit (429): not before this time

    # Discord side
    delivered_message_ids: list[int] = Field(default_factory=list)
    delivered_parts: int = 0  # how many messages of the result are posted (multi-message delivery)
    posting_part: int | None = None  # the part being posted: after a crash it may exist already
    cancel_requested_by: int | None = None
    error: str | None = None  # the member-facing reason for FAILED
    cost_usd: float | None = None  # recorded once fal has delivered

    @property
    def at_fal(self) -> bool:
        return self.state.at_fal

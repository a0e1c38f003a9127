"""What fal says and how to read it: typed inputs and answers, the errors, and the retry rules (no I/O here)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.errors import UserFacingError
from bot.models import InpaintOptions

RETRY_AFTER_MAX_S = 120.0
MAX_DETAIL_CHARS = 300

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
CancelOutcome = Literal["cancelled", "already_completed", "not_found"]
"""``cancelled``: fal accepted the cancel (202 CANCELLATION_REQUESTED); a running job may still finish and bill."""


# errors


class FalError(UserFacingError):
    """Base of this module's errors; ``str()`` never holds the key or a URL with a token."""


class FalTransientError(FalError):
    """Network trouble, timeouts, 429 or 5xx after the retries: may succeed later; a job at fal may still be alive."""


class FalNotTakenError(FalTransientError):
    """A submit that certainly did not reach fal's queue (no connection, 429, a 503 naming no request): the same
    job may be sent again later."""


class FalRejectedError(FalError):
    """fal refused the request (4xx, a refused key): retrying the same request cannot help."""


class FalSubmitUnknownError(FalError):
    """The job was sent but never answered: it may run and be billed, so it is never sent again."""


class FalJobError(FalError):
    """fal ended the job with an error, or no longer has its result."""


# wire models


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")  # proxies add fields


class LoraWeight(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    scale: float = 1.0


class InpaintInput(BaseModel):
    """The body of a ``fal-ai/flux-lora/inpainting`` submit; ranges are checked before (and by fal)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    image_url: str
    mask_url: str
    strength: float = 0.85
    num_inference_steps: int = 28
    guidance_scale: float = 3.5
    num_images: int = 1
    seed: int | None = None
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"
    loras: list[LoraWeight] = Field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body: no ``seed`` when random, no ``loras`` when empty (proxies do not list the field)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if not self.loras:
            del data["loras"]
        return data


class SegmentInput(BaseModel):
    """The body of a segmentation submit (``fal-ai/evf-sam``): words in, a black-and-white mask out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    image_url: str
    mask_only: bool = True  # the mask itself, not the image cut out

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class FalHandle(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    app_id: str | None = None  # ``owner/app`` of the request; None: the configured inpainting endpoint's


class QueueStatus(_Answer):
    status: Status
    queue_position: int | None = None  # requests ahead of this one, only while IN_QUEUE
    error: str | None = None  # COMPLETED with an error: the job failed or was cancelled
    error_type: str | None = None

    @property
    def progress(self) -> tuple[str, int | None]:
        """What a member would see change: the status, and the position while queued."""
        return self.status, self.queue_position if self.status == "IN_QUEUE" else None


class FalImage(_Answer):
    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


class InpaintOutput(_Answer):
    images: list[FalImage]
    seed: int | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str | None = None


class SegmentOutput(_Answer):
    image: FalImage  # the mask: white where the words matched


class SubmitAnswer(_Answer):
    request_id: str = Field(min_length=1, max_length=200)
    status: Status = "IN_QUEUE"
    queue_position: int | None = None
    status_url: str | None = None


class CancelAnswer(_Answer):
    status: str | None = None
    success: bool | None = None


class UploadSlot(_Answer):
    upload_url: str
    file_url: str


# pure decisions


def retry_delay(attempt: int, *, base: float, cap: float, rand: float, retry_after: float | None = None) -> float:
    """Seconds before retry ``attempt`` (0 = the first): full jitter under ``min(cap, base·2^attempt)``.

    A server's ``Retry-After`` wins, clamped to ``[0, RETRY_AFTER_MAX_S]``.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_MAX_S)
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 60))
    return ceiling * min(max(rand, 0.0), 1.0)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def describe_detail(body: object) -> str | None:
    """fal's ``detail`` (a list of ``{loc, msg}`` or a string) as one sentence; never echoes ``input``."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail or None
    if not isinstance(detail, list):
        return None
    parts = []
    for item in detail:
        if not isinstance(item, dict):
            continue
        raw_loc = item.get("loc") or []
        loc = [str(p) for p in (raw_loc if isinstance(raw_loc, list) else [raw_loc]) if p != "body"]
        msg = str(item.get("msg") or item.get("type") or "invalid")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or None


URL_PATTERN = re.compile(r"\b(?:https?|data):\S+", re.IGNORECASE)


def no_retry_header(headers: Mapping[str, str]) -> bool:
    for name in ("X-Fal-Retryable", "X-Fal-Needs-Retry"):
        if headers.get(name, "").strip().lower() in ("0", "false", "no"):
            return True
    return headers.get("X-Fal-Request-Timeout-Type", "").lower() == "user"  # start_timeout expired: never retry


def fal_input(
    options: InpaintOptions,
    image_url: str,
    mask_url: str,
    *,
    prompt: str | None = None,
    loras: Sequence[LoraWeight] = (),
) -> InpaintInput:
    """What fal is sent for these options: the one place the member's choices become fal's input; ``prompt`` is
    the one the style and the LoRAs' trigger words made (default the member's own)."""
    return InpaintInput(
        prompt=prompt if prompt is not None else options.prompt,
        loras=list(loras),
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

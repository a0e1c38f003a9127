"""What a member sees for a job in each state, as plain data; knows nothing of Discord's objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from discord.utils import escape_markdown, escape_mentions  # pure text functions, no Discord objects

from bot.files import PREVIEW_FILE
from bot.models import Job, JobState

CANCEL_PREFIX = "fp:cancel:"
MAX_CONTENT = 2000
PROMPT_PREVIEW = 120

EXACT_POSITIONS = 10  # up to here a position is shown as it is; further back it is rounded
REFRESH_S_PER_PLACE = 0.5  # a progress-only text far back may stay this many seconds stale per place in line
MAX_REFRESH_S = 300.0
MAX_ETA_S = 6 * 3600  # past this an estimate says nothing worth reading

COLOUR_OK = 0x57F287
COLOUR_FAILED = 0xED4245
COLOUR_CANCELLED = 0x99AAB5


@dataclass(frozen=True)
class EmbedData:
    title: str
    description: str
    colour: int
    fields: tuple[tuple[str, str], ...] = ()
    footer: str = ""


@dataclass(frozen=True)
class Reply:
    """The whole visible state of a job's reply; equal replies need no edit."""

    content: str
    embed: EmbedData | None = None
    cancel_button: bool = False
    preview: str | None = None  # a picture of the mask over the image, by its file name in the job's folder
    # a result's buttons (Reroll, Edit, Use k, Mask, Delete; SPEC 10): the numbers (1-based, in the job's result
    # files) of the images the message shows, each with its Use button; None: no result buttons
    result_buttons: tuple[int, ...] | None = None
    paint_button: bool = False  # the job waits for its mask: "Paint the mask" (SPEC 12)
    repaint_button: bool = False  # a result's "Repaint", when the mask painter is on
    # Not part of what is seen: which step the job is at (a new one is shown at once, a new position may wait) and
    # how long a text that only moved a job's position may stay unshown.
    stage: str = field(default="", compare=False)
    refresh_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ResultFile:
    filename: str
    data: bytes
    spoiler: bool = False


@dataclass(frozen=True)
class ResultPart:
    """One message of a result: part ``index`` of ``total``; the first carries the embed."""

    index: int
    total: int
    reply: Reply
    files: tuple[ResultFile, ...]


class DeliveryError(Exception):
    """Discord did not take a post; ``transient`` says whether the same post may work later."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class JobNotifier(Protocol):
    """The core's view of the Discord side: show a job's state, post its results. It never writes a job."""

    async def update(self, job: Job, reply: Reply) -> None:
        """Show ``reply``; paced, and a newer reply replaces one not yet shown."""

    async def finish(self, job: Job, reply: Reply) -> None:
        """Show the last text of a failed or cancelled job: retried, else posted anew; never dropped."""

    async def plan(self, job: Job, reply: Reply, files: Sequence[ResultFile]) -> list[ResultPart]:
        """The result split into messages within Discord's limits; the same parts for the same input."""

    async def post(self, job: Job, part: ResultPart, *, maybe_posted: bool) -> int | None:
        """Post one part; the message id, or None when no route reached the member.

        With ``maybe_posted`` (a crash came between sending and recording it) an earlier copy is looked for first.

        Raises:
            DeliveryError: Discord did not take it.
        """

    async def forget(self, job_id: str) -> None:
        """Drop the pacing state of a finished job."""


def member_text(text: str) -> str:
    """Text a member typed, shown as typed: no Markdown, no masked links, no pings."""
    return escape_mentions(escape_markdown(text))


def _preview(prompt: str, limit: int = PROMPT_PREVIEW) -> str:
    one_line = " ".join(prompt.split())
    cut = one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
    return member_text(cut)


def usd(amount: float) -> str:
    return f"${amount:.3f}" if amount < 1 else f"${amount:.2f}"


def summary_line(job: Job) -> str:
    opts = job.options
    images = "1 image" if opts.num_images == 1 else f"{opts.num_images} images"
    size = f" · {job.width}×{job.height}" if job.width and job.height else ""
    cost = f" · est. {usd(job.cost_estimate_usd)}" if job.cost_estimate_usd else ""
    return f"“{_preview(opts.prompt)}” · {images}{size}{cost}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def place(position: int) -> str:
    """fal's queue position as a member reads it: exact near the front, rounder the further back."""
    if position <= EXACT_POSITIONS:
        return f"position {position}" + (" (next up)" if position == 0 else "")
    step = 5 if position < 100 else 10 if position < 1000 else 100
    return f"about {ordinal(max(step, round(position / step) * step))} in line"


def refresh_s(position: int | None) -> float:
    """How long a text that only moved a job's position may wait: not at all near the front, longer further back."""
    if position is None or position <= EXACT_POSITIONS:
        return 0.0
    return min(MAX_REFRESH_S, position * REFRESH_S_PER_PLACE)


def eta_text(seconds: float | None) -> str:
    """An estimate in words, rounded so that it changes rarely; empty when there is none worth showing."""
    if seconds is None or seconds < 0 or seconds > MAX_ETA_S:
        return ""
    if seconds < 60:
        return "under a minute"
    minutes = seconds / 60
    if minutes < 10:
        return f"about {round(minutes)} min"
    if minutes < 60:
        return f"about {round(minutes / 5) * 5} min"
    hours = round(minutes / 30) / 2
    return f"about {hours:g} h"


def status_line(
    job: Job, *, line_position: int | None = None, held: str | None = None, eta_s: float | None = None
) -> str:
    if held is not None and job.state is JobState.WAITING:
        return f"⏸️ On hold: {held} Your job stays in line until that changes."
    match job.state:
        case JobState.ACCEPTED:
            return "🔎 Checking your image and mask…"
        case JobState.PAINTING:
            until = f", until <t:{int(job.paint_expires_at.timestamp())}:t>" if job.paint_expires_at else ""
            return f"🖌️ Waiting for the mask: press Paint the mask to draw what to repaint (only you can{until})."
        case JobState.WAITING:
            where = f"#{line_position} in this bot's queue" if line_position else "in this bot's queue"
            return f"⏳ Waiting: {where} (fal runs a few jobs at a time for this bot)"
        case JobState.SEGMENTING:
            return f"🔍 Finding “{_preview(job.options.mask_prompt or '', 60)}” in your image…"
        case JobState.SUBMITTING:
            return "📨 Sending to fal…"
        case JobState.QUEUED:
            where = "" if job.queue_position is None else f": {place(job.queue_position)}"
            eta = eta_text(eta_s)
            return f"🕒 Queued at fal{where}" + (f" · {eta}" if eta else "")
        case JobState.RUNNING:
            return "🎨 Generating…"
        case JobState.FETCHED | JobState.DELIVERING:
            return "📦 Uploading the results…"
        case JobState.DONE:
            return "✅ Done"
        case JobState.FAILED:
            return f"❌ {job.error or 'The job failed.'}"
        case JobState.CANCELLED:
            return "🚫 Cancelled."


def progress_reply(
    job: Job, *, line_position: int | None = None, held: str | None = None, eta_s: float | None = None
) -> Reply:
    """The reply while a job is unfinished, or its text once it failed or was cancelled."""
    lines = [status_line(job, line_position=line_position, held=held, eta_s=eta_s), summary_line(job)]
    if job.origin.reply_via == "channel":  # a reply of the bot's own: say whose job it is (a mention never pings)
        lines[1] = f"for <@{job.origin.user_id}> · {lines[1]}"
    lines.extend(f"ℹ️ {note}" for note in job.notes)
    content = "\n".join(lines)[:MAX_CONTENT]
    cancellable = job.state in (
        JobState.PAINTING,
        JobState.WAITING,
        JobState.SEGMENTING,
        JobState.SUBMITTING,
        JobState.QUEUED,
        JobState.RUNNING,
    )
    stage = f"{job.state.value}:held" if held is not None and job.state is JobState.WAITING else job.state.value
    position = job.queue_position if job.state is JobState.QUEUED else line_position
    # the mask once it is known (SPEC 11), so that a wrong one is seen before the result comes; a failed or
    # cancelled job's last text goes without it
    preview = PREVIEW_FILE if job.crop is not None and not job.state.finished else None
    return Reply(
        content=content,
        cancel_button=cancellable,
        paint_button=job.state is JobState.PAINTING,
        preview=preview,
        stage=stage,
        refresh_s=refresh_s(position),
    )


def result_reply(
    job: Job,
    *,
    elapsed_s: float,
    withheld: int,
    notes: Sequence[str] = (),
    shown: Sequence[int] = (),
    repaint: bool = False,
) -> Reply:
    """The final message: a compact embed with everything needed to reproduce the result, and the buttons that
    build on it (``shown``: the 1-based numbers of the result files posted)."""
    opts = job.options
    fields = [
        ("Seed", str(job.seed) if job.seed is not None else "unknown"),
        ("Strength", f"{opts.strength:g}"),
        ("Steps", str(opts.num_inference_steps)),
        ("Guidance", f"{opts.guidance_scale:g}"),
        ("Size", f"{job.width}×{job.height}"),
        ("Time", f"{elapsed_s:.0f} s"),
        ("Est. cost", usd(job.cost_usd if job.cost_usd is not None else job.cost_estimate_usd)),
    ]
    if opts.style is not None:
        fields.append(("Style", member_text(opts.style)))
    if job.loras:
        fields.append(("LoRAs", "\n".join(member_text(lora.label) for lora in job.loras)[:1024]))
    if job.parent_job_id is not None:
        fields.append(("From", from_text(job)))
    if job.origin.reply_via == "channel":
        fields.append(("By", f"<@{job.origin.user_id}>"))
    extra = list(job.notes) + list(notes)
    if withheld:
        noun = "image was" if withheld == 1 else "images were"
        extra.append(
            f"{withheld} {noun} withheld: fal's safety checker flagged it (allowed only in age-restricted channels)."
        )
    # the prompt fal received: the style's template and the LoRAs' trigger words included
    description = _preview(job.fal_prompt or opts.prompt, 3000)
    if extra:
        description += "\n\n" + "\n".join(f"ℹ️ {note}" for note in extra)
    embed = EmbedData(
        title="Inpainted",
        description=description,
        colour=COLOUR_OK,
        fields=tuple(fields),
        footer=f"job {job.id}",
    )
    return Reply(content="", embed=embed, result_buttons=tuple(shown), repaint_button=repaint and bool(shown))


def message_link(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def from_text(job: Job) -> str:
    """ "from job …", linked to the result it was made from when that message is known."""
    assert job.parent_job_id is not None
    text = f"job {job.parent_job_id[:8]}"
    if job.parent_message_id is not None:
        return f"[{text}]({message_link(job.origin.guild_id, job.origin.channel_id, job.parent_message_id)})"
    return text


HISTORY_STATES = {
    JobState.ACCEPTED: "🔎 checking",
    JobState.PAINTING: "🖌️ waiting for the mask",
    JobState.WAITING: "⏳ waiting",
    JobState.SEGMENTING: "🔍 finding the mask",
    JobState.SUBMITTING: "📨 sending",
    JobState.QUEUED: "🕒 queued",
    JobState.RUNNING: "🎨 generating",
    JobState.FETCHED: "📦 uploading",
    JobState.DELIVERING: "📦 uploading",
    JobState.DONE: "✅ done",
    JobState.FAILED: "❌ failed",
    JobState.CANCELLED: "🚫 cancelled",
}


def history_text(jobs: Sequence[Job]) -> str:
    """/history: a member's latest jobs, newest first, each with its state, a prompt preview and a link."""
    if not jobs:
        return "You have no jobs in this server yet. Start one with /inpaint."
    lines = []
    for job in jobs:
        message_id = job.delivered_message_ids[0] if job.delivered_message_ids else job.origin.message_id
        where = f"{job.origin.guild_id}/{job.origin.channel_id}/{message_id}" if message_id else None
        link = f" · [open](https://discord.com/channels/{where})" if where else ""
        when = f"<t:{int(job.created_at.timestamp())}:R>"
        lines.append(f"{when} {HISTORY_STATES[job.state]} · “{_preview(job.options.prompt, 60)}”{link}")
    return "\n".join(lines)[:MAX_CONTENT]

"""A job's end on Discord: its result in messages within the upload limits (posted once, also across a crash) and
its final text, never dropped; progress is ``bot.replies``. It never writes a job's state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import aiohttp
import discord

from bot import images
from bot.config import UiSettings
from bot.files import JobFiles
from bot.models import Job, OutputFormat, utcnow
from bot.pacing import RequestBudget
from bot.progress import DeliveryError, EmbedData, Reply, ResultFile, ResultPart
from bot.replies import TOKEN_ERRORS, ReplyEditor, ReplyState, describe, reply_view, to_embed, to_files

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 24 * 1024 * 1024  # Discord caps a whole request at 25 MiB; keep room for the JSON part
MAX_FILES_PER_MESSAGE = 10
DM_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit, the one DMs get
FINAL_TRIES = 3  # edits of a failed or cancelled job's reply before its text is posted anew
FINAL_RETRY_S = 1.0
FINAL_PART = 999  # the nonce of a final text posted anew
HISTORY_LOOKBACK = 50  # the bot's recent messages searched for a part posted before a crash


def batches(files: Sequence[ResultFile], *, max_bytes: int = MAX_REQUEST_BYTES) -> list[list[ResultFile]]:
    """Split files into messages of at most ten files and ``max_bytes`` in total, keeping their order."""
    out: list[list[ResultFile]] = []
    size = 0
    for file in files:
        if not out or len(out[-1]) >= MAX_FILES_PER_MESSAGE or size + len(file.data) > max_bytes:
            out.append([])
            size = 0
        out[-1].append(file)
        size += len(file.data)
    return out


def delivery_nonce(job_id: str, part: int) -> str:
    """At most 25 characters, the same for the same part of the same job, so Discord drops a repeat."""
    return f"fp{job_id[:20]}{part:03d}"


def part_text(job_id: str, index: int, total: int) -> str:
    """The text of a result's further messages; the job id in it finds the message again after a crash."""
    return f"Results {index + 1}/{total} · job {job_id}"


class DiscordNotifier(ReplyEditor):
    """Implements ``bot.progress.JobNotifier`` for a discord.py client: progress through ``ReplyEditor``, plus the
    final texts and the results."""

    def __init__(
        self,
        client: discord.Client,
        ui: UiSettings,
        *,
        budget: RequestBudget,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        files: JobFiles | None = None,
    ) -> None:
        super().__init__(client, ui, budget=budget, monotonic=monotonic, now=now, sleep=sleep, files=files)
        self.max_request_bytes = max_request_bytes

    # final texts

    async def finish(self, job: Job, reply: Reply) -> None:
        """The last text of a failed or cancelled job: edited in, retried, else posted anew; never raises."""
        editor = self._editor(job)
        editor.wanted = None  # a stale "Generating…" must not land after this
        self._end(job.id)
        await self._settle(editor)
        async with editor.lock:
            for attempt in range(FINAL_TRIES):
                await self._in_window(editor)
                try:
                    reached = await self._edit_reply(job, reply, final=True)  # final: the mask preview goes
                except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("job=%s final edit failed (%s); try %d", job.id, describe(exc), attempt + 1)
                    await self.sleep(FINAL_RETRY_S * (attempt + 1))
                    continue
                if reached:
                    editor.shown, editor.shown_at = reply, self.monotonic()
                    return
                break
            # the reply cannot be edited (deleted, or the token is gone and its id unknown): say it anew
            try:
                await self._post_new(job, reply, [], mention=True, nonce=delivery_nonce(job.id, FINAL_PART))
            except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("job=%s final text could not be posted either (%s)", job.id, describe(exc))

    # results

    async def plan(self, job: Job, reply: Reply, files: Sequence[ResultFile]) -> list[ResultPart]:
        """The result in messages of at most ten files and one request's bytes, re-encoded where needed."""
        # a boosted server's per-file limit can exceed what one request may carry
        limit = min(job.origin.upload_limit_bytes, self.max_request_bytes)
        fitted, notes = await _fit(files, limit, job.options.output_format)
        if notes and reply.embed is not None:
            extra = "\n".join(f"ℹ️ {n}" for n in notes)
            reply = dataclasses.replace(reply, embed=_with_extra(reply.embed, extra))
        # No files at all (every image withheld): one part without files still shows the result and its note.
        groups = batches(fitted, max_bytes=self.max_request_bytes) or [[]]
        total = len(groups)
        return [
            ResultPart(
                index=index,
                total=total,
                reply=reply if index == 0 else Reply(content=part_text(job.id, index, total)),
                files=tuple(group),
            )
            for index, group in enumerate(groups)
        ]

    async def post(self, job: Job, part: ResultPart, *, maybe_posted: bool) -> int | None:
        """Post one part of the result (the first edits the reply while the token lives); the message id."""
        editor = self._editor(job)
        editor.wanted = None  # a stale "Generating…" must not land after the result
        self._end(job.id)  # nor one computed later
        await self._settle(editor)
        try:
            async with editor.lock:
                try:
                    return await self._post_part(editor, part, maybe_posted=maybe_posted)
                finally:
                    editor.shown, editor.shown_at = None, self.monotonic()
        except discord.HTTPException as exc:
            transient = exc.status >= 500 or exc.status == 429
            raise DeliveryError(f"Discord answered {exc.status} ({exc.code})", transient=transient) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # discord.py lets network trouble through
            raise DeliveryError(f"Discord could not be reached ({type(exc).__name__})", transient=True) from exc

    async def _post_part(self, editor: ReplyState, part: ResultPart, *, maybe_posted: bool) -> int | None:
        job = editor.job
        origin = job.origin
        files = list(part.files)
        if part.index > 0:
            if maybe_posted and (found := await self._find_posted(job, part)) is not None:
                return found
            posted = await self._post_new(
                job, part.reply, files, mention=False, nonce=delivery_nonce(job.id, part.index)
            )
            return posted[1] if posted else None
        if self._token_usable(job):
            await self._in_window(editor)
            if await self._edit_reply(job, part.reply, files=files, final=True, via_channel=False):
                return origin.message_id  # None only when the defer answer lacked it ("@original" was edited then)
        elif origin.reply_via == "channel" and origin.message_id is not None:
            # the bot's own message, answering the result it was made from: edited in place, as long as it lives
            await self._in_window(editor)
            if await self._edit_reply(job, part.reply, files=files, final=True):
                return origin.message_id
        # Past the token's life (by our clock or by Discord's 401) the member would not notice an edit: post
        # anew and mention them once, whichever call found the token dead.
        found = await self._find_posted(job, part) if maybe_posted else None
        posted = (origin.channel_id, found) if found is not None else None
        if posted is None:
            posted = await self._post_new(job, part.reply, files, mention=True, nonce=delivery_nonce(job.id, 0))
        if posted is not None and origin.message_id is not None:
            channel_id, message_id = posted
            where = (
                f"results in https://discord.com/channels/{origin.guild_id or '@me'}/{channel_id}/{message_id}"
                if channel_id == origin.channel_id
                else "I couldn't post here, so your results went to your DMs."
            )
            try:
                await self._edit_reply(job, Reply(content=f"✅ Done: {where}"), final=True)
            except discord.HTTPException as exc:
                log.warning("job=%s could not point the old reply at the results (%s)", job.id, exc.status)
        return posted[1] if posted else None

    async def _find_posted(self, job: Job, part: ResultPart) -> int | None:
        """The bot's own message for this part among the channel's recent ones, if a crash came after the post.

        Discord forgets nonces after a few minutes; the job id in the embed footer (or the part's text) does not.
        """
        me = self.client.user
        if me is None:
            return None
        nonce = delivery_nonce(job.id, part.index)
        marker = f"job {job.id}"
        try:
            async for message in self._channel(job).history(limit=HISTORY_LOOKBACK):
                if message.author.id != me.id:
                    continue
                footers = [e.footer.text or "" for e in message.embeds if e.footer]
                if message.nonce == nonce or (
                    message.content == part.reply.content if part.index > 0 else any(marker in f for f in footers)
                ):
                    log.info("job=%s part %d was posted before a restart; not posting again", job.id, part.index)
                    return message.id
        except discord.HTTPException as exc:  # no history access: the nonce still stops a quick repeat
            log.warning("job=%s could not read the channel's recent messages (%s)", job.id, exc.status)
        return None

    async def _post_new(
        self, job: Job, reply: Reply, part: list[ResultFile], *, mention: bool, nonce: str
    ) -> tuple[int, int] | None:
        """Post a new message; (channel id, message id), or None when no route worked. The channel route with an
        enforced nonce first, so a post repeated after a crash returns the message that already exists; the
        interaction webhook or a DM when the bot may not post in the channel."""
        content = reply.content
        mentions = discord.AllowedMentions.none()
        if mention:
            content = f"<@{job.origin.user_id}> {content}".strip()
            mentions = discord.AllowedMentions(users=[discord.Object(job.origin.user_id)], everyone=False, roles=False)
        embed = to_embed(reply.embed) if reply.embed else None
        # a job made from a result answers it, also when its own reply is gone and the result is posted anew
        answers = job.parent_message_id if job.origin.reply_via == "channel" else None
        reference = (
            discord.MessageReference(message_id=answers, channel_id=job.origin.channel_id, fail_if_not_exists=False)
            if answers is not None
            else None
        )
        try:
            sent = await self._channel(job).send(
                content=content,
                embeds=[embed] if embed else [],
                files=to_files(part),
                allowed_mentions=mentions,
                nonce=nonce,
                view=reply_view(job.id, reply) or discord.utils.MISSING,
                reference=reference,  # type: ignore[arg-type]  # None: no reply (discord.py takes it)
                mention_author=False,
            )
            return job.origin.channel_id, sent.id
        except discord.Forbidden:
            log.warning("job=%s guild=%s cannot post in channel=%s", job.id, job.origin.guild_id, job.origin.channel_id)
        if self._token_usable(job):
            try:
                msg = await self._webhook(job).send(
                    content=content,
                    embed=embed or discord.utils.MISSING,
                    files=to_files(part),
                    wait=True,
                    allowed_mentions=mentions,
                    view=reply_view(job.id, reply) or discord.utils.MISSING,
                )
                return job.origin.channel_id, msg.id
            except discord.HTTPException as exc:
                if exc.status != 401 and exc.code not in TOKEN_ERRORS:
                    raise
                self._dead_tokens.add(job.id)
        return await self._dm(job, reply, part, nonce)

    async def _dm(self, job: Job, reply: Reply, part: list[ResultFile], nonce: str) -> tuple[int, int] | None:
        part, _ = await _fit(part, DM_UPLOAD_LIMIT, job.options.output_format)  # a server's boost doesn't apply
        try:
            user = await self.client.fetch_user(job.origin.user_id)
            where = f"I couldn't post in <#{job.origin.channel_id}>"
            sent = await user.send(
                content=f"{where}; here are your results." if reply.embed else f"{where}:\n{reply.content}"[:2000],
                embeds=[to_embed(reply.embed)] if reply.embed else [],
                files=to_files(part),
                nonce=nonce,
            )
            return sent.channel.id, sent.id
        except discord.HTTPException as exc:
            log.warning(
                "job=%s DM fallback failed too (%s %s); results stay in the data dir", job.id, exc.status, exc.code
            )
            return None


async def _fit(
    files: Sequence[ResultFile], limit: int, output_format: OutputFormat
) -> tuple[list[ResultFile], list[str]]:
    """The files re-encoded where needed to fit ``limit`` bytes each, and a note for each one that was."""
    fitted: list[ResultFile] = []
    notes: list[str] = []
    for file in files:
        data, fmt = await asyncio.to_thread(
            images.fit_upload, file.data, limit_bytes=limit, output_format=output_format
        )
        if len(data) != len(file.data):
            notes.append(f"{file.filename} was re-encoded to fit Discord's {limit // (1024 * 1024)} MB upload limit.")
        name = file.filename.rsplit(".", 1)[0] + (".png" if fmt == "png" else ".jpg")
        fitted.append(ResultFile(filename=name, data=data, spoiler=file.spoiler))
    return fitted, notes


def _with_extra(embed: EmbedData, extra: str) -> EmbedData:
    return EmbedData(
        title=embed.title,
        description=f"{embed.description}\n{extra}"[:4096],
        colour=embed.colour,
        fields=embed.fields,
        footer=embed.footer,
    )

"""Job progress to Discord messages: edits within each message's limit and the bot's request budget, results and
new steps first, uploads within limits, channel routes once the token is gone. It never writes a job's state."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import io
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import aiohttp
import discord

from bot import images
from bot.config import UiSettings
from bot.models import Job, OutputFormat, utcnow
from bot.pacing import Priority, RequestBudget, SlidingWindow, edit_window, prepaid, request_priority
from bot.progress import DeliveryError, EmbedData, Reply, ResultFile, ResultPart
from cogs.buttons import CancelButton

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 24 * 1024 * 1024  # Discord caps a whole request at 25 MiB; keep room for the JSON part
MAX_FILES_PER_MESSAGE = 10
DM_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit, the one DMs get
TOKEN_ERRORS = frozenset({50027, 10015})  # invalid webhook token, unknown webhook
GONE_ERRORS = frozenset({10008, 10003})  # unknown message, unknown channel
FINAL_TRIES = 3  # edits of a failed or cancelled job's reply before its text is posted anew
FINAL_RETRY_S = 1.0
FINAL_PART = 999  # the nonce of a final text posted anew
HISTORY_LOOKBACK = 50  # the bot's recent messages searched for a part posted before a crash
ENDED_MEMORY = 10_000  # ended jobs remembered so that a late progress update is dropped


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


def describe(exc: BaseException) -> str:
    """A failure in a log line: Discord's status and code, or the network error's kind (never a URL)."""
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def part_text(job_id: str, index: int, total: int) -> str:
    """The text of a result's further messages; the job id in it finds the message again after a crash."""
    return f"Results {index + 1}/{total} · job {job_id}"


def to_embed(data: EmbedData) -> discord.Embed:
    embed = discord.Embed(title=data.title, description=data.description[:4096], colour=data.colour)
    for name, value in data.fields:
        embed.add_field(name=name, value=value, inline=True)
    if data.footer:
        embed.set_footer(text=data.footer)
    return embed


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))  # the one definition; its clicks are handled statelessly after restarts
    return view


def to_files(files: Sequence[ResultFile]) -> list[discord.File]:
    return [discord.File(io.BytesIO(f.data), filename=f.filename, spoiler=f.spoiler) for f in files]


@dataclass
class _Editor:
    """The one writer of one job's reply: the newest wanted reply, the one shown, and the reply's edit window."""

    job: Job
    wanted: Reply | None = None
    shown: Reply | None = None
    shown_at: float = float("-inf")
    window: SlidingWindow = field(default_factory=SlidingWindow)
    task: asyncio.Task[None] | None = None  # the one edit under way
    due_at: float | None = None  # when it waits in the line of position updates: the moment it may go out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordNotifier:
    """Implements ``bot.progress.JobNotifier`` for a discord.py client."""

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
    ) -> None:
        self.client = client
        self.ui = ui
        self.budget = budget
        self.max_request_bytes = max_request_bytes
        self.monotonic = monotonic
        self.now = now
        self.sleep = sleep
        self._editors: dict[str, _Editor] = {}
        # Position updates wait here, by the moment they may go out: the stalest first, as the budget allows.
        self._due: list[tuple[float, int, str]] = []
        self._due_order = itertools.count()
        self._due_changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._dead_tokens: set[str] = set()
        # Jobs whose last text is out: a progress update computed before they ended must not land after it.
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()

    # routing

    def _token_usable(self, job: Job) -> bool:
        if job.id in self._dead_tokens:
            return False
        return self.now() < job.origin.token_expires_at - timedelta(seconds=self.ui.token_margin_s)

    def _webhook(self, job: Job) -> discord.Webhook:
        token = job.origin.interaction_token.get_secret_value()
        return discord.Webhook.partial(job.origin.application_id, token, client=self.client)

    def _channel(self, job: Job) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(job.origin.channel_id, guild_id=job.origin.guild_id)

    async def _edit_reply(
        self,
        job: Job,
        reply: Reply,
        *,
        files: Sequence[ResultFile] = (),
        final: bool = False,
        via_channel: bool = True,
    ) -> bool:
        """Edit the job's reply by the freshest working route; False if it cannot be reached. Without
        ``via_channel`` only the interaction token is tried: False as well once it is dead."""
        content = reply.content or None
        embed = to_embed(reply.embed) if reply.embed else None
        view = cancel_view(job.id) if reply.cancel_button else None
        replace_files = bool(files) or final
        if self._token_usable(job):
            try:
                # "@original" addresses the reply when its id is unknown (the defer answer lacked it)
                message_id = cast(int, job.origin.message_id or "@original")
                with self._editing(job):
                    await self._webhook(job).edit_message(
                        message_id,
                        content=content,
                        embed=embed,
                        view=view,
                        attachments=to_files(files) if replace_files else discord.utils.MISSING,
                    )
                return True
            except discord.HTTPException as exc:
                if exc.status != 401 and exc.code not in TOKEN_ERRORS:
                    return self._gone_or_raise(job, exc)
                log.info("job=%s interaction token expired; switching to the channel route", job.id)
                self._dead_tokens.add(job.id)
                if (editor := self._editors.get(job.id)) is not None:
                    editor.window = SlidingWindow()  # the channel route is a bucket of its own
        if not via_channel:
            return False
        if job.origin.message_id is None:
            log.warning("job=%s reply id unknown after token expiry; cannot edit it", job.id)
            return False
        try:
            with self._editing(job):
                await (
                    self._channel(job)
                    .get_partial_message(job.origin.message_id)
                    .edit(
                        content=content,
                        embed=embed,
                        view=view,
                        attachments=to_files(files) if replace_files else discord.utils.MISSING,
                    )
                )
            return True
        except discord.HTTPException as exc:
            return self._gone_or_raise(job, exc)

    @contextlib.contextmanager
    def _editing(self, job: Job) -> Iterator[None]:
        """One edit of the reply: it counts in the message's window, which learns from Discord's answer."""
        editor = self._editors.get(job.id)
        window = editor.window if editor is not None else SlidingWindow()
        window.take(self.monotonic())
        token = edit_window.set(window)
        try:
            yield
        finally:
            edit_window.reset(token)

    def _gone_or_raise(self, job: Job, exc: discord.HTTPException) -> bool:
        if isinstance(exc, discord.Forbidden) or exc.code in GONE_ERRORS or exc.status == 404:
            log.warning("job=%s reply not reachable (%s %s)", job.id, exc.status, exc.code)
            return False
        raise exc

    # progress

    def _end(self, job_id: str) -> None:
        self._ended[job_id] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _editor(self, job: Job) -> _Editor:
        editor = self._editors.get(job.id)
        if editor is None:
            editor = self._editors[job.id] = _Editor(job=job)
        editor.job = job
        return editor

    async def update(self, job: Job, reply: Reply) -> None:
        if job.id in self._ended:
            return
        editor = self._editor(job)
        editor.wanted = reply
        self._schedule(editor)

    def _schedule(self, editor: _Editor) -> None:
        """When the wanted reply goes out: a new step at once (within the message's window), a new position when
        the line of position updates reaches it."""
        if editor.task is not None or editor.wanted is None or editor.wanted == editor.shown:
            return  # an edit under way looks again when it ends
        if editor.shown is None or editor.wanted.stage != editor.shown.stage:
            editor.task = asyncio.create_task(
                self._send(editor, Priority.STATE), name=f"fluxpaint-edit-{editor.job.id}"
            )
            editor.task.add_done_callback(self._log_failure)
        else:
            # a job that moved forward may go sooner than planned: nearer the front, staleness counts for more
            at = editor.shown_at + editor.wanted.refresh_s
            if editor.due_at is None or at < editor.due_at:
                self._queue(editor, at)

    def _queue(self, editor: _Editor, at: float) -> None:
        editor.due_at = at
        heapq.heappush(self._due, (at, next(self._due_order), editor.job.id))
        self._due_changed.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="fluxpaint-position-updates")
            self._dispatcher.add_done_callback(self._log_failure)

    @staticmethod
    def _log_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("edit task %s failed", task.get_name(), exc_info=exc)

    async def _dispatch(self) -> None:
        """The one sender of position updates: the stalest due one whenever the budget has room, never more."""
        while True:
            editor = await self._next_due()
            await self.budget.acquire(Priority.PROGRESS)
            editor.due_at = None
            if editor.task is not None or editor.wanted is None or editor.wanted == editor.shown:
                self._schedule(editor)
                continue
            editor.task = asyncio.create_task(
                self._send(editor, Priority.PROGRESS, paid=True), name=f"fluxpaint-edit-{editor.job.id}"
            )
            editor.task.add_done_callback(self._log_failure)

    async def _next_due(self) -> _Editor:
        while True:
            now = self.monotonic()
            while self._due and self._due[0][0] <= now:
                at, _, job_id = heapq.heappop(self._due)
                editor = self._editors.get(job_id)
                if editor is None or editor.due_at != at:
                    continue  # gone, or queued again for another moment
                if editor.task is not None or editor.wanted is None or editor.wanted == editor.shown:
                    editor.due_at = None
                    continue
                ready = max(editor.shown_at + editor.wanted.refresh_s, editor.window.free_for(Priority.PROGRESS, now))
                if ready > now:
                    self._queue(editor, ready)
                    continue
                return editor
            self._due_changed.clear()
            timers: list[asyncio.Future[object]] = [asyncio.ensure_future(self._due_changed.wait())]
            if self._due:
                timers.append(asyncio.ensure_future(self.sleep(self._due[0][0] - now)))
            try:
                await asyncio.wait(timers, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for timer in timers:
                    timer.cancel()

    async def _send(self, editor: _Editor, priority: Priority, *, paid: bool = False) -> None:
        """One edit of the job's reply to the newest wanted text, within the message's window."""
        request_priority.set(priority)  # this task's own context: the budget's trace reads it
        prepaid.set(paid)
        try:
            async with editor.lock:
                await self._in_window(editor, priority)
                reply = editor.wanted
                if reply is None or reply == editor.shown:
                    return
                try:
                    reached = await self._edit_reply(editor.job, reply)
                except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning("job=%s edit failed (%s); the next update tries again", editor.job.id, describe(exc))
                    return
                editor.shown, editor.shown_at = reply, self.monotonic()
                if not reached:
                    editor.wanted = None
        finally:
            if editor.task is asyncio.current_task():
                editor.task = None
            if editor.job.id not in self._ended:
                self._schedule(editor)

    async def _settle(self, editor: _Editor) -> None:
        """Let an edit under way finish rather than cancel it: discord.py's webhook adapter can keep its per-webhook
        lock forever when a request is cancelled during its rate-limit sleep."""
        if editor.task is not None and not editor.task.done() and editor.task is not asyncio.current_task():
            await asyncio.wait([editor.task])

    async def forget(self, job_id: str) -> None:
        self._end(job_id)
        editor = self._editors.pop(job_id, None)
        self._dead_tokens.discard(job_id)
        if editor is not None:
            await self._settle(editor)  # the last wanted text (failed, cancelled) still goes out

    async def close(self) -> None:
        tasks = [e.task for e in self._editors.values() if e.task is not None and not e.task.done()]
        if self._dispatcher is not None:
            tasks.append(self._dispatcher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _in_window(self, editor: _Editor, priority: Priority = Priority.RESULT) -> None:
        delay = editor.window.free_for(priority, self.monotonic()) - self.monotonic()
        if delay > 0:
            await self.sleep(delay)

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
                    reached = await self._edit_reply(job, reply)
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
            reply = Reply(content=reply.content, embed=_with_extra(reply.embed, extra))
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

    async def _post_part(self, editor: _Editor, part: ResultPart, *, maybe_posted: bool) -> int | None:
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
        try:
            sent = await self._channel(job).send(
                content=content,
                embeds=[embed] if embed else [],
                files=to_files(part),
                allowed_mentions=mentions,
                nonce=nonce,
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

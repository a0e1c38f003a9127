"""One job's reply on Discord: the routes to it (the interaction token, then the channel) and the pacing of its
edits (each message's window, the bot's request budget, position updates in the order of their staleness)."""

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
from typing import Any, cast

import aiohttp
import discord

from bot.config import UiSettings
from bot.files import JobFiles
from bot.models import Job, utcnow
from bot.pacing import Priority, RequestBudget, SlidingWindow, edit_window, prepaid, request_priority
from bot.progress import EmbedData, Reply, ResultFile
from cogs.buttons import CancelButton
from cogs.iterate import result_view
from cogs.paint import PaintButton

log = logging.getLogger(__name__)

TOKEN_ERRORS = frozenset({50027, 10015})  # invalid webhook token, unknown webhook
GONE_ERRORS = frozenset({10008, 10003})  # unknown message, unknown channel
ENDED_MEMORY = 10_000  # ended jobs remembered so that a late progress update is dropped
EDIT_RETRY_S = 5.0  # a failed edit is tried again after this (with the newest text), not at once


def describe(exc: BaseException) -> str:
    """A failure in a log line: Discord's status and code, or the network error's kind (never a URL)."""
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def to_embed(data: EmbedData) -> discord.Embed:
    embed = discord.Embed(title=data.title, description=data.description[:4096], colour=data.colour)
    for name, value in data.fields:
        embed.add_field(name=name, value=value, inline=True)
    if data.footer:
        embed.set_footer(text=data.footer)
    return embed


def reply_view(job_id: str, reply: Reply) -> discord.ui.View | None:
    """The reply's buttons: Cancel while the job runs, the result's buttons once it is done (one definition of
    each, in ``cogs``; their clicks are handled statelessly, so they work after restarts)."""
    if reply.cancel_button:
        view = discord.ui.View(timeout=None)
        if reply.paint_button:
            view.add_item(PaintButton(job_id))
        view.add_item(CancelButton(job_id))
        return view
    if reply.result_buttons is not None:
        return result_view(job_id, reply.result_buttons, repaint=reply.repaint_button)
    return None


def to_files(files: Sequence[ResultFile]) -> list[discord.File]:
    return [discord.File(io.BytesIO(f.data), filename=f.filename, spoiler=f.spoiler) for f in files]


@dataclass
class ReplyState:
    """The one writer of one job's reply: the newest wanted reply, the one shown, and the reply's edit window."""

    job: Job
    wanted: Reply | None = None
    shown: Reply | None = None
    shown_at: float = float("-inf")
    window: SlidingWindow = field(default_factory=SlidingWindow)
    task: asyncio.Task[None] | None = None  # the one edit under way
    sending: bool = False  # its request is on the wire (until then it only waits, and may be called off)
    due_at: float | None = None  # when it waits in the line of position updates: the moment it may go out
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ReplyEditor:
    """Keeps each job's reply showing its newest state, within Discord's limits; ``DiscordNotifier`` adds results."""

    def __init__(
        self,
        client: discord.Client,
        ui: UiSettings,
        *,
        budget: RequestBudget,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        files: JobFiles | None = None,
    ) -> None:
        self.client = client
        self.ui = ui
        self.budget = budget
        self.files = files  # where a reply's mask preview is read; None shows none
        self.monotonic = monotonic
        self.now = now
        self.sleep = sleep
        self._editors: dict[str, ReplyState] = {}
        # Position updates wait here, by the moment they may go out: the stalest first, as the budget allows.
        self._due: list[tuple[float, int, str]] = []
        self._due_order = itertools.count()
        self._due_changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False
        self._dead_tokens: set[str] = set()
        # Jobs whose last text is out: a progress update computed before they ended must not land after it.
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()

    # routing

    def _token_usable(self, job: Job) -> bool:
        if job.origin.reply_via == "channel" or job.id in self._dead_tokens:
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
        replace_files = bool(files) or final

        def fields() -> dict[str, Any]:  # anew for each route: a file is consumed by the request that sends it
            return {
                "content": reply.content or None,
                "embed": to_embed(reply.embed) if reply.embed else None,
                "view": reply_view(job.id, reply),
                "attachments": to_files(files) if replace_files else discord.utils.MISSING,
            }

        if self._token_usable(job):
            try:
                # "@original" addresses the reply when its id is unknown (the defer answer lacked it)
                message_id = cast(int, job.origin.message_id or "@original")
                with self._editing(job):
                    await self._webhook(job).edit_message(message_id, **fields())
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
                await self._channel(job).get_partial_message(job.origin.message_id).edit(**fields())
            return True
        except discord.HTTPException as exc:
            return self._gone_or_raise(job, exc)

    @contextlib.contextmanager
    def _editing(self, job: Job) -> Iterator[None]:
        """One edit of the reply: it counts in the message's window once the budget lets it go (``budget_trace``),
        and the window learns from Discord's answer."""
        editor = self._editors.get(job.id)
        token = edit_window.set(editor.window if editor is not None else SlidingWindow())
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

    def _editor(self, job: Job) -> ReplyState:
        editor = self._editors.get(job.id)
        if editor is None:
            editor = self._editors[job.id] = ReplyState(job=job)
        editor.job = job
        return editor

    async def update(self, job: Job, reply: Reply) -> None:
        if job.id in self._ended:
            return
        editor = self._editor(job)
        editor.wanted = reply
        self._schedule(editor)

    def _schedule(self, editor: ReplyState) -> None:
        """When the wanted reply goes out: a new step at once (within the message's window), a new position when
        the line of position updates reaches it."""
        if self._closed or editor.task is not None or editor.wanted is None or editor.wanted == editor.shown:
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

    def _queue(self, editor: ReplyState, at: float) -> None:
        if self._closed:
            return
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

    async def _next_due(self) -> ReplyState:
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

    async def _send(self, editor: ReplyState, priority: Priority, *, paid: bool = False) -> None:
        """One edit of the job's reply to the newest wanted text, within the message's window."""
        request_priority.set(priority)  # this task's own context: the budget's trace reads it
        failed = False
        try:
            waited = editor.lock.locked()
            async with editor.lock:
                waited = await self._in_window(editor, priority) or waited
                # room taken before a wait is stale by now: the request asks the budget again
                prepaid.set(paid and not waited)
                reply = editor.wanted
                if reply is None or reply == editor.shown:
                    return
                preview = await self._preview(editor.job, reply, editor.shown)
                editor.sending = True
                try:
                    reached = await self._edit_reply(editor.job, reply, files=preview)
                except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning(
                        "job=%s edit failed (%s); trying again in %.0f s", editor.job.id, describe(exc), EDIT_RETRY_S
                    )
                    failed = True
                    return
                finally:
                    editor.sending = False
                editor.shown, editor.shown_at = reply, self.monotonic()
                if not reached:
                    editor.wanted = None
        finally:
            if editor.task is asyncio.current_task():
                editor.task = None
            if failed and editor.job.id not in self._ended:
                self._queue(editor, self.monotonic() + EDIT_RETRY_S)  # not at once: a refusal would repeat forever
            elif editor.job.id not in self._ended:
                self._schedule(editor)

    async def _preview(self, job: Job, reply: Reply, shown: Reply | None) -> tuple[ResultFile, ...]:
        """The mask preview to upload with this edit: only when it is new to the reply (the message keeps its
        attachments through later edits), and none when its file is gone."""
        if reply.preview is None or self.files is None or (shown is not None and shown.preview == reply.preview):
            return ()
        try:
            data = await asyncio.to_thread(self.files.read, job.id, reply.preview)
        except (OSError, ValueError) as exc:
            log.warning("job=%s mask preview unreadable (%s); the reply goes without it", job.id, type(exc).__name__)
            return ()
        return (ResultFile(reply.preview, data),)

    async def _settle(self, editor: ReplyState) -> None:
        """Make way for a result or a final text: an edit still waiting for its turn is called off; one on the wire
        is let finish, because discord.py's webhook adapter can keep its per-webhook lock forever when a request
        is cancelled during its rate-limit sleep."""
        task = editor.task
        if task is None or task.done() or task is asyncio.current_task():
            return
        if not editor.sending:
            task.cancel()
        await asyncio.wait([task])

    async def forget(self, job_id: str) -> None:
        self._end(job_id)
        editor = self._editors.pop(job_id, None)
        self._dead_tokens.discard(job_id)
        if editor is not None:
            await self._settle(editor)  # the last wanted text (failed, cancelled) still goes out

    async def close(self) -> None:
        self._closed = True  # a cancelled edit must not start another on its way out
        tasks = [e.task for e in self._editors.values() if e.task is not None and not e.task.done()]
        if self._dispatcher is not None:
            tasks.append(self._dispatcher)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _in_window(self, editor: ReplyState, priority: Priority = Priority.RESULT) -> bool:
        """Wait until the reply's window has room for an edit of ``priority``; whether that took a wait."""
        delay = editor.window.free_for(priority, self.monotonic()) - self.monotonic()
        if delay > 0:
            await self.sleep(delay)
        return delay > 0

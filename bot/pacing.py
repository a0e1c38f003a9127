"""Discord's rate limits kept on our side: an edit window per message and one request budget for the whole bot.

Pure bookkeeping with an injected clock; the only I/O is the aiohttp trace that holds a request until the budget
has room for it, counts Discord's 429s and times the first answers to commands (``budget_trace``). Nothing here
knows what a job is.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Literal, Protocol

import aiohttp

EDITS_PER_WINDOW = 5  # Discord's per-message edit limit when no header has said otherwise: 5 per 5 s
EDIT_WINDOW_S = 5.0
BUDGET_WINDOW_S = 1.0  # Discord's global limit counts requests per second
PROGRESS_SHARE = 0.75  # position updates may use this much of the budget: the rest is kept for results and states
DISCORD_EPOCH_MS = 1_420_070_400_000  # a snowflake's top bits count milliseconds from 2015-01-01


class Priority(enum.IntEnum):
    """Who goes first when the budget is short: lower values first."""

    RESULT = 0  # results, errors and answers to a member's command
    STATE = 1  # a job moved on: waiting → queued → generating
    PROGRESS = 2  # the same state, a new position or estimate


# Edits of a message's window each priority leaves unused: one always, because discord.py's webhook adapter sleeps
# out a bucket it sees exhausted before it returns (a result would wait 5 s for nothing); one more for a result
# above a new step, and one more for a new step above a new position.
KEEP_FOR_LATER = {Priority.RESULT: 1, Priority.STATE: 2, Priority.PROGRESS: 3}


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds: the way Discord counts a message's edits."""

    def __init__(self, limit: int = EDITS_PER_WINDOW, window_s: float = EDIT_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._blocked_until = float("-inf")

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()

    def free_at(self, now: float, *, limit: int | None = None) -> float:
        """The earliest moment, ``now`` or later, at which one more event fits (under ``limit`` if given)."""
        self._expire(now)
        cap = self.limit if limit is None else limit
        at = now
        if len(self._times) >= cap:
            # the (len - cap)-th oldest must leave the window before the count drops below the cap
            at = self._times[len(self._times) - cap] + self.window_s
        return max(at, self._blocked_until)

    def free_for(self, priority: Priority, now: float) -> float:
        """As ``free_at``, leaving room in the window for the priorities above (``KEEP_FOR_LATER``), so that a
        flurry of position updates never makes a result wait."""
        return self.free_at(now, limit=max(1, self.limit - KEEP_FOR_LATER[priority]))

    def take(self, now: float) -> None:
        self._times.append(now)

    def learn(self, limit: int, remaining: int, reset_after_s: float, now: float, *, refused: bool = False) -> None:
        """Adopt what Discord's X-RateLimit-* headers said about this message's bucket; ``refused``: they came with a
        429, after which discord.py sends the edit again once the bucket resets."""
        if limit <= 0:
            return
        self.limit = limit
        if remaining == limit - 1 and reset_after_s > 0 and not refused:
            self.window_s = reset_after_s  # the first edit of a window: the whole window lies ahead
        if remaining <= 0:
            self._blocked_until = max(self._blocked_until, now + reset_after_s)
        if refused:
            self._times.append(now + reset_after_s)  # the retry counts in Discord's window from then


class RequestBudget:
    """At most ``rate_per_s`` requests in any second for the whole bot; waiting requests go by priority, then in
    the order they came. Acknowledgements cannot wait (Discord's 3 s deadline) and are counted with ``note``."""

    def __init__(self, rate_per_s: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.clock = clock
        self._window = SlidingWindow(rate_per_s, BUDGET_WINDOW_S)
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.waited = 0  # requests that had to wait for room

    def limit(self, priority: Priority) -> int:
        share = PROGRESS_SHARE if priority is Priority.PROGRESS else 1.0
        return max(1, int(self.rate_per_s * share))

    def free_at(self, priority: Priority) -> float:
        return self._window.free_at(self.clock(), limit=self.limit(priority))

    def _take(self) -> None:
        self._window.take(self.clock())
        self.sent += 1

    def note(self) -> None:
        """Count a request that was sent without waiting."""
        self._take()

    def try_take(self, priority: Priority) -> bool:
        """Take room for one request now if there is some and nobody waits ahead of it."""
        if self._waiting or self.free_at(priority) > self.clock():
            return False
        self._take()
        return True

    async def acquire(self, priority: Priority) -> None:
        """Return once one request of ``priority`` may go out."""
        if self.try_take(priority):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (int(priority), next(self._order), future))
        self.waited += 1
        self.grant()
        try:
            await future
        finally:
            if not future.done():
                future.cancel()  # left the line (cancelled): grant() drops it
            self.grant()

    def grant(self) -> None:
        """Let waiting requests go while there is room, and set one timer for the next moment there will be."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            priority, _, future = self._waiting[0]
            if future.done():
                heapq.heappop(self._waiting)
                continue
            at = self.free_at(Priority(priority))
            delay = at - self.clock()
            if delay > 0:
                self._timer = asyncio.get_running_loop().call_later(delay, self.grant)
                return
            heapq.heappop(self._waiting)
            self._take()
            future.set_result(None)


# What the notifier tells the trace about the request it is making, through the task's context.
request_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("request_priority", default=Priority.RESULT)
prepaid: contextvars.ContextVar[bool] = contextvars.ContextVar("prepaid", default=False)
edit_window: contextvars.ContextVar[SlidingWindow | None] = contextvars.ContextVar("edit_window", default=None)


DiscordRoute = Literal["interaction", "webhook", "message", "other"]
RateLimitScope = Literal["user", "global", "shared", "unknown"]
SCOPES: dict[str, RateLimitScope] = {"user": "user", "global": "global", "shared": "shared"}


class DiscordMetrics(Protocol):
    """Where the trace reports what it saw (``bot.metrics.Metrics``)."""

    def discord_429(self, route: DiscordRoute, scope: RateLimitScope) -> None: ...

    def observe_first_response_s(self, seconds: float) -> None: ...


def budget_trace(
    budget: RequestBudget,
    clock: Callable[[], float] = time.monotonic,
    *,
    metrics: DiscordMetrics | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> aiohttp.TraceConfig:
    """An aiohttp trace for discord.py's session: each request waits for the budget before it is sent (every route
    and every retry discord.py makes, not only ours), and a message's edit window learns from Discord's headers.

    With ``metrics``: every 429 is counted by the kind of route and the limit's scope (never the ids or the token in
    the path), and each acknowledgement's answer is timed from the interaction's creation (its snowflake) — a late
    one that Discord refuses (404 after 3 s) too, so slowness shows; a 429 is timed on its retry.
    """
    trace = aiohttp.TraceConfig()

    async def on_start(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        if params.headers.get("Upgrade", "").lower() == "websocket":
            return  # the gateway: not a REST request
        if is_acknowledgement(params.url.path):
            budget.note()  # Discord's 3 s deadline: it cannot wait, but later requests make room for it
        elif prepaid.get():
            prepaid.set(False)  # the notifier took the room for this one already
        else:
            await budget.acquire(request_priority.get())
        window = edit_window.get()
        if window is not None and params.method == "PATCH":
            window.take(clock())  # counted as it leaves, after any wait for the budget

    async def on_end(
        _session: aiohttp.ClientSession, _ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        refused = params.response.status == 429
        if metrics is not None:
            path = params.url.path
            if refused:
                metrics.discord_429(route_kind(path), limit_scope(params.response.headers))
            elif is_acknowledgement(path) and (created := interaction_created_s(path)) is not None:
                metrics.observe_first_response_s(wall_clock() - created)
        window = edit_window.get()
        if window is not None and params.method == "PATCH":
            learn(window, params.response.headers, clock(), refused=refused)

    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    return trace


def is_acknowledgement(path: str) -> bool:
    """``POST /interactions/{id}/{token}/callback``: the first answer to a command or a click."""
    return "/interactions/" in path and path.endswith("/callback")


def interaction_created_s(path: str) -> float | None:
    """When the interaction in ``/interactions/{id}/{token}/…`` was created (Unix seconds), read from its id."""
    parts = path.split("/")
    try:
        snowflake = parts[parts.index("interactions") + 1]
    except (ValueError, IndexError):
        return None
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000 if snowflake.isdigit() else None


def route_kind(path: str) -> DiscordRoute:
    """A bounded name for a Discord REST path: ``/interactions/…`` (an acknowledgement), ``/webhooks/…`` (the
    interaction's replies and follow-ups), ``/channels/…/messages…``, or anything else."""
    parts = path.split("/")
    if "interactions" in parts:
        return "interaction"
    if "webhooks" in parts:
        return "webhook"
    if "channels" in parts and "messages" in parts:
        return "message"
    return "other"


def limit_scope(headers: Mapping[str, str]) -> RateLimitScope:
    """``X-RateLimit-Scope`` of a 429 (user, global or shared); ``unknown`` without it (Cloudflare's own 429s)."""
    return SCOPES.get(headers.get("X-RateLimit-Scope", "").lower(), "unknown")


def learn(window: SlidingWindow, headers: Mapping[str, str], now: float, *, refused: bool = False) -> None:
    """Feed a message's window from X-RateLimit-* headers, when they are all there and readable."""
    try:
        limit = int(headers["X-RateLimit-Limit"])
        remaining = int(headers["X-RateLimit-Remaining"])
        reset_after = float(headers["X-RateLimit-Reset-After"])
    except (KeyError, ValueError):
        return
    window.learn(limit, remaining, reset_after, now, refused=refused)

"""Discord's limits on our side: a message's edit window, the bot's request budget and the trace that applies it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bot.pacing import (
    Priority,
    RequestBudget,
    SlidingWindow,
    budget_trace,
    edit_window,
    is_acknowledgement,
    learn,
    prepaid,
)
from tests.fakes.discord import ManualClock


def test_a_window_allows_its_limit_then_waits_for_the_oldest_to_leave() -> None:
    window = SlidingWindow(5, 5.0)
    for t in (0.0, 0.5, 1.0, 1.5, 2.0):
        assert window.free_at(t) == t
        window.take(t)
    assert window.free_at(2.1) == 5.0  # the edit at 0.0 leaves the window at 5.0
    window.take(5.0)
    assert window.free_at(5.1) == 5.5


@pytest.mark.parametrize(
    ("edits_in_window", "priority", "waits"),
    [
        (2, Priority.PROGRESS, True),  # a position update leaves three of five for what matters more
        (1, Priority.PROGRESS, False),
        (2, Priority.STATE, False),
        (3, Priority.STATE, True),
        (3, Priority.RESULT, False),  # a result goes out after a flurry of position updates
        (4, Priority.RESULT, True),  # never the fifth: discord.py would sleep out the bucket before returning
    ],
    ids=lambda v: v.name if isinstance(v, Priority) else str(v),
)
def test_lower_priorities_leave_room_in_a_message_window(edits_in_window: int, priority: Priority, waits: bool) -> None:
    window = SlidingWindow(5, 5.0)
    for n in range(edits_in_window):
        window.take(n * 0.1)
    assert (window.free_for(priority, 1.0) > 1.0) is waits


def test_a_window_learns_discords_limit_and_an_exhausted_bucket() -> None:
    window = SlidingWindow()
    learn(window, {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset-After": "3.0"}, 10.0)
    assert (window.limit, window.window_s) == (2, 3.0)
    learn(window, {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "2.5"}, 11.0)
    assert window.free_at(11.0) == 13.5  # whatever our own count says, Discord's word holds
    learn(window, {"X-RateLimit-Limit": "oops"}, 12.0)  # unreadable headers change nothing
    assert window.limit == 2


def test_only_the_interaction_callback_counts_as_an_acknowledgement() -> None:
    assert is_acknowledgement("/api/v10/interactions/123/tok/callback")
    assert not is_acknowledgement("/api/v10/webhooks/1/tok/messages/@original")
    assert not is_acknowledgement("/api/v10/channels/1/messages")


async def test_the_budget_lets_requests_go_by_priority_then_in_order() -> None:
    clock = ManualClock(start=100.0)
    budget = RequestBudget(4, clock=clock)  # position updates may use 3 of the 4
    for _ in range(4):
        budget.note()  # four acknowledgements fill the second
    order: list[str] = []

    async def ask(name: str, priority: Priority) -> None:
        await budget.acquire(priority)
        order.append(name)

    tasks = [
        asyncio.create_task(ask("position 1", Priority.PROGRESS)),
        asyncio.create_task(ask("position 2", Priority.PROGRESS)),
        asyncio.create_task(ask("new step", Priority.STATE)),
        asyncio.create_task(ask("result", Priority.RESULT)),
    ]
    await asyncio.sleep(0)
    assert order == [] and budget.waited == 4
    clock.advance(1.0)  # the window is empty again
    budget.grant()
    await asyncio.gather(tasks[0], tasks[2], tasks[3])
    assert order == ["result", "new step", "position 1"]  # three in this second: position updates' share is full
    assert not tasks[1].done()
    clock.advance(1.0)
    budget.grant()
    await tasks[1]
    assert order == ["result", "new step", "position 1", "position 2"]
    assert budget.sent == 8


async def test_position_updates_never_take_the_last_quarter_of_the_budget() -> None:
    clock = ManualClock(start=0.0)
    budget = RequestBudget(4, clock=clock)
    assert [budget.try_take(Priority.PROGRESS) for _ in range(4)] == [True, True, True, False]
    assert budget.try_take(Priority.RESULT)
    assert not budget.try_take(Priority.RESULT)


async def test_a_cancelled_wait_leaves_the_line() -> None:
    clock = ManualClock(start=0.0)
    budget = RequestBudget(1, clock=clock)
    budget.note()
    waiter = asyncio.create_task(budget.acquire(Priority.RESULT))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    clock.advance(1.0)
    budget.grant()
    assert budget.try_take(Priority.PROGRESS)  # nobody is left ahead of it


async def test_the_trace_holds_requests_for_the_budget_and_counts_acknowledgements(aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    app = web.Application()
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(
            text="{}",
            content_type="application/json",
            headers={"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "4.0"},
        )

    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app)
    clock = ManualClock(start=0.0)
    budget = RequestBudget(2, clock=clock)
    async with aiohttp.ClientSession(trace_configs=[budget_trace(budget, clock)]) as session:
        base = str(server.make_url("/api/v10"))
        for _ in range(3):  # acknowledgements never wait, however full the second is
            async with session.post(f"{base}/interactions/1/tok/callback"):
                pass
        later = asyncio.create_task(_get(session, f"{base}/channels/1/messages"))
        while budget.waited == 0:  # noqa: ASYNC110 (the budget has no event to wait on; a few loop turns do)
            await asyncio.sleep(0)
        assert not later.done()  # held before it was sent
        assert seen.count("/api/v10/channels/1/messages") == 0
        clock.advance(1.0)
        budget.grant()
        await later

        window = SlidingWindow()
        token_w, token_p = edit_window.set(window), prepaid.set(True)
        try:
            async with session.patch(f"{base}/channels/1/messages/2"):  # prepaid: goes at once, counted once
                pass
        finally:
            edit_window.reset(token_w)
            prepaid.reset(token_p)
        assert window.limit == 3 and window.free_at(clock()) == clock() + 4.0
    assert budget.sent == 4


async def _get(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as resp:
        await resp.read()

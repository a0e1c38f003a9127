"""Building on a result against the real bot process: buttons from before a crash, and a reroll killed mid-way."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests.e2e.conftest import MakeE2E
from tests.e2e.test_process import inpaint, wait_text
from tests.fakes.discord import FakeMessage
from tests.rig import visible_text

pytestmark = pytest.mark.e2e


def replies_to(e2e, message: FakeMessage) -> list[FakeMessage]:  # type: ignore[no-untyped-def]
    return [
        m
        for m in e2e.discord.messages_in("general")
        if not m.deleted and m.message_reference and m.message_reference["message_id"] == str(message.id)
    ]


async def test_reroll_after_kill_9_is_submitted_once_and_posted_once(make_e2e: MakeE2E) -> None:
    e2e = await make_e2e(fake_fal={"hold": True})
    first = await inpaint(e2e)
    await wait_text(e2e, first, "Queued at fal")
    e2e.fal.release()
    result = await wait_text(e2e, first, "Inpainted")
    await e2e.bot.kill()  # the result's buttons outlive the process that drew them
    e2e.fal.hold = asyncio.Event()
    await e2e.bot.start()

    (reroll,) = [c for c in result.custom_ids() if c.startswith("fp:reroll:")]
    click = await e2e.discord.click(result.id, reroll, user="bob")
    await e2e.discord.wait_for(lambda: any("Queued at fal" in visible_text(m) for m in replies_to(e2e, result)), 20)
    await e2e.bot.kill()  # the reroll is at fal: it must be watched again, never sent twice
    e2e.fal.release()
    await e2e.bot.start()

    await e2e.discord.wait_for(lambda: any("Inpainted" in visible_text(m) for m in replies_to(e2e, result)), 30)
    (posted,) = replies_to(e2e, result)
    assert len(posted.attachments) == 1 and "From: [job" in visible_text(posted)
    assert len(e2e.fal.submits) == 2
    original, again = e2e.fal.submits
    assert base64.b64decode(again["image_url"].split(",")[1]) == base64.b64decode(original["image_url"].split(",")[1])
    assert "Started" in (click.original().content if click.original() else "")

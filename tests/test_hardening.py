"""The core under failure, through the fake Discord and fal: deadlines, failures that are not ours to expect,
races between writers, private refusals, and text from members shown as typed (issue 10)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from bot.models import JobState
from tests.conftest import MakeRig
from tests.fakes.discord import EPHEMERAL, FakeInteraction
from tests.rig import BotRig, fixture

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")


async def answer_to(rig: BotRig, click: FakeInteraction) -> str:
    """The ephemeral answer to a deferred click or command."""

    def answered() -> bool:
        original = click.original()
        return original is not None and not original.loading

    await rig.discord.wait_for(answered)
    original = click.original()
    assert original is not None and original.ephemeral
    return original.content


async def job_state(rig: BotRig, state: JobState, count: int = 1) -> list[Any]:
    """Wait until ``count`` jobs in the store are in ``state``; returns them."""
    assert rig.bot is not None
    store = rig.bot.service.store
    found: list[Any] = []

    async def poll() -> None:
        nonlocal found
        while True:
            rows = await store._jobs("1 = 1")
            found = [j for j in rows if j.state is state]
            if len(found) >= count:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 15)
    return found


def cdn_downloads(rig: BotRig) -> int:
    return sum(1 for r in rig.discord.requests if r.path.startswith("/cdn/"))


# 1. a job at fal has a deadline


async def test_a_job_fal_never_finishes_times_out_is_cancelled_there_and_frees_its_slot(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, fal_settings={"max_concurrent": 1, "job_timeout_s": 1.5})
    first = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice")
    await rig.wait_text(first, "Queued at fal")
    second = await rig.inpaint(COFFEE, COFFEE_MASK, user="bob")
    await rig.wait_text(second, "in this bot's queue")

    final = await rig.wait_text(first, "did not finish this job within 1.5 seconds")
    assert "Nothing was charged" in final.content
    assert rig.fal.cancels == [(next(iter(rig.fal.jobs)), "CANCELLATION_REQUESTED")]
    await rig.discord.wait_for(lambda: len(rig.fal.submits) == 2)  # the slot went to the next member at once
    assert rig.fal.submit_headers[0].get("X-Fal-Request-Timeout") == "2"


# 2. no exception leaves a job in a live state


async def test_a_result_that_cannot_be_written_fails_the_job_and_frees_the_slot(
    make_rig: MakeRig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(fal={"hold": True}, fal_settings={"max_concurrent": 1})
    first = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice")
    await rig.wait_text(first, "Queued at fal")
    (job,) = await job_state(rig, JobState.QUEUED)
    (tmp_path / "data" / "jobs" / job.id / "result-1.jpg").mkdir()  # the write of the result hits an OSError
    second = await rig.inpaint(COFFEE, COFFEE_MASK, user="bob")
    await rig.wait_text(second, "in this bot's queue")

    with caplog.at_level(logging.ERROR, logger="bot.pipeline"):
        rig.fal.release()
        final = await rig.wait_text(first, "❌")
        await rig.wait_text(second, "Inpainted")
    assert "Something went wrong on our side" in final.content and "Traceback" not in final.content
    assert any(r.exc_info and isinstance(r.exc_info[1], OSError) for r in caplog.records)
    assert len(rig.fal.submits) == 2


# 3. errors are classified once


async def test_a_result_image_that_cannot_be_decoded_fails_at_once(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(interaction, "Queued at fal")
    (request_id,) = rig.fal.jobs
    rig.fal.render_result(request_id)
    for name in list(rig.fal.files):
        rig.fal.files[name] = (b"<html>not an image</html>", "image/jpeg")
    rig.fal.release()

    final = await rig.wait_text(interaction, "fal returned an image that could not be read")
    assert rig.fal.result_calls == 1 and final.attachments == []
    downloads = [r for r in rig.fal.requests if r.path.startswith("/files/")]
    assert len(downloads) == 1  # downloaded once, not again every 30 s


async def test_a_submit_fal_turns_away_goes_back_in_line_and_runs_later(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"rate_limit_count": 1}, fal_settings={"max_retries": 0, "retry_pause_s": 0.05})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(interaction, "Inpainted", timeout=20)
    submits = [r.status for r in rig.fal.requests if r.method == "POST" and r.path.endswith("/inpainting")]
    assert submits == [429, 200]  # turned away (nothing made), then back in line and run
    assert len(rig.fal.jobs) == 1


# 4. every interaction is answered


async def test_a_cancel_whose_fal_call_fails_still_answers(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, fal_settings={"max_retries": 0, "retry_pause_s": 0.05})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: any(c.startswith("fp:cancel:") for c in reply.custom_ids()))
    rig.fal.rate_limit_count = 10_000
    click = await rig.discord.click(reply.id, reply.custom_ids()[0], user="alice")
    assert "fal could not be reached to cancel the job" in await answer_to(rig, click)
    rig.fal.rate_limit_count = 0
    rig.fal.release()
    await rig.wait_text(interaction, "Inpainted")  # the job went on


async def test_two_cancels_at_once_both_get_the_right_answer(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: any(c.startswith("fp:cancel:") for c in reply.custom_ids()))
    (button,) = reply.custom_ids()
    clicks = await asyncio.gather(
        rig.discord.click(reply.id, button, user="alice"), rig.discord.click(reply.id, button, user="mod")
    )
    answers = sorted([await answer_to(rig, c) for c in clicks])
    assert answers[0].startswith("Cancelled at fal") and "already ended (cancelled)" in answers[1], answers
    assert len(rig.fal.cancels) == 1


async def test_a_final_text_that_cannot_be_edited_in_is_posted_anew(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True, "fail_with": "Runner crashed"})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "Queued at fal")
    reply.deleted = True  # someone removed the bot's reply
    rig.fal.release()

    def posted() -> bool:
        return any("Runner crashed" in m.content for m in rig.discord.messages_in("general") if not m.deleted)

    await rig.discord.wait_for(posted)
    (message,) = [m for m in rig.discord.messages_in("general") if "Runner crashed" in m.content]
    assert message.content.startswith(f"<@{rig.discord.user_id('alice')}>")


async def test_admin_commands_acknowledge_before_anything_else(make_rig: MakeRig) -> None:
    rig = await make_rig()
    for name in ("pause", "resume", "limits"):
        command = await rig.discord.slash(f"fluxpaint {name}", user="admin")
        await answer_to(rig, command)
        assert command.callbacks[0].type == 5 and command.callbacks[0].data.get("flags") == EPHEMERAL


# 6. and 8. cheap refusals come first and are private


async def test_a_refusal_is_private_and_nothing_is_downloaded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    pause = await rig.discord.slash("fluxpaint pause", user="admin")
    await answer_to(rig, pause)

    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice")
    await rig.discord.wait_for(lambda: bool(interaction.callbacks))
    (callback,) = interaction.callbacks
    assert callback.type == 4 and callback.data["flags"] == EPHEMERAL  # answered privately, never deferred
    assert "paused" in callback.data["content"]
    assert cdn_downloads(rig) == 0 and rig.fal.submits == []
    public = [m for m in rig.discord.messages_in("general") if not m.ephemeral]
    assert public == []


async def test_the_per_member_cap_is_checked_before_any_download(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, limits={"max_jobs_per_user": 1})
    first = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice")
    await rig.wait_text(first, "Queued at fal")
    downloads = cdn_downloads(rig)

    second = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice")
    await rig.discord.wait_for(lambda: bool(second.callbacks))
    assert second.callbacks[0].type == 4 and second.callbacks[0].data["flags"] == EPHEMERAL
    assert "You already have 1 unfinished jobs" in second.callbacks[0].data["content"]
    assert cdn_downloads(rig) == downloads


# 10. text from members is text


async def test_a_prompt_with_markdown_and_mentions_shows_as_typed(make_rig: MakeRig) -> None:
    rig = await make_rig()
    prompt = "# big **bold** [free nitro](https://evil.example) @everyone"
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt=prompt)
    final = await rig.wait_text(interaction, "Inpainted")
    description = final.embeds[0]["description"]
    assert r"\# big \*\*bold\*\* \[free nitro](https://evil.example) @" + "\u200beveryone" in description
    assert not final.mention_everyone


# 9. money: the owner's ceilings, and a warning when nothing bounds the bill


async def test_admins_cannot_set_a_budget_above_the_owners_ceiling(make_rig: MakeRig) -> None:
    rig = await make_rig(budgets={"max_user_daily_usd": 1.0, "max_guild_monthly_usd": 20.0})
    above = await rig.discord.slash("fluxpaint budget", user="admin", options={"member_daily": 5.0})
    assert "allows a member daily budget of at most $1.00" in await answer_to(rig, above)
    within = await rig.discord.slash("fluxpaint budget", user="admin", options={"member_daily": 0.5})
    assert "Member daily budget: $0.500" in await answer_to(rig, within)
    limits = await rig.discord.slash("fluxpaint limits", user="admin")
    assert "Server monthly budget: $20.00" in await answer_to(rig, limits)  # no limit set: the ceiling holds


def test_a_default_budget_above_the_ceiling_stops_the_bot_at_start() -> None:
    from bot.config import BudgetSettings

    with pytest.raises(ValueError, match="above the owner's ceiling"):
        BudgetSettings(user_daily_usd=3.0, max_user_daily_usd=1.0)


@pytest.mark.parametrize(
    ("sections", "warned"),
    [({}, True), ({"access": {"guild_ids": [1]}}, False), ({"budgets": {"max_guild_monthly_usd": 10.0}}, False)],
    ids=["open-and-unbounded", "allow-listed", "ceiling"],
)
async def test_an_open_bot_without_a_budget_warns_at_start(
    make_rig: MakeRig, caplog: pytest.LogCaptureFixture, sections: dict[str, Any], warned: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.service"):
        await make_rig(**sections)
    assert any("open to every server and has no budget" in r.getMessage() for r in caplog.records) is warned


async def test_a_cancel_never_cuts_off_a_delivery_in_progress(make_rig: MakeRig) -> None:
    hold = asyncio.Event()
    hold.set()  # the reply's mask preview goes through; the result's upload is the one held
    rig = await make_rig(discord={"upload_hold": hold}, fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: rig.discord.uploads_held == 1 and bool(interaction.original().attachments))
    hold.clear()
    rig.fal.release()
    await rig.discord.wait_for(lambda: rig.discord.uploads_held == 2)  # Discord is taking the result
    reply = interaction.original()
    assert reply is not None
    (button,) = [c for c in reply.custom_ids() if c.startswith("fp:cancel:")]
    click = await rig.discord.click(reply.id, button, user="alice")
    assert "Too late: the results are already on their way" in await answer_to(rig, click)
    hold.set()
    final = await rig.wait_text(interaction, "Inpainted")
    assert len(final.attachments) == 1 and rig.fal.cancels == []


async def test_a_submit_fal_answers_500_is_failed_not_sent_again(make_rig: MakeRig) -> None:
    rig = await make_rig(
        fal={"submit_5xx_count": 1, "submit_5xx_status": 500}, fal_settings={"max_retries": 0, "retry_pause_s": 0.05}
    )
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    final = await rig.wait_text(interaction, "❌")
    assert "HTTP 500" in final.content
    submits = [r.status for r in rig.fal.requests if r.method == "POST" and r.path.endswith("/inpainting")]
    assert submits == [500]  # fal may have seen it: never sent again

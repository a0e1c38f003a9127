"""Fair use through Discord: admin commands, pauses, bans, budgets and the shared waiting line."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import MakeRig
from tests.fakes.discord import FakeInteraction, InvocationError
from tests.rig import BotRig, visible_text
from tests.test_flow import COFFEE, COFFEE_MASK, answer_to

ESTIMATE = 0.0084  # 600×400 px = 0.24 MP at 0.035 USD per megapixel


async def admin(rig: BotRig, sub: str, user: str = "admin", **options: object) -> str:
    interaction = await rig.discord.slash(f"fluxpaint {sub}", user=user, options=dict(options))
    return await answer_to(rig, interaction)


def admin_changes(limits: str) -> list[str]:
    """The "Recent admin changes" lines of ``/fluxpaint limits``, newest first, without their timestamps."""
    _, found, log = limits.partition("Recent admin changes:\n")
    assert found, limits
    return [line.split("> ", 1)[1] for line in log.splitlines()]  # "<t:…:R> <@actor> action: detail"


def prompts(rig: BotRig) -> list[str]:
    """The prompts fal received, in the order the bot sent them."""
    return [s["prompt"] for s in rig.fal.submits]


async def test_admin_commands_are_registered_for_manage_server(make_rig: MakeRig) -> None:
    rig = await make_rig()
    (group,) = [c for c in rig.discord.commands[None] if c["name"] == "fluxpaint"]
    assert group["default_member_permissions"] == str(1 << 5)  # MANAGE_GUILD
    assert group["contexts"] == [0] and group["dm_permission"] is False
    subs = {o["name"] for o in group["options"]}
    assert subs == {"usage", "budget", "pause", "resume", "ban", "unban", "limits", "lora", "style"}
    with pytest.raises(InvocationError, match="default_member_permissions"):
        await rig.discord.slash("fluxpaint pause", user="alice")


async def test_pause_refuses_new_jobs_and_resume_allows_them(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert "Paused" in await admin(rig, "pause")
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "❌")
    assert "paused /inpaint" in reply.content and rig.fal.submits == []
    assert "Resumed" in await admin(rig, "resume")
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(interaction, "Inpainted")
    assert len(rig.fal.submits) == 1
    limits = await admin(rig, "limits")
    admin_id = rig.discord.user_id("admin")
    assert "State: ▶️ taking jobs" in limits.splitlines()
    assert admin_changes(limits) == [f"<@{admin_id}> resume", f"<@{admin_id}> pause"]


async def one_at_fal_one_waiting(
    make_rig: MakeRig, at_fal: str, waiting: str
) -> tuple[BotRig, FakeInteraction, FakeInteraction]:
    """A bot that sends one job to fal at a time: ``at_fal``'s job is queued there, ``waiting``'s is #1 in line.

    The prompts are "<member>'s job", so ``prompts(rig)`` tells which job fal received."""
    rig = await make_rig(fal={"hold": True}, fal_settings={"max_concurrent": 1})
    first = await rig.inpaint(COFFEE, COFFEE_MASK, user=at_fal, prompt=f"{at_fal}'s job")
    await rig.wait_text(first, "Queued at fal")
    second = await rig.inpaint(COFFEE, COFFEE_MASK, user=waiting, prompt=f"{waiting}'s job")
    await rig.wait_text(second, "#1 in this bot's queue")
    return rig, first, second


async def test_pause_holds_the_waiting_line(make_rig: MakeRig) -> None:
    rig, first, second = await one_at_fal_one_waiting(make_rig, "alice", "bob")
    await admin(rig, "pause")
    rig.fal.release()
    await rig.wait_text(first, "Inpainted")
    await rig.wait_text(second, "On hold")
    assert len(rig.fal.submits) == 1
    await admin(rig, "resume")
    await rig.wait_text(second, "Inpainted")
    assert len(rig.fal.submits) == 2


async def test_ban_refuses_and_cancels_waiting_jobs_unban_restores(make_rig: MakeRig) -> None:
    rig, first, waiting = await one_at_fal_one_waiting(make_rig, "alice", "bob")
    assert "can no longer use /inpaint" in await admin(rig, "ban", member="bob", reason="spam")
    await rig.wait_text(waiting, "Cancelled")
    refused = await rig.inpaint(COFFEE, COFFEE_MASK, user="bob")
    assert "can't use /inpaint" in (await rig.wait_text(refused, "❌")).content
    rig.fal.release()
    await rig.wait_text(first, "Inpainted")
    assert "again" in await admin(rig, "unban", member="bob")
    again = await rig.inpaint(COFFEE, COFFEE_MASK, user="bob", prompt="bob's job after the unban")
    await rig.wait_text(again, "Inpainted")
    # A member's jobs leave the line oldest first: had the cancelled job stayed in line, fal got it before this one.
    assert prompts(rig) == ["alice's job", "bob's job after the unban"]


async def test_budget_set_by_an_admin_refuses_with_what_is_left(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert "Budgets saved" in await admin(rig, "budget", member_daily=0.01)
    ok = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(ok, "Inpainted")
    refused = await rig.inpaint(COFFEE, COFFEE_MASK)
    text = (await rig.wait_text(refused, "❌")).content
    assert "$0.008" in text and "$0.002 left of your daily $0.010" in text and "resets <t:" in text
    assert len(rig.fal.submits) == 1
    report = await admin(rig, "usage", days=7)
    assert f"<@{rig.discord.user_id('alice')}>: $0.008 · 1 job(s) · 1 image(s)" in report
    limits = await admin(rig, "limits")
    assert "Member daily budget: $0.010" in limits.splitlines()  # in force
    admin_id = rig.discord.user_id("admin")
    assert admin_changes(limits) == [f"<@{admin_id}> budget: member daily: default → 0.01 USD"]  # and logged


async def test_twenty_concurrent_commands_against_a_budget_for_five_submit_five(make_rig: MakeRig) -> None:
    rig = await make_rig(budgets={"user_daily_usd": 5 * ESTIMATE}, limits={"max_jobs_per_user": 50})
    interactions = await asyncio.gather(*(rig.inpaint(COFFEE, COFFEE_MASK) for _ in range(20)))
    for interaction in interactions:
        await rig.discord.wait_for(
            lambda i=interaction: (
                i.original() is not None and ("❌" in i.original().content or bool(i.original().embeds))
            ),
            timeout=60,
        )
    refused = [i for i in interactions if "❌" in i.original().content]
    assert len(refused) == 15 and len(rig.fal.submits) == 5
    assert all("daily $0.042" in i.original().content for i in refused)


async def test_one_members_burst_does_not_hold_up_the_others(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, limits={"max_jobs_per_user": 10})
    burst = [await rig.inpaint(COFFEE, COFFEE_MASK, user="alice", prompt=f"alice {n}") for n in range(10)]

    def queued_at_fal() -> int:  # validation runs in parallel, so any two of alice's jobs may go first
        return sum(1 for i in burst if i.original() is not None and "Queued at fal" in visible_text(i.original()))

    await rig.discord.wait_for(lambda: queued_at_fal() == 2)
    others = [
        await rig.inpaint(COFFEE, COFFEE_MASK, user="bob", prompt="bob"),
        await rig.inpaint(COFFEE, COFFEE_MASK, user="mod", prompt="mod"),
    ]
    for interaction in others:
        await rig.wait_text(interaction, "in this bot's queue")
    for request_id in list(rig.fal.jobs):
        rig.fal.complete(request_id)
    rig.fal.release()
    await rig.wait_text(others[1], "Inpainted", timeout=60)
    await rig.wait_text(others[0], "Inpainted", timeout=60)
    order = [s["prompt"] for s in rig.fal.submits]
    assert "bob" in order[:4] and "mod" in order[:4], order


async def test_usage_shows_a_members_own_spend_privately(make_rig: MakeRig) -> None:
    rig = await make_rig(budgets={"user_daily_usd": 1.0})
    done = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(done, "Inpainted")
    usage = await rig.discord.slash("usage", user="alice")
    text = await answer_to(rig, usage)
    assert "Your spend today: $0.008" in text and "$0.992 left" in text


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        pytest.param({"guild_ids": [1]}, "isn't enabled in this server", id="other-guild"),
        pytest.param({"channel_ids": ["nsfw-art"]}, "/inpaint can be used in <#{nsfw-art}>", id="other-channel"),
        pytest.param({"role_ids": ["Moderator"]}, "one of these roles: <@&{Moderator}>", id="role-missing"),
    ],
)
async def test_access_lists_refuse_with_where_and_nothing_reaches_fal(
    make_rig: MakeRig, access: dict[str, list[object]], expected: str
) -> None:
    rig = await make_rig(start=False)
    ids = {"nsfw-art": rig.discord.channel_id("nsfw-art"), "Moderator": int(rig.discord.roles["Moderator"]["id"])}
    resolved = {key: [ids.get(v, v) if isinstance(v, str) else v for v in values] for key, values in access.items()}
    await rig.start(rig.settings.model_copy(update={"access": rig.settings.access.model_copy(update=resolved)}))
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice", channel="general")
    reply = await rig.wait_text(interaction, "❌")
    assert expected.format(**ids) in reply.content, reply.content
    assert rig.fal.requests == [] and reply.attachments == []


async def test_a_third_unfinished_job_is_refused_with_the_cap(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    for n in range(2):
        await rig.wait_text(await rig.inpaint(COFFEE, COFFEE_MASK, prompt=f"job {n}"), "Queued at fal")
    third = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="job 3")
    reply = await rig.wait_text(third, "❌")
    assert "2 unfinished jobs" in reply.content, reply.content
    assert len(rig.fal.submits) == 2


async def test_cancel_while_waiting_in_line_never_reaches_fal(make_rig: MakeRig) -> None:
    rig, first, waiting = await one_at_fal_one_waiting(make_rig, "bob", "alice")
    reply = await rig.wait_text(waiting, "in this bot's queue")
    await rig.discord.wait_for(lambda: any(c.startswith("fp:cancel:") for c in reply.custom_ids()))
    (button,) = reply.custom_ids()
    click = await rig.discord.click(reply.id, button, user="alice")
    assert "before it reached fal" in await answer_to(rig, click)
    await rig.wait_text(waiting, "Cancelled")
    rig.fal.release()
    await rig.wait_text(first, "Inpainted")
    later = await rig.inpaint(COFFEE, COFFEE_MASK, user="alice", prompt="alice's next job")
    await rig.wait_text(later, "Inpainted")
    # A member's jobs leave the line oldest first: had the cancelled job stayed in line, fal got it before this one.
    assert prompts(rig) == ["bob's job", "alice's next job"] and rig.fal.cancels == []
    usage = await rig.discord.slash("usage", user="alice")
    assert "Your spend today: $0.008" in await answer_to(rig, usage)  # the next job's; the cancelled one cost nothing


async def test_exempt_roles_skip_the_budget_others_are_held_to_it(make_rig: MakeRig) -> None:
    rig = await make_rig(start=False)
    moderator = int(rig.discord.roles["Moderator"]["id"])
    budgets = rig.settings.budgets.model_copy(update={"user_daily_usd": 0.0, "exempt_role_ids": [moderator]})
    await rig.start(rig.settings.model_copy(update={"budgets": budgets}))
    refused = await rig.wait_text(await rig.inpaint(COFFEE, COFFEE_MASK, user="alice"), "❌")
    assert "You have used your daily budget of $0.000 here." in refused.content, refused.content
    await rig.wait_text(await rig.inpaint(COFFEE, COFFEE_MASK, user="mod"), "Inpainted")
    assert len(rig.fal.submits) == 1

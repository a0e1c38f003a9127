"""/history: a member's last ten jobs in this server, newest first, with their state and a link (SPEC 10)."""

from __future__ import annotations

from tests.conftest import MakeRig
from tests.test_flow import COFFEE, COFFEE_MASK, answer_to


async def test_history_lists_the_members_jobs_newest_first_with_links(make_rig: MakeRig) -> None:
    rig = await make_rig()
    first = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a red hat")
    done = await rig.wait_text(first, "Inpainted")
    second = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a **blue** scarf")
    await rig.wait_text(second, "Inpainted")
    await rig.wait_text(await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a cat", user="bob"), "Inpainted")

    text = await answer_to(rig, await rig.discord.slash("history", user="alice"))

    lines = text.splitlines()
    assert len(lines) == 2 and "blue" in lines[0] and "a red hat" in lines[1], text  # newest first, bob's not here
    assert all("✅ done" in line for line in lines)
    assert "\\*\\*blue\\*\\*" in lines[0]  # shown as typed
    channel = rig.discord.channel_id("general")
    assert f"/{channel}/{done.id})" in lines[1]  # a link to the result


async def test_history_without_jobs_says_how_to_start(make_rig: MakeRig) -> None:
    rig = await make_rig()
    text = await answer_to(rig, await rig.discord.slash("history", user="alice"))
    assert "no jobs in this server yet" in text

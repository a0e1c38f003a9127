"""The mask painter through the bot (SPEC 12): /inpaint without a mask waits for a painted one, the link is given
privately, the painted mask goes through the normal pipeline to fal, and used or expired links change nothing."""

from __future__ import annotations

import base64
import io
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import unused_port
from PIL import Image, ImageDraw

from bot.models import JobState
from tests.conftest import MakeRig
from tests.fakes.discord import FakeInteraction, FakeMessage, walk_components
from tests.rig import BotRig, visible_text
from tests.test_flow import answer_to


def photo(size: tuple[int, int] = (640, 480)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 60)).save(out, "PNG")  # opaque: no transparency to repaint
    return out.getvalue()


def painted(size: tuple[int, int], box: tuple[int, int, int, int] | None) -> bytes:
    mask = Image.new("L", size, 0)
    if box is not None:
        ImageDraw.Draw(mask).rectangle(box, fill=255)
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def web_section() -> dict[str, Any]:
    port = unused_port()
    return {"enabled": True, "listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}


async def painter_rig(make_rig: MakeRig, **sections: Any) -> BotRig:
    return await make_rig(web=web_section(), **sections)


def paint_button(message: FakeMessage) -> str:
    (found,) = [c for c in message.custom_ids() if c.startswith("fp:paint:")]
    return found


async def link_for(rig: BotRig, reply: FakeMessage, user: str = "alice") -> tuple[FakeInteraction, str | None]:
    click = await rig.discord.click(reply.id, paint_button(reply), user=user)
    await rig.discord.wait_for(lambda: click.original() is not None and not click.original().loading)
    shown = click.original()
    assert shown is not None and shown.ephemeral
    urls = [c["url"] for c in walk_components(shown.components) if c.get("style") == 5]
    return click, (urls[0] if urls else None)


async def test_without_a_mask_the_member_paints_one_and_fal_gets_it(make_rig: MakeRig) -> None:
    rig = await painter_rig(make_rig)
    interaction = await rig.inpaint(photo(), prompt="a red barn")
    reply = await rig.wait_text(interaction, "Waiting for the mask")
    assert rig.fal.submits == []

    click, url = await link_for(rig, reply, user="bob")
    assert url is None and "Only the member who started" in str(click.original().content)
    _, url = await link_for(rig, reply)
    assert url is not None and url.startswith(rig.settings.web.public_url or "")

    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200 and page.headers["Content-Security-Policy"] == "default-src 'self'"
        async with http.get(f"{url}/image") as image:
            with Image.open(io.BytesIO(await image.read())) as shown:
                assert shown.size == (640, 480)
        mask = painted((640, 480), (200, 150, 440, 330))
        async with http.post(url, data=mask, headers={"Content-Type": "image/png"}) as sent:
            assert sent.status == 200 and "Mask received" in (await sent.json())["message"]
        async with http.post(url, data=mask, headers={"Content-Type": "image/png"}) as again:
            assert again.status == 410  # single use

    final = await rig.wait_text(interaction, "Inpainted")
    assert "Mask received from the painter" in visible_text(final)
    (submit,) = rig.fal.submits
    assert submit["prompt"] == "a red barn"
    with Image.open(io.BytesIO(base64.b64decode(submit["mask_url"].split(",")[1]))) as sent_mask:
        assert sent_mask.getextrema() == (0, 255)
    assert final.files and "Repaint" in {c.get("label") for c in walk_components(final.components)}


async def test_a_mask_that_selects_nothing_is_refused_and_the_job_still_waits(make_rig: MakeRig) -> None:
    rig = await painter_rig(make_rig)
    interaction = await rig.inpaint(photo())
    reply = await rig.wait_text(interaction, "Waiting for the mask")
    _, url = await link_for(rig, reply)
    assert url is not None

    async with aiohttp.ClientSession() as http:
        empty = painted((640, 480), None)
        async with http.post(url, data=empty, headers={"Content-Type": "image/png"}) as refused:
            assert refused.status == 422 and "selects nothing" in (await refused.json())["error"]
        good = painted((640, 480), (10, 10, 100, 100))
        async with http.post(url, data=good, headers={"Content-Type": "image/png"}) as sent:
            assert sent.status == 200
    await rig.wait_text(interaction, "Inpainted")
    assert len(rig.fal.submits) == 1


async def test_a_painter_job_survives_a_restart_and_expires_with_its_link(make_rig: MakeRig) -> None:
    rig = await painter_rig(make_rig)
    interaction = await rig.inpaint(photo())
    reply = await rig.wait_text(interaction, "Waiting for the mask")
    await rig.restart()
    _, url = await link_for(rig, reply)  # a new link from a new process
    assert url is not None

    assert rig.bot is not None
    service = rig.bot.service
    (job,) = [j for j in await service.store.list_unfinished() if j.state is JobState.PAINTING]
    job.paint_expires_at = job.paint_expires_at - timedelta(hours=1) if job.paint_expires_at else None
    await service.store.save(job)
    assert await service.pipeline.expire_paintings() == 1

    await rig.wait_text(interaction, "expired")
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=painted((640, 480), (1, 1, 50, 50)), headers={"Content-Type": "image/png"}) as late,
    ):
        assert late.status == 410
    assert rig.fal.submits == []


@pytest.mark.parametrize("web_on", [False, True])
async def test_only_with_the_painter_on_is_a_missing_mask_not_an_error(make_rig: MakeRig, web_on: bool) -> None:
    rig = await (painter_rig(make_rig) if web_on else make_rig())
    interaction = await rig.inpaint(photo())
    shown = await rig.wait_text(interaction, "Waiting for the mask" if web_on else "no transparent areas")
    assert ("fp:paint:" in " ".join(shown.custom_ids())) is web_on
    assert "Paint" in visible_text(shown) or not web_on


async def test_cancel_while_waiting_for_the_mask_charges_nothing(make_rig: MakeRig) -> None:
    rig = await painter_rig(make_rig)
    interaction = await rig.inpaint(photo())
    reply = await rig.wait_text(interaction, "Waiting for the mask")
    (cancel,) = [c for c in reply.custom_ids() if c.startswith("fp:cancel:")]
    answer = await answer_to(rig, await rig.discord.click(reply.id, cancel))
    assert "nothing was charged" in answer
    await rig.wait_text(interaction, "Cancelled")


async def test_repaint_on_a_result_starts_a_painter_job_for_the_clicker(make_rig: MakeRig) -> None:
    rig = await painter_rig(make_rig)
    first = await rig.inpaint(photo())
    reply = await rig.wait_text(first, "Waiting for the mask")
    _, url = await link_for(rig, reply)
    assert url is not None
    async with aiohttp.ClientSession() as http:
        mask = painted((640, 480), (10, 10, 200, 200))
        async with http.post(url, data=mask, headers={"Content-Type": "image/png"}) as sent:
            assert sent.status == 200
    result = await rig.wait_text(first, "Inpainted")

    (repaint,) = [c for c in result.custom_ids() if c.startswith("fp:repaint:")]
    click = await rig.discord.click(result.id, repaint, user="bob")

    def linked() -> list[str]:
        return [
            c["url"]
            for m in [click.original(), *click.followups()]
            if m
            for c in walk_components(m.components)
            if c.get("style") == 5
        ]

    await rig.discord.wait_for(lambda: bool(linked()))
    waiting = [
        m
        for m in rig.discord.messages_in("general")
        if m.message_reference and m.message_reference["message_id"] == str(result.id)
    ]
    assert waiting and "Waiting for the mask" in visible_text(waiting[0])
    async with aiohttp.ClientSession() as http, http.get(f"{linked()[0]}/image") as image:
        assert image.status == 200  # result 1, to paint on
    assert len(rig.fal.submits) == 1

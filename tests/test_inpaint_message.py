"""The message command "Inpaint this image" (SPEC 10): any image in the channel, a form with a prompt, an optional
mask file or description and strength; the job replies to that message."""

from __future__ import annotations

import asyncio
import base64
import io

from PIL import Image

from tests.conftest import MakeRig
from tests.fakes.discord import FakeInteraction, FakeMessage, walk_components
from tests.rig import BotRig, visible_text
from tests.test_flow import COFFEE, COFFEE_MASK, answer_to

MENU = "Inpaint this image"


def data_bytes(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


async def open_form(rig: BotRig, message: FakeMessage, user: str = "bob") -> FakeInteraction:
    menu = await rig.discord.message_command(MENU, message.id, user=user)
    await rig.discord.wait_for(lambda: menu.modal is not None or menu.acknowledged)
    return menu


async def reply_to(rig: BotRig, message: FakeMessage, needle: str) -> FakeMessage:
    def found() -> list[FakeMessage]:
        return [
            m
            for m in rig.discord.messages_in("general")
            if not m.deleted
            and m.message_reference
            and m.message_reference["message_id"] == str(message.id)
            and needle in visible_text(m)
        ]

    await rig.discord.wait_for(lambda: bool(found()))
    return found()[0]


async def test_the_message_command_is_synced_for_servers(make_rig: MakeRig) -> None:
    rig = await make_rig()
    synced = [c for scope in rig.discord.commands.values() for c in scope if c["name"] == MENU]
    assert len(synced) == 1 and synced[0]["type"] == 3 and synced[0].get("contexts") == [0]


async def test_a_member_inpaints_someone_elses_photo_with_a_mask_file(make_rig: MakeRig) -> None:
    rig = await make_rig()
    photo = rig.discord.post_as("alice", "look at my coffee", attachments=[("coffee.png", COFFEE, "image/png")])

    menu = await open_form(rig, photo)
    assert menu.modal is not None
    kinds = {c["type"] for c in walk_components(menu.modal["components"])}
    assert 19 in kinds and 18 in kinds  # a file upload inside a label
    submit = await rig.discord.submit_modal(
        menu, {"prompt": "a cinnamon heart"}, files={"mask": [("mask.png", COFFEE_MASK, "image/png")]}
    )
    assert "Started" in await answer_to(rig, submit)
    result = await reply_to(rig, photo, "Inpainted")

    (sent,) = rig.fal.submits
    assert sent["prompt"] == "a cinnamon heart" and sent["strength"] == 0.85
    with Image.open(io.BytesIO(result.files["result-1.jpg"])) as image:
        assert image.size == (600, 400)
    assert result.custom_ids()  # a result like any other: it can be rerolled
    with Image.open(io.BytesIO(data_bytes(sent["mask_url"]))) as mask:
        assert mask.mode == "L"


async def test_a_mask_description_asks_fal_to_find_it(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"segment_box": (0.25, 0.25, 0.75, 0.75)})
    photo = rig.discord.post_as("alice", attachments=[("coffee.png", COFFEE, "image/png")])

    menu = await open_form(rig, photo)
    submit = await rig.discord.submit_modal(menu, {"prompt": "a latte", "mask_prompt": "the cup", "strength": "0.5"})
    await answer_to(rig, submit)
    await reply_to(rig, photo, "Inpainted")

    segment, inpaint = rig.fal.submits
    assert segment["prompt"] == "the cup" and inpaint["strength"] == 0.5


async def test_a_message_without_an_image_is_refused_privately(make_rig: MakeRig) -> None:
    rig = await make_rig()
    words = rig.discord.post_as("alice", "just words")

    menu = await open_form(rig, words)
    assert menu.modal is None
    assert "no image" in await answer_to(rig, menu)
    assert rig.fal.submits == []


async def test_bad_form_values_change_nothing_and_leave_nothing_public(make_rig: MakeRig) -> None:
    rig = await make_rig()
    photo = rig.discord.post_as("alice", attachments=[("coffee.png", COFFEE, "image/png")])
    before = len(rig.discord.messages_in("general"))

    menu = await open_form(rig, photo)
    strength = await rig.discord.submit_modal(menu, {"prompt": "tea", "strength": "strong"})
    assert "strength must be a number" in await answer_to(rig, strength)
    no_mask = await rig.discord.submit_modal(menu, {"prompt": "tea"})  # an opaque photo and no mask
    assert "transparent" in await answer_to(rig, no_mask)
    text = await rig.discord.submit_modal(
        menu, {"prompt": "tea"}, files={"mask": [("mask.png", b"not a png at all", "image/png")]}
    )
    assert "mask" in (await answer_to(rig, text)).lower()

    assert rig.fal.submits == []
    shown = [m for m in rig.discord.messages_in("general") if not m.deleted and not m.ephemeral]
    assert len(shown) == before  # the replies of the refused jobs were taken back


async def test_the_photos_owner_may_delete_what_was_made_of_it(make_rig: MakeRig) -> None:
    rig = await make_rig()
    photo = rig.discord.post_as("alice", attachments=[("coffee.png", COFFEE, "image/png")])
    menu = await open_form(rig, photo, user="bob")
    submit = await rig.discord.submit_modal(
        menu, {"prompt": "a moustache"}, files={"mask": [("mask.png", COFFEE_MASK, "image/png")]}
    )
    await answer_to(rig, submit)
    result = await reply_to(rig, photo, "Inpainted")
    (delete,) = [c for c in result.custom_ids() if c.startswith("fp:delete:")]
    assert rig.bot is not None
    await rig.discord.wait_for(lambda: bool(result.components))

    async def press(user: str) -> str:
        click = await rig.discord.click(result.id, delete, user=user)
        return await answer_to(rig, click)

    # a third member may not; the photo's owner may, though bob made it
    rig.discord.add_member("carol")
    assert "Only the member who made this result" in await press("carol")
    for _ in range(500):  # the row says DONE (its message ids recorded) a moment after the result shows
        jobs = await rig.bot.service.store.recent_jobs(
            user_id=rig.discord.user_id("bob"), guild_id=rig.discord.guild_id
        )
        if jobs and jobs[0].delivered_message_ids:
            break
        await asyncio.sleep(0.01)
    assert "Deleted" in await press("alice")
    assert rig.discord.message(result.id).deleted

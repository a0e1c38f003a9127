"""Building on a result (SPEC 10): Reroll, Edit, Use k, Mask and Delete on the result, through the fake Discord and
fal; each click that makes a job makes a full job, paid by the clicker, replying to the result."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image, ImageFilter, ImageStat

from bot.errors import InputError
from bot.iterate import Verb
from bot.models import JobState
from tests.conftest import MakeRig
from tests.fakes.discord import FakeInteraction, FakeMessage, walk_components
from tests.rig import BotRig, visible_text
from tests.test_fair_use import admin
from tests.test_flow import COFFEE, COFFEE_MASK, answer_to


def data_bytes(uri: str) -> bytes:
    assert uri.startswith("data:"), uri[:40]
    return base64.b64decode(uri.split(",", 1)[1])


def buttons(message: FakeMessage) -> dict[str, str]:
    """Each button's label by its custom id."""
    return {c["custom_id"]: c.get("label", "") for c in walk_components(message.components) if c.get("type") == 2}


def custom_id(message: FakeMessage, verb: str) -> str:
    found = [cid for cid in buttons(message) if cid.startswith(f"fp:{verb}:")]
    assert found, buttons(message)
    return found[0]


async def finished_result(rig: BotRig, **options: Any) -> FakeMessage:
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, **options)
    return await rig.wait_text(interaction, "Inpainted")


def replies_to(rig: BotRig, message: FakeMessage) -> list[FakeMessage]:
    return [
        m
        for m in rig.discord.messages_in("general")
        if not m.deleted and m.message_reference and m.message_reference["message_id"] == str(message.id)
    ]


async def new_reply(rig: BotRig, message: FakeMessage, needle: str = "Inpainted") -> FakeMessage:
    def shown() -> bool:
        return any(needle in visible_text(m) for m in replies_to(rig, message))

    try:
        await rig.discord.wait_for(shown)
    except TimeoutError:
        raise AssertionError([visible_text(m) for m in replies_to(rig, message)]) from None
    return next(m for m in replies_to(rig, message) if needle in visible_text(m))


async def test_a_result_carries_every_button_within_discords_limits(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig, num_images=4)

    labels = buttons(result)
    assert sorted(labels.values()) == ["Delete", "Edit", "Mask", "Reroll", "Use 1", "Use 2", "Use 3", "Use 4"]
    assert len(result.components) <= 5 and all(len(row["components"]) <= 5 for row in result.components)
    assert all(len(cid) <= 100 for cid in labels)


async def test_reroll_by_a_teammate_sends_the_same_bytes_with_a_new_seed_and_bills_them(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig, seed=1234)

    click = await rig.discord.click(result.id, custom_id(result, "reroll"), user="bob")
    answer = await answer_to(rig, click)
    assert "Started" in answer, answer
    reroll = await new_reply(rig, result)

    first, second = rig.fal.submits
    assert data_bytes(second["image_url"]) == data_bytes(first["image_url"])
    assert data_bytes(second["mask_url"]) == data_bytes(first["mask_url"])
    assert second["prompt"] == first["prompt"] and second["seed"] != 1234
    text = visible_text(reroll)
    assert "From: [job " in text and str(second["seed"]) in text
    assert reroll.files and not reroll.deleted
    usage = await answer_to(rig, await rig.discord.slash("usage", user="bob"))
    assert "Your spend today: $0.000" not in usage  # bob pays for his reroll


@pytest.mark.parametrize("iterate_by", ["anyone", "requester"])
async def test_who_may_reroll_follows_ui_iterate_by(make_rig: MakeRig, iterate_by: str) -> None:
    rig = await make_rig(ui={"iterate_by": iterate_by})
    result = await finished_result(rig)

    answer = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="bob"))
    if iterate_by == "requester":
        assert "Only <@" in answer and "can reroll it" in answer
        assert len(rig.fal.submits) == 1 and replies_to(rig, result) == []
    else:
        await new_reply(rig, result)
        assert len(rig.fal.submits) == 2

    await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="alice"))
    await rig.discord.wait_for(lambda: len(rig.fal.submits) == (2 if iterate_by == "requester" else 3))


async def test_a_ban_or_a_spent_budget_stops_a_click_with_no_submit(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    await admin(rig, "ban", member="bob", reason="spam")
    await rig.stop()  # alice's first job has spent her new budget
    await rig.start(
        rig.settings.model_copy(update={"budgets": rig.settings.budgets.model_copy(update={"user_daily_usd": 0.0})})
    )

    banned = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="bob"))
    spent = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="alice"))

    assert "can't use /inpaint in this server" in banned
    assert "daily budget" in spent
    assert len(rig.fal.submits) == 1 and replies_to(rig, result) == []


async def test_edit_opens_a_prefilled_modal_and_checks_its_values(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig, prompt="a red hat", strength=0.6, seed=77)

    click = await rig.discord.click(result.id, custom_id(result, "edit"), user="bob")
    await rig.discord.wait_for(lambda: click.modal is not None)
    assert click.modal is not None
    shown = {c["custom_id"]: c.get("value") for c in walk_components(click.modal["components"]) if "custom_id" in c}
    assert shown == {"prompt": "a red hat", "strength": "0.6", "seed": "77", "num_images": "1"}

    bad = await rig.discord.submit_modal(click, {"strength": "2"})
    assert "strength must be a number from 0.01 to 1" in await answer_to(rig, bad)
    worse = await rig.discord.submit_modal(click, {"num_images": "x"})
    assert "num_images must be a whole number" in await answer_to(rig, worse)
    assert len(rig.fal.submits) == 1

    good = await rig.discord.submit_modal(click, {"prompt": "a blue scarf", "seed": ""})
    await answer_to(rig, good)
    edited = await new_reply(rig, result)
    first, second = rig.fal.submits
    assert second["prompt"] == "a blue scarf" and second["strength"] == 0.6 and "seed" not in second
    assert data_bytes(second["image_url"]) == data_bytes(first["image_url"])
    assert "a blue scarf" in visible_text(edited)


def _red_under_mask(submit: dict[str, Any]) -> float:
    """The mean red of the image fal received, where its mask repaints (away from the edge)."""
    with (
        Image.open(io.BytesIO(data_bytes(submit["image_url"]))) as sent,
        Image.open(io.BytesIO(data_bytes(submit["mask_url"]))) as mask,
    ):
        red = sent.convert("RGB").getchannel("R")
        inside = mask.convert("L").filter(ImageFilter.MinFilter(9)).point(lambda v: 255 if v > 127 else 0)
        return float(ImageStat.Stat(red, mask=inside).mean[0])


async def test_use_k_builds_on_result_k_with_the_same_mask(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig, num_images=2)  # the fake paints image 1 with red 0, image 2 with red 40

    click = await rig.discord.click(result.id, f"fp:use:{custom_id(result, 'use').split(':')[2]}:2", user="bob")
    await rig.discord.wait_for(lambda: click.modal is not None)
    await answer_to(rig, await rig.discord.submit_modal(click, {"prompt": "a green hat", "num_images": "1"}))
    await new_reply(rig, result)

    first, second = rig.fal.submits
    assert second["prompt"] == "a green hat"
    assert 30 < _red_under_mask(second) < 50  # result 2 under the mask (red 40), not result 1 (0) nor the photo
    assert data_bytes(second["mask_url"]) == data_bytes(first["mask_url"])


async def test_buttons_work_after_a_restart(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    await rig.restart()

    await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="alice"))
    await new_reply(rig, result)
    assert len(rig.fal.submits) == 2


async def test_a_click_on_a_pruned_job_says_its_files_are_gone(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    job_id = custom_id(result, "reroll").split(":")[2]
    shutil.rmtree(rig.settings.storage.data_dir / "jobs" / job_id)

    answer = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll")))
    assert "removed after 30 days" in answer and len(rig.fal.submits) == 1


async def test_mask_shows_the_mask_privately(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)

    click = await rig.discord.click(result.id, custom_id(result, "mask"), user="bob")
    await rig.discord.wait_for(lambda: click.original() is not None)
    shown = click.original()
    assert shown is not None and shown.ephemeral
    with Image.open(io.BytesIO(shown.files["mask-preview.jpg"])) as picture:
        assert picture.format == "JPEG"


async def _delete(rig: BotRig, result: FakeMessage, user: str) -> FakeInteraction:
    click = await rig.discord.click(result.id, custom_id(result, "delete"), user=user)
    await rig.discord.wait_for(lambda: click.original() is not None and not click.original().loading)
    return click


async def test_delete_is_for_the_requester_and_moderators(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)

    assert "Only the member who made this result" in await answer_to(rig, await _delete(rig, result, "bob"))
    assert not rig.discord.message(result.id).deleted
    assert "Deleted" in await answer_to(rig, await _delete(rig, result, "mod"))
    assert rig.discord.message(result.id).deleted


async def test_history_shows_a_reroll_beside_its_source(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    answer = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll")))
    assert "Started" in answer, answer
    await new_reply(rig, result)

    await rig.discord.wait_for(lambda: len(rig.fal.submits) == 2)
    await rig.discord.wait_for(lambda: all(m.components for m in replies_to(rig, result)))  # its buttons: done

    text = await answer_to(rig, await rig.discord.slash("history"))
    lines = text.splitlines()
    assert len(lines) == 2 and "a red hat" in lines[0] and "a red hat" in lines[1], text


@pytest.mark.parametrize("iterate_by", ["anyone", "requester"])
@pytest.mark.parametrize("verb", ["edit", "use"])
async def test_edit_and_use_follow_ui_iterate_by(make_rig: MakeRig, iterate_by: str, verb: str) -> None:
    rig = await make_rig(ui={"iterate_by": iterate_by})
    result = await finished_result(rig)

    for user in ("bob", "alice"):
        click = await rig.discord.click(result.id, custom_id(result, verb), user=user)
        await rig.discord.wait_for(lambda c=click: c.modal is not None or c.original() is not None)  # type: ignore[misc]
        refused = iterate_by == "requester" and user == "bob"
        assert (click.modal is None) == refused
        if refused:
            assert f"can {verb} it" in await answer_to(rig, click)
    assert len(rig.fal.submits) == 1


async def test_use_buttons_are_numbered_as_the_files_when_one_is_withheld(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"nsfw": [True, False]})
    result = await finished_result(rig, num_images=2)

    uses = {cid: label for cid, label in buttons(result).items() if cid.startswith("fp:use:")}
    assert list(uses.values()) == ["Use 2"] and list(result.files) == ["result-2.jpg"]
    job_id = custom_id(result, "reroll").split(":")[2]
    assert rig.bot is not None
    with pytest.raises(InputError, match="no image 1"):  # the withheld one cannot be built on, whatever is sent
        await rig.bot.service.iterations.source(job_id, user_id=1, verb=Verb.USE, index=0)
    click = await rig.discord.click(result.id, next(iter(uses)), user="bob")
    await rig.discord.wait_for(lambda: click.modal is not None)
    assert click.modal is not None and click.modal["title"] == "Build on image 2"


async def test_the_clicker_pays_exactly_and_the_requester_nothing_more(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    before = await answer_to(rig, await rig.discord.slash("usage", user="alice"))

    await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="bob"))
    await new_reply(rig, result)
    await rig.discord.wait_for(lambda: all(m.components for m in replies_to(rig, result)))

    assert await answer_to(rig, await rig.discord.slash("usage", user="alice")) == before
    spent = before.splitlines()[0]  # "Your spend today: $0.0xx": the same job, the same price
    assert (await answer_to(rig, await rig.discord.slash("usage", user="bob"))).splitlines()[0] == spent


async def test_a_pause_stops_a_click_and_opens_no_form(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    await admin(rig, "pause")

    reroll = await answer_to(rig, await rig.discord.click(result.id, custom_id(result, "reroll"), user="bob"))
    edit = await rig.discord.click(result.id, custom_id(result, "edit"), user="bob")
    await rig.discord.wait_for(lambda: edit.original() is not None or edit.modal is not None)
    assert "paused" in reroll and edit.modal is None and "paused" in await answer_to(rig, edit)
    assert len(rig.fal.submits) == 1 and replies_to(rig, result) == []


async def test_a_moderator_can_delete_a_pruned_result(make_rig: MakeRig) -> None:
    rig = await make_rig()
    result = await finished_result(rig)
    job_id = custom_id(result, "delete").split(":")[2]
    assert rig.bot is not None
    store = rig.bot.service.store
    for _ in range(500):  # the message shows the result a moment before the row says DONE
        if (job := await store.get(job_id)) is not None and job.state is JobState.DONE:
            break
        await asyncio.sleep(0.01)
    await store.prune(datetime.now(UTC) + timedelta(days=1))
    assert await store.get(job_id) is None

    assert "no longer stored" in await answer_to(rig, await _delete(rig, result, "bob"))
    assert "Deleted" in await answer_to(rig, await _delete(rig, result, "mod"))
    assert rig.discord.message(result.id).deleted


async def test_a_result_in_two_messages_has_its_buttons_once_and_delete_removes_both(make_rig: MakeRig) -> None:
    # two 0.7 MB results and 1 MiB per request: the reply carries one, a second message the other
    rig = await make_rig(
        discord={"max_request_bytes": 1024 * 1024},
        fal={"result_noise": True},
        discord_settings={"max_request_bytes": 1024 * 1024},
    )
    interaction = await rig.inpaint(COFFEE, region="everything", num_images=2, output_format="png")
    result = await rig.wait_text(interaction, "Inpainted")
    await rig.discord.wait_for(lambda: any("Results 2/2" in m.content for m in rig.discord.messages_in("general")))
    (second,) = [m for m in rig.discord.messages_in("general") if "Results 2/2" in m.content]

    assert len(result.attachments) == 1 and second.attachments and second.components == []
    assert sorted(label for cid, label in buttons(result).items() if cid.startswith("fp:use:")) == ["Use 1", "Use 2"]
    job_id = custom_id(result, "delete").split(":")[2]
    assert rig.bot is not None
    for _ in range(500):  # both parts recorded on the job: the row says DONE
        if (job := await rig.bot.service.store.get(job_id)) is not None and job.state is JobState.DONE:
            break
        await asyncio.sleep(0.01)
    assert "Deleted" in await answer_to(rig, await _delete(rig, result, "alice"))
    assert rig.discord.message(result.id).deleted and rig.discord.message(second.id).deleted

"""/inpaint end to end in one process: the real discord.py and runtime against the fake Discord and fake fal."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from tests.conftest import MakeRig
from tests.rig import fixture, visible_text

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")
WEBHOOK_EDIT = "PATCH /api/v10/webhooks/{app}/{token}/messages/{mid}"


def shown_texts(rig, interaction) -> list[str]:  # type: ignore[no-untyped-def]
    """Every content the member's reply showed, in order (edits through the interaction webhook)."""
    return [
        r.json["content"]
        for r in rig.discord.requests
        if r.route_key == WEBHOOK_EDIT
        and r.status == 200
        and isinstance(r.json, dict)
        and r.json.get("content")
        and interaction.token in r.path
    ]


async def test_happy_path_shows_positions_and_posts_images(make_rig: MakeRig) -> None:
    rig = await make_rig(
        fal={"positions": [3, 2, 1, 0]}, ui={"min_edit_interval_s": 0}, discord={"edit_rate": (50, 5.0)}
    )
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a latte art heart", num_images=2, output_format="png")
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)

    assert interaction.callbacks[0].type == 5  # deferred before anything else
    texts = shown_texts(rig, interaction)
    positions = [t for t in texts if "Queued at fal: position" in t]
    assert any("position 3" in t for t in positions), texts
    assert any("position 1" in t for t in positions), texts
    assert [p for p in (3, 2, 1) if any(f"position {p}" in t for t in positions)] == [3, 2, 1]

    assert len(final.attachments) == 2
    for attachment in final.attachments:
        image = Image.open(io.BytesIO(attachment.data))
        assert image.format == "PNG" and image.size == (600, 400)
    text = visible_text(final)
    assert "a latte art heart" in text and "Seed" in text and "Est. cost" in text
    assert final.components == []  # no Cancel button on a finished job

    assert len(rig.fal.submits) == 1
    submitted = rig.fal.submits[0]
    assert submitted["prompt"] == "a latte art heart" and submitted["num_images"] == 2
    assert submitted["output_format"] == "png" and submitted["enable_safety_checker"] is True
    assert rig.discord.rate_limited == [] and rig.discord.unknown_routes == [] and rig.discord.errors == []


def png_bytes(width: int, height: int, colour: str = "white", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, format="PNG")
    return out.getvalue()


BAD_INPUTS = [
    pytest.param(
        {"image": b"hello, I am a text file\n" * 40, "image_name": "photo.png"},
        "isn't a picture",
        id="text-as-image",
    ),
    pytest.param(
        {"mask": b"not an image at all", "mask_name": "mask.png"}, "mask isn't a picture", id="mask-not-image"
    ),
    pytest.param({"mask": png_bytes(400, 400)}, "same shape", id="mask-other-aspect"),
    pytest.param({"image": COFFEE[: len(COFFEE) // 2]}, "damaged or incomplete", id="truncated-image"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_INPUTS)
async def test_bad_input_gets_a_specific_error_and_no_submit(
    make_rig: MakeRig, change: dict[str, Any], expected: str
) -> None:
    rig = await make_rig()
    args: dict[str, Any] = {"image": COFFEE, "mask": COFFEE_MASK} | change
    interaction = await rig.inpaint(args.pop("image"), args.pop("mask"), **args)
    reply = await rig.wait_text(interaction, "❌")
    assert expected in reply.content, reply.content
    assert "Traceback" not in reply.content
    assert rig.fal.submits == [] and rig.fal.requests == []


async def test_image_over_the_byte_limit_is_refused_before_download(make_rig: MakeRig) -> None:
    rig = await make_rig(limits={"max_input_bytes": 100_000})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "❌")
    assert "The image is 0.4 MB; the limit is 0.1 MB." in reply.content
    assert rig.fal.submits == []
    cdn = [r for r in rig.discord.requests if r.path.startswith("/cdn/")]
    assert cdn == []  # the size Discord reported was enough to refuse


async def test_status_errors_do_not_stop_a_job(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"status_5xx_rate": 0.3, "positions": [2, 1, 0], "in_progress_steps": 3})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)
    assert len(final.attachments) == 1
    assert len(rig.fal.submits) == 1 and rig.fal.status_calls > 6
    assert any(r.status >= 500 for r in rig.fal.requests if hasattr(r, "status")) or rig.fal.status_calls > 6


async def test_fal_job_error_is_reported_honestly(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"fail_with": "CUDA out of memory"})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "❌")
    assert "fal" in reply.content and reply.attachments == []
    assert len(rig.fal.submits) == 1


async def test_alpha_channel_is_the_mask_when_none_is_attached(make_rig: MakeRig) -> None:
    rig = await make_rig()
    interaction = await rig.inpaint(fixture("chelsea_eyes_erased_rgba.png"), None, output_format="jpeg")
    final = await rig.wait_text(interaction, "Inpainted")
    image = Image.open(io.BytesIO(final.attachments[0].data))
    assert image.format == "JPEG" and image.size == (451, 300)


async def answer_to(rig, click) -> str:  # type: ignore[no-untyped-def]
    """The ephemeral answer to a deferred click (Discord turns the first followup into the deferred message)."""

    def answered() -> bool:
        original = click.original()
        return original is not None and not original.loading

    await rig.discord.wait_for(answered)
    assert click.original().ephemeral
    return str(click.original().content)


async def queued_reply(rig, interaction):  # type: ignore[no-untyped-def]
    reply = await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: any(c.startswith("fp:cancel:") for c in reply.custom_ids()))
    return reply


async def test_cancel_by_another_member_is_refused_and_by_the_owner_works(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await queued_reply(rig, interaction)
    (button,) = reply.custom_ids()

    click = await rig.discord.click(reply.id, button, user="bob")
    assert "Only the member who started this job" in await answer_to(rig, click)
    assert rig.fal.cancels == [] and "Queued at fal" in reply.content

    click = await rig.discord.click(reply.id, button, user="alice")
    assert "Cancelled at fal" in await answer_to(rig, click)
    final = await rig.wait_text(interaction, "Cancelled")
    assert final.components == [] and final.attachments == []
    assert len(rig.fal.cancels) == 1 and len(rig.fal.submits) == 1
    rig.fal.release()
    assert rig.fal.result_calls == 0


async def test_a_moderator_may_cancel_someone_elses_job(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await queued_reply(rig, interaction)
    click = await rig.discord.click(reply.id, reply.custom_ids()[0], user="mod")
    await answer_to(rig, click)
    await rig.wait_text(interaction, "Cancelled by <@")
    assert len(rig.fal.cancels) == 1


async def test_cancel_works_after_a_restart(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await queued_reply(rig, interaction)
    await rig.restart()
    click = await rig.discord.click(reply.id, reply.custom_ids()[0], user="alice")
    await answer_to(rig, click)
    await rig.wait_text(interaction, "Cancelled")
    assert len(rig.fal.cancels) == 1 and len(rig.fal.submits) == 1


async def test_a_restart_watches_the_same_request_and_delivers_once(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, num_images=2)
    await queued_reply(rig, interaction)
    await rig.stop()
    rig.fal.release()
    await rig.start()
    final = await rig.wait_text(interaction, "Inpainted")
    assert len(final.attachments) == 2
    assert len(rig.fal.submits) == 1
    await rig.restart()  # a further restart posts nothing again
    assert len(rig.discord.messages_in("general")) == 1 and len(final.attachments) == 2
    assert rig.discord.errors == [] and rig.discord.unknown_routes == []


async def test_after_the_token_expires_the_result_still_reaches_the_channel(make_rig: MakeRig) -> None:
    from tests.fakes.discord import ManualClock

    clock = ManualClock()
    rig = await make_rig(fal={"hold": True}, discord={"clock": clock})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await queued_reply(rig, interaction)
    clock.advance(16 * 60)  # Discord now answers the interaction token with 401/50027
    rig.fal.release()
    pointer = await rig.wait_text(interaction, "Done: results in")
    posted = [m for m in rig.discord.messages_in("general") if m.id != reply.id]
    assert len(posted) == 1 and len(posted[0].attachments) == 1
    alice = rig.discord.user_id("alice")
    assert posted[0].content.startswith(f"<@{alice}>") and [int(u["id"]) for u in posted[0].mentions] == [alice]
    assert str(posted[0].id) in pointer.content and pointer.components == []
    assert len(rig.fal.submits) == 1 and rig.discord.errors == []


async def test_flagged_images_are_withheld_in_normal_channels(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"nsfw": [True, False]})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, num_images=2)
    final = await rig.wait_text(interaction, "Inpainted")
    assert [a.filename for a in final.attachments] == ["result-2.jpg"]
    assert "1 image was withheld" in visible_text(final)
    assert rig.fal.submits[0]["enable_safety_checker"] is True


async def test_flagged_images_are_spoilered_in_age_restricted_channels(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"nsfw": [True]}, safety={"allow_nsfw_in_age_restricted": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, channel="nsfw-art")
    final = await rig.wait_text(interaction, "Inpainted")
    assert [a.filename for a in final.attachments] == ["SPOILER_result-1.jpg"]
    assert rig.fal.submits[0]["enable_safety_checker"] is False  # the admin allowed it off here


async def test_safety_checker_stays_on_outside_age_restricted_channels(make_rig: MakeRig) -> None:
    rig = await make_rig(safety={"allow_nsfw_in_age_restricted": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, channel="general")
    await rig.wait_text(interaction, "Inpainted")
    assert rig.fal.submits[0]["enable_safety_checker"] is True


async def test_blocked_terms_are_refused_before_submit(make_rig: MakeRig) -> None:
    rig = await make_rig(safety={"blocked_terms": ["Forbidden Thing"]})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a forbidden thing in a cup")
    reply = await rig.wait_text(interaction, "❌")
    assert "isn't allowed" in reply.content and rig.fal.submits == []

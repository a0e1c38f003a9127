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


def upload_attempts(rig, interaction) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """(path, status) of every request that carried files through ``interaction``'s token, answered or refused."""
    return [(r.path, r.status) for r in rig.discord.requests if r.files and interaction.token in r.path]


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
    rig = await make_rig(fal={"positions": [3, 2, 1, 0]}, discord={"edit_rate": (50, 5.0)})
    interaction = await rig.inpaint(
        COFFEE,
        COFFEE_MASK,
        prompt="a latte art heart",
        num_images=2,
        output_format="png",
        strength=0.6,
        num_inference_steps=20,
        guidance_scale=5.0,
        seed=1234,
    )
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)

    assert interaction.callbacks[0].type == 5  # deferred before anything else
    texts = shown_texts(rig, interaction)
    positions = [t for t in texts if "Queued at fal: position" in t]
    assert any("position 3" in t for t in positions), texts
    assert all("est. $0.017" in t for t in positions), texts  # 2 × 0.24 MP at $0.035
    assert any("position 1" in t for t in positions), texts
    assert [p for p in (3, 2, 1) if any(f"position {p}" in t for t in positions)] == [3, 2, 1]

    assert len(final.attachments) == 2
    for attachment in final.attachments:
        image = Image.open(io.BytesIO(attachment.data))
        assert image.format == "PNG" and image.size == (600, 400)
    text = visible_text(final)
    assert "a latte art heart" in text and "Seed" in text and "Est. cost" in text
    ids = final.custom_ids()  # no Cancel button on a finished job: the result's own buttons instead
    assert not [i for i in ids if i.startswith("fp:cancel:")] and len([i for i in ids if i.startswith("fp:use:")]) == 2

    assert len(rig.fal.submits) == 1
    submitted = rig.fal.submits[0]
    assert submitted["prompt"] == "a latte art heart" and submitted["num_images"] == 2
    assert submitted["output_format"] == "png" and submitted["enable_safety_checker"] is True
    assert (submitted["strength"], submitted["num_inference_steps"]) == (0.6, 20)
    assert (submitted["guidance_scale"], submitted["seed"]) == (5.0, 1234)
    assert "Seed: 1234" in text
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
    rig = await make_rig(
        fal={"status_5xx_rate": 0.3, "positions": [2, 1, 0], "in_progress_steps": 3},
        fal_settings={"status_mode": "poll", "poll_interval_s": 0.05, "max_poll_interval_s": 0.1},
    )
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)
    assert len(final.attachments) == 1
    assert len(rig.fal.submits) == 1 and rig.fal.status_calls > 6
    assert any(r.status == 503 for r in rig.fal.requests)  # the faults did happen


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
    (cancelled,) = rig.fal.jobs
    rig.fal.release()
    # A watch that outlived the cancel would fetch within one poll; a whole later job takes several.
    later = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a later job")
    await rig.wait_text(later, "Inpainted")
    fetched = [r.path for r in rig.fal.requests if r.method == "GET" and r.path.endswith(f"/requests/{cancelled}")]
    assert fetched == [] and rig.fal.result_calls == 1  # the later job's result only
    assert "Cancelled" in visible_text(final) and final.attachments == []


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
    rig = await make_rig(fal={"hold": True}, fal_settings={"max_concurrent": 1})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK, num_images=2)
    await queued_reply(rig, interaction)
    behind = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="the job behind")
    await rig.wait_text(behind, "#1 in this bot's queue")
    await rig.stop()
    rig.fal.release()
    await rig.start()
    final = await rig.wait_text(interaction, "Inpainted")
    assert len(final.attachments) == 2
    # The member sees the result a moment before the bot records it. The job behind leaves the line only when
    # the first job's run has ended, so once it is done the first job is finished and recorded.
    await rig.wait_text(behind, "Inpainted")
    assert [s["prompt"] for s in rig.fal.submits] == ["a red hat", "the job behind"]  # the same request watched
    edits, uploads = rig.discord.edits_of(final.id), upload_attempts(rig, interaction)
    assert len(uploads) >= 1, uploads

    await rig.restart()  # a further restart posts nothing again
    # Resumed jobs start with the bot; a later job's whole path is the point by which a repeat had been tried.
    later = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a later job", user="bob")
    await rig.wait_text(later, "Inpainted")
    assert upload_attempts(rig, interaction) == uploads  # not even one rate-limited try
    assert rig.discord.edits_of(final.id) == edits and len(final.attachments) == 2  # the result was not touched
    assert len(rig.discord.messages_in("general")) == 3  # the three replies, nothing posted anew
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


async def test_commands_are_synced_only_when_they_change(make_rig: MakeRig) -> None:
    rig = await make_rig()

    def puts() -> list[str]:
        return [r.path for r in rig.discord.requests if r.method == "PUT" and r.path.endswith("/commands")]

    assert len(puts()) == 1 and {c["name"] for c in rig.discord.commands[None]} >= {"inpaint", "usage", "fluxpaint"}
    await rig.restart()
    assert len(puts()) == 1  # same definitions: Discord's daily creation limit is left alone
    (marker,) = (rig.settings.storage.data_dir).glob("commands-global.sha256")
    marker.write_text("definitions of an older version")
    await rig.restart()
    assert len(puts()) == 2
    guild = rig.discord.guild_id
    await rig.stop()
    await rig.start(
        rig.settings.model_copy(update={"discord": rig.settings.discord.model_copy(update={"guild_ids": [guild]})})
    )
    assert puts()[-1].endswith(f"/guilds/{guild}/commands") and len(puts()) == 3
    assert {c["name"] for c in rig.discord.commands[guild]} >= {"inpaint", "usage", "fluxpaint"}


async def test_a_result_fal_no_longer_has_is_reported_after_a_restart(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await queued_reply(rig, interaction)
    await rig.stop()
    (request_id,) = rig.fal.jobs
    rig.fal.complete(request_id)
    rig.fal.result_expired = True  # the bot was down longer than fal keeps results
    await rig.start()
    reply = await rig.wait_text(interaction, "❌")
    assert "fal no longer has this job's result" in reply.content
    assert reply.attachments == [] and reply.components == [] and len(rig.fal.submits) == 1


async def test_a_short_token_life_moves_updates_to_the_channel_routes_before_discord_refuses(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(fal={"hold": True}, ui={"token_ttl_s": 0.001, "token_margin_s": 0})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    reply = await rig.wait_text(interaction, "Queued at fal")
    rig.fal.release()
    await rig.wait_text(interaction, "Done: results in")
    webhook_edits = [r for r in rig.discord.requests if r.route_key == WEBHOOK_EDIT]
    assert webhook_edits == [] and not any(r.status == 401 for r in rig.discord.requests)
    (posted,) = [m for m in rig.discord.messages_in("general") if m.id != reply.id]
    assert posted.content.startswith(f"<@{rig.discord.user_id('alice')}>") and len(posted.attachments) == 1


async def test_a_channel_the_bot_may_not_post_in_gets_the_results_by_dm(make_rig: MakeRig) -> None:
    from tests.fakes.discord import ManualClock

    clock = ManualClock()
    rig = await make_rig(fal={"hold": True}, discord={"clock": clock})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await queued_reply(rig, interaction)
    clock.advance(16 * 60)  # the token is dead, so only the bot's own routes remain
    rig.discord.forbidden_channels.add(rig.discord.channel_id("general"))
    rig.fal.release()

    def dm_with_results() -> bool:
        try:
            return any(m.attachments for m in rig.discord.messages_in("@alice"))
        except KeyError:
            return False

    await rig.discord.wait_for(dm_with_results, 20)
    (dm,) = rig.discord.messages_in("@alice")
    assert "couldn't post in" in dm.content and len(dm.attachments) == 1
    assert rig.discord.errors == [] and len(rig.fal.submits) == 1


async def test_finished_jobs_and_their_files_are_pruned_after_the_keep_period(make_rig: MakeRig) -> None:
    rig = await make_rig(storage={"keep_finished_days": 30})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await rig.wait_text(interaction, "Inpainted")
    (job_dir,) = (rig.settings.storage.data_dir / "jobs").iterdir()
    assert rig.bot is not None
    assert await rig.bot.service.prune() == 0  # finished just now: kept
    assert job_dir.exists() and await rig.bot.service.store.get(job_dir.name) is not None
    storage = rig.settings.storage.model_copy(update={"keep_finished_days": 1e-9})
    await rig.stop()
    await rig.start(rig.settings.model_copy(update={"storage": storage}))
    assert rig.bot is not None
    await rig.bot.service.prune()  # also runs at every start and every storage.prune_interval_s
    assert not job_dir.exists() and await rig.bot.service.store.get(job_dir.name) is None


async def test_inputs_go_through_fal_storage_when_upload_inputs_is_on(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, start=False)
    fal = rig.settings.fal.model_copy(update={"upload_inputs": True, "rest_base_url": rig.fal.base_url})
    await rig.start(rig.settings.model_copy(update={"fal": fal}))
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    await queued_reply(rig, interaction)
    rig.fal.release()
    final = await rig.wait_text(interaction, "Inpainted")
    (submitted,) = rig.fal.submits
    assert submitted["image_url"].startswith(f"{rig.fal.base_url}/files/")
    assert submitted["mask_url"].startswith(f"{rig.fal.base_url}/files/")
    assert len(rig.fal.uploads) == 2 and len(final.attachments) == 1


async def test_when_every_image_is_withheld_the_reply_still_says_so(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"nsfw": [True]})
    interaction = await rig.inpaint(COFFEE, COFFEE_MASK)
    final = await rig.wait_text(interaction, "1 image was withheld")
    assert final.attachments == [] and "Inpainted" in visible_text(final)
    assert not [i for i in final.custom_ids() if i.startswith(("fp:use:", "fp:cancel:"))]  # nothing to build on
    assert len(rig.fal.submits) == 1

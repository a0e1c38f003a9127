"""Masks without a mask file (SPEC 11) end to end in one process: the real bot against the fake Discord and the fake
fal, asserting on what a member sees and on the bodies fal received."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import sqlite3
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from bot.models import Job, JobState
from tests.conftest import MakeRig
from tests.e2e.harness import poll_until
from tests.fakes.discord import FakeInteraction
from tests.fakes.fal import SEGMENT_ENDPOINT
from tests.rig import BotRig, fixture, visible_text
from tests.test_flow import answer_to

COFFEE, COFFEE_MASK = fixture("coffee.png"), fixture("coffee_mask.png")
INPAINT_ENDPOINT = "fal-ai/flux-lora/inpainting"
PRICE_PER_MP, SEGMENT_PRICE = 0.035, 0.002  # the defaults of fal.price_per_megapixel and masks.segment_price_usd
EPHEMERAL = 64
# A roomy edit window (learnt from the headers): a job that passes through many states is not paced by Discord's
# 5 edits per 5 s per message here (tests/test_discord_limits.py is about that), so its last write is not held back.
ROOMY = {"edit_rate": (50, 5.0)}
BIG = (3000, 2000)


def _gradient_png(width: int, height: int) -> bytes:
    """A photo-sized PNG whose every pixel differs from its neighbours' somewhere: three crossing gradients."""
    red = Image.linear_gradient("L").rotate(90).resize((width, height))
    green = Image.linear_gradient("L").resize((width, height))
    blue = Image.radial_gradient("L").resize((width, height))
    out = io.BytesIO()
    Image.merge("RGB", (red, green, blue)).save(out, "PNG")
    return out.getvalue()


BIG_PHOTO = _gradient_png(*BIG)


# what fal received


def decode_uri(url: str) -> Image.Image:
    header, _, encoded = url.partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), header[:40]
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def endpoints(rig: BotRig) -> list[str]:
    """The endpoint of every job fal took, in submit order."""
    return [job.endpoint for job in rig.fal.jobs.values()]


def bodies(rig: BotRig, endpoint: str) -> list[dict[str, Any]]:
    return [job.payload for job in rig.fal.jobs.values() if job.endpoint == endpoint]


def request_ids(rig: BotRig, endpoint: str) -> list[str]:
    return [rid for rid, job in rig.fal.jobs.items() if job.endpoint == endpoint]


# what the bot stored


def stored_jobs(rig: BotRig) -> list[Job]:
    """Every row of the job store, read from the SQLite file as it is on disk."""
    path = rig.settings.storage.data_dir / "fluxpaint.sqlite3"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT data FROM jobs ORDER BY created_at").fetchall()
    return [Job.model_validate_json(data) for (data,) in rows]


def only_job(rig: BotRig) -> Job:
    (job,) = stored_jobs(rig)
    return job


# what a member sees


def usd(amount: float) -> str:
    return f"${amount:.3f}"


def mismatch(a: Image.Image, b: Image.Image) -> float:
    """The share of pixels where two masks of the same size disagree."""
    assert a.size == b.size, (a.size, b.size)
    differ = ImageChops.difference(a.convert("L"), b.convert("L")).point(lambda v: 255 if v else 0)
    return differ.histogram()[255] / (a.width * a.height)


def threshold(mask: Image.Image) -> Image.Image:
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


async def private_refusal(rig: BotRig, interaction: FakeInteraction) -> str:
    """The text of a refusal answered at once and privately: callback type 4 with the ephemeral flag."""
    await rig.discord.wait_for(lambda: bool(interaction.callbacks))
    (callback,) = interaction.callbacks
    assert callback.type == 4 and callback.data.get("flags", 0) & EPHEMERAL, callback
    original = interaction.original()
    assert original is not None and original.ephemeral
    return str(callback.data["content"])


async def usage(rig: BotRig, user: str = "alice") -> str:
    return str(await answer_to(rig, await rig.discord.slash("usage", user=user)))


async def watched(rig: BotRig, endpoint: str) -> str:
    """The request id of the job at ``endpoint`` once the bot polls its status: the bot stored the id by then."""
    calls = rig.fal.status_calls
    await poll_until(lambda: bool(request_ids(rig, endpoint)) and rig.fal.status_calls > calls, "a status call", 10)
    (request_id,) = request_ids(rig, endpoint)
    return request_id


async def cancel_button(rig: BotRig, interaction: FakeInteraction) -> tuple[int, str]:
    def shown() -> bool:
        msg = interaction.original()
        return msg is not None and any(c.startswith("fp:cancel:") for c in msg.custom_ids())

    await rig.discord.wait_for(shown)
    msg = interaction.original()
    assert msg is not None
    (button,) = [c for c in msg.custom_ids() if c.startswith("fp:cancel:")]
    return msg.id, button


async def click_answer(rig: BotRig, message_id: int, custom_id: str, user: str = "alice") -> str:
    """The private answer to a click on the button ``custom_id``."""
    return str(await answer_to(rig, await rig.discord.click(message_id, custom_id, user=user)))


# 1. words: one segmentation, then one inpainting with its mask


async def test_mask_prompt_segments_once_then_inpaints_the_found_mask_at_full_size(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"auto_advance": False, "segment_box": (0.4, 0.4, 0.6, 0.6)}, discord=ROOMY)
    interaction = await rig.inpaint(BIG_PHOTO, prompt="a blue vase", mask_prompt="the cup", output_format="png")

    searching = await rig.wait_text(interaction, "Finding “the cup” in your image")
    whole_estimate = PRICE_PER_MP * 1728 * 1152 / 1e6 + SEGMENT_PRICE  # the whole image at 2 MP until the mask is known
    assert usd(whole_estimate) in searching.content, searching.content
    assert searching.attachments == []  # no mask to show yet
    segment_id = await watched(rig, SEGMENT_ENDPOINT)  # shown before it is sent: state before side effect
    assert endpoints(rig) == [SEGMENT_ENDPOINT]  # nothing is inpainted before the mask is known
    (segment_body,) = bodies(rig, SEGMENT_ENDPOINT)
    assert segment_body["prompt"] == "the cup" and segment_body["mask_only"] is True
    assert decode_uri(segment_body["image_url"]).size == (1728, 1152)  # the photo within 2 MP

    rig.fal.complete(segment_id)
    queued = await rig.wait_text(interaction, "Queued at fal")
    assert [a.filename for a in queued.attachments] == ["mask-preview.jpg"]  # the mask found, shown at once
    assert endpoints(rig) == [SEGMENT_ENDPOINT, INPAINT_ENDPOINT]
    job = only_job(rig)
    assert job.segment_request_id == segment_id and job.crop is not None
    (inpaint_body,) = bodies(rig, INPAINT_ENDPOINT)
    sent_image, sent_mask = decode_uri(inpaint_body["image_url"]), decode_uri(inpaint_body["mask_url"])
    left, top, right, bottom = job.crop
    assert sent_image.size == sent_mask.size == (job.sent_width, job.sent_height)
    assert (right - left) * (bottom - top) < BIG[0] * BIG[1] / 4  # a crop around the mask, not the whole photo
    # the segmentation's mask, brought to the photo's size, cut to the crop and scaled as sent
    (found_bytes, _) = rig.fal.files[f"{segment_id}-mask.png"]
    found = threshold(Image.open(io.BytesIO(found_bytes)).convert("L").resize(BIG, Image.Resampling.BILINEAR))
    expected = threshold(found.crop(job.crop).resize(sent_mask.size, Image.Resampling.BILINEAR))
    assert mismatch(threshold(sent_mask), expected) < 0.005
    original = Image.open(io.BytesIO(BIG_PHOTO)).convert("RGB")
    photo_part = original.crop(job.crop).resize(sent_image.size, Image.Resampling.LANCZOS)
    assert max(ImageStat.Stat(ImageChops.difference(sent_image.convert("RGB"), photo_part)).mean) < 3

    (inpaint_id,) = request_ids(rig, INPAINT_ENDPOINT)
    rig.fal.complete(inpaint_id)
    final = await rig.wait_text(interaction, "Inpainted")
    (attachment,) = final.attachments  # the result replaces the preview
    delivered = Image.open(io.BytesIO(attachment.data))
    assert attachment.filename == "result-1.png" and delivered.format == "PNG" and delivered.size == BIG
    cost = PRICE_PER_MP * sent_image.width * sent_image.height / 1e6 + SEGMENT_PRICE
    assert f"Est. cost: {usd(cost)}" in visible_text(final), visible_text(final)
    assert usd(cost) != usd(cost - SEGMENT_PRICE)  # the figure tells the segmentation apart
    assert len(rig.fal.submits) == 2 and rig.fal.refused == [] and rig.fal.errors == []
    assert only_job(rig).cost_usd == pytest.approx(cost)


# 2. and 3. a segmentation that finds nothing, or fails


async def test_words_that_match_nothing_end_the_job_without_an_inpainting(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"segment_box": None}, budgets={"user_daily_usd": 1.0})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the unicorn")
    reply = await rig.wait_text(interaction, "❌")
    assert 'Nothing matched "the unicorn"' in reply.content, reply.content
    assert reply.attachments == [] and reply.components == []
    assert endpoints(rig) == [SEGMENT_ENDPOINT] and len(rig.fal.submits) == 1
    job = only_job(rig)
    assert job.state is JobState.FAILED and job.cost_usd == pytest.approx(SEGMENT_PRICE)
    assert f"Your spend today: {usd(SEGMENT_PRICE)}" in await usage(rig)  # the search only, not the estimate


async def test_a_segmentation_fal_refuses_charges_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"submit_5xx_count": 1, "submit_5xx_status": 400}, budgets={"user_daily_usd": 1.0})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    reply = await rig.wait_text(interaction, "❌")
    assert "fal rejected" in reply.content, reply.content
    job = only_job(rig)
    assert job.state is JobState.FAILED and job.cost_usd is None and job.segment_request_id is None
    assert f"Your spend today: {usd(0)}" in await usage(rig)


async def test_a_segmentation_that_fails_is_explained_and_nothing_is_inpainted(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"segment_fail_with": "CUDA out of memory"})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    reply = await rig.wait_text(interaction, "❌")
    assert "fal could not find the mask" in reply.content and "CUDA out of memory" in reply.content, reply.content
    assert "Traceback" not in reply.content and reply.attachments == [] and reply.components == []
    assert endpoints(rig) == [SEGMENT_ENDPOINT] and len(rig.fal.submits) == 1
    assert only_job(rig).state is JobState.FAILED


# 4., 5. and 9. refused privately, before anything is public or sent


@pytest.mark.parametrize(
    ("mask", "options", "expected"),
    [
        pytest.param(COFFEE_MASK, {"mask_prompt": "the cup"}, "you gave mask and mask_prompt", id="mask+words"),
        pytest.param(None, {"box": "10,10,50,50", "region": "top"}, "you gave box and region", id="box+region"),
        pytest.param(COFFEE_MASK, {"region": "center"}, "you gave mask and region", id="mask+region"),
        pytest.param(None, {"box": "10,10,5,50"}, "x1,y1,x2,y2 in percent", id="box-edges-swapped"),
        pytest.param(None, {"box": "10,10,50"}, "x1,y1,x2,y2 in percent", id="box-three-numbers"),
    ],
)
async def test_mask_sources_that_cannot_be_used_are_refused_privately_with_nothing_sent(
    make_rig: MakeRig, mask: bytes | None, options: dict[str, Any], expected: str
) -> None:
    rig = await make_rig()
    interaction = await rig.inpaint(COFFEE, mask, **options)
    text = await private_refusal(rig, interaction)
    assert expected in text, text
    assert rig.fal.submits == [] and rig.fal.requests == [] and stored_jobs(rig) == []
    assert not any(r.path.startswith("/cdn/") for r in rig.discord.requests)  # not even downloaded
    assert [m for m in rig.discord.messages_in("general") if not m.ephemeral] == []


async def test_blocked_terms_in_the_mask_prompt_are_refused_like_in_the_prompt(make_rig: MakeRig) -> None:
    rig = await make_rig(safety={"blocked_terms": ["Forbidden Thing"]})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the forbidden thing on the left")
    text = await private_refusal(rig, interaction)
    assert "isn't allowed on this server" in text, text
    assert rig.fal.submits == [] and rig.fal.requests == [] and stored_jobs(rig) == []


# 6. a box or a region on a large photo: fal gets the part around it, the rest of the photo stays as it was


def _box_px(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    width, height = size
    return (
        math.floor(x1 * width / 100),
        math.floor(y1 * height / 100),
        math.ceil(x2 * width / 100),
        math.ceil(y2 * height / 100),
    )


def _grown(area: tuple[int, int, int, int], px: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = area
    return max(0, left - px), max(0, top - px), min(BIG[0], right + px), min(BIG[1], bottom + px)


@pytest.mark.parametrize(
    ("options", "box", "cropped"),
    [
        pytest.param({"box": "40,40,60,60"}, (40, 40, 60, 60), True, id="box"),
        pytest.param({"box": "5, 70, 30%, 95", "mask_grow": 12}, (5, 70, 30, 95), True, id="grown-box-at-an-edge"),
        pytest.param({"region": "center"}, (25, 25, 75, 75), False, id="region-center"),
        pytest.param({"region": "right"}, (50, 0, 100, 100), False, id="region-right"),
    ],
)
async def test_a_box_or_region_on_a_large_photo_keeps_every_pixel_beyond_the_seam(
    make_rig: MakeRig, options: dict[str, Any], box: tuple[float, float, float, float], cropped: bool
) -> None:
    feather, grow = 6, int(options.get("mask_grow", 0))
    rig = await make_rig()
    interaction = await rig.inpaint(
        BIG_PHOTO, prompt="a blue vase", output_format="png", mask_feather=feather, **options
    )
    final = await rig.wait_text(interaction, "Inpainted")
    assert endpoints(rig) == [INPAINT_ENDPOINT]  # no segmentation for a box or a region
    job = only_job(rig)
    assert job.crop is not None
    (body,) = bodies(rig, INPAINT_ENDPOINT)
    sent_image, sent_mask = decode_uri(body["image_url"]), decode_uri(body["mask_url"])
    assert sent_image.size == sent_mask.size == (job.sent_width, job.sent_height)
    assert sent_image.width * sent_image.height <= 2_000_000
    area = _box_px(box, BIG)
    crop_left, crop_top, crop_right, crop_bottom = job.crop
    assert crop_left <= area[0] and crop_top <= area[1] and crop_right >= area[2] and crop_bottom >= area[3]
    if cropped:  # a small part of a large photo: fal gets that part, in fewer pixels than the whole photo at 2 MP
        assert job.crop != (0, 0, *BIG) and sent_image.width * sent_image.height < 1728 * 1152, job.crop
    # fal's image is the photo's crop, its mask the (grown) box within that crop, both at the size sent
    original = Image.open(io.BytesIO(BIG_PHOTO)).convert("RGB")
    photo_part = original.crop(job.crop).resize(sent_image.size, Image.Resampling.LANCZOS)
    assert max(ImageStat.Stat(ImageChops.difference(sent_image.convert("RGB"), photo_part)).mean) < 3
    drawn = Image.new("L", BIG, 0)
    drawn.paste(255, _grown(area, grow))
    expected_mask = threshold(drawn.crop(job.crop).resize(sent_mask.size, Image.Resampling.BILINEAR))
    assert mismatch(threshold(sent_mask), expected_mask) < 0.005

    (attachment,) = final.attachments
    delivered = Image.open(io.BytesIO(attachment.data))
    assert delivered.format == "PNG" and delivered.size == BIG
    changed = ImageChops.difference(delivered.convert("RGB"), original).convert("L").point(lambda v: 255 if v else 0)
    reach = grow + feather + 1  # the grown mask, its feathered seam, and a pixel for rounding
    outside = changed.copy()
    outside.paste(0, _grown(area, reach))
    assert outside.getbbox() is None, outside.getbbox()  # byte for byte the member's photo beyond the seam
    inside = changed.crop(area)
    assert inside.histogram()[255] == inside.width * inside.height  # fal's result fills the box itself
    assert f"Est. cost: {usd(PRICE_PER_MP * sent_image.width * sent_image.height / 1e6)}" in visible_text(final)


@pytest.mark.parametrize("region", ["center", "right"])
async def test_a_region_of_a_large_photo_sends_fal_only_the_part_around_it(make_rig: MakeRig, region: str) -> None:
    rig = await make_rig()
    interaction = await rig.inpaint(BIG_PHOTO, prompt="a blue vase", region=region)
    await rig.wait_text(interaction, "Inpainted")
    assert only_job(rig).crop != (0, 0, *BIG)


# 7. and 8. a job while fal looks for its mask: cancelled, or carried over a restart


async def test_cancel_while_fal_looks_for_the_mask_cancels_the_search_and_inpaints_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, discord=ROOMY)
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    await rig.wait_text(interaction, "Finding “the cup” in your image")
    segment_id = await watched(rig, SEGMENT_ENDPOINT)
    message_id, button = await cancel_button(rig, interaction)
    assert "Cancelled while fal looked for the mask" in await click_answer(rig, message_id, button)
    final = await rig.wait_text(interaction, "Cancelled")
    assert final.components == [] and final.attachments == []
    assert rig.fal.cancels == [(segment_id, "CANCELLATION_REQUESTED")]
    assert only_job(rig).state is JobState.CANCELLED
    rig.fal.release()
    # a runner that outlived the cancel would have sent the inpainting by the time a whole later job is done
    later = await rig.inpaint(COFFEE, COFFEE_MASK, prompt="a later job", user="bob")
    await rig.wait_text(later, "Inpainted")
    assert endpoints(rig) == [SEGMENT_ENDPOINT, INPAINT_ENDPOINT]
    assert [b["prompt"] for b in bodies(rig, INPAINT_ENDPOINT)] == ["a later job"]
    assert "Cancelled" in visible_text(final) and final.attachments == []


async def test_a_restart_while_fal_looks_for_the_mask_watches_the_same_search(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True}, discord=ROOMY)
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    await rig.wait_text(interaction, "Finding “the cup” in your image")
    segment_id = await watched(rig, SEGMENT_ENDPOINT)
    await rig.restart()
    assert only_job(rig).state is JobState.SEGMENTING and only_job(rig).segment_request_id == segment_id
    rig.fal.release()
    final = await rig.wait_text(interaction, "Inpainted")
    assert len(final.attachments) == 1
    assert Image.open(io.BytesIO(final.attachments[0].data)).size == (600, 400)
    assert endpoints(rig) == [SEGMENT_ENDPOINT, INPAINT_ENDPOINT] and len(rig.fal.submits) == 2
    await poll_until(lambda: only_job(rig).state is JobState.DONE, "the job recorded as done", 10)
    results = [m for m in rig.discord.messages_in("general") if m.attachments and m.embeds]
    assert len(results) == 1


async def test_a_cancel_while_the_search_is_being_sent_waits_for_its_request_id(make_rig: MakeRig) -> None:
    gate = asyncio.Event()
    rig = await make_rig(fal={"hold": True, "submit_gate": gate})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    await rig.wait_text(interaction, "Finding “the cup” in your image")
    await poll_until(lambda: rig.fal.submits_waiting == 1, "the search's submit on the wire", 10)
    message_id, button = await cancel_button(rig, interaction)
    # ended now, the search that fal is taking this moment would run on, never cancelled
    assert "being sent to fal right now" in await click_answer(rig, message_id, button)
    assert only_job(rig).state is JobState.SEGMENTING and rig.fal.cancels == []
    gate.set()
    segment_id = await watched(rig, SEGMENT_ENDPOINT)
    assert "Cancelled while fal looked for the mask" in await click_answer(rig, message_id, button)
    await rig.wait_text(interaction, "Cancelled")
    assert rig.fal.cancels == [(segment_id, "CANCELLATION_REQUESTED")] and endpoints(rig) == [SEGMENT_ENDPOINT]


async def test_a_search_whose_submit_went_unanswered_is_never_sent_again(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hang_submit": True}, fal_settings={"submit_timeout_s": 0.2})
    interaction = await rig.inpaint(COFFEE, prompt="a blue vase", mask_prompt="the cup")
    reply = await rig.wait_text(interaction, "❌")
    assert "find the mask" in reply.content and "not asked again" in reply.content, reply.content
    assert endpoints(rig) == [SEGMENT_ENDPOINT] and len(rig.fal.submits) == 1
    job = only_job(rig)
    assert job.state is JobState.FAILED and job.cost_usd == pytest.approx(SEGMENT_PRICE)  # the search may be paid


async def test_with_fal_storage_the_inpainting_gets_the_crop_not_the_searched_image(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"segment_box": (0.4, 0.4, 0.6, 0.6)}, discord=ROOMY, start=False)
    fal = rig.settings.fal.model_copy(update={"upload_inputs": True, "rest_base_url": rig.fal.base_url})
    await rig.start(rig.settings.model_copy(update={"fal": fal}))
    interaction = await rig.inpaint(BIG_PHOTO, prompt="a blue vase", mask_prompt="the cup")
    await rig.wait_text(interaction, "Inpainted")
    (segment_body,) = bodies(rig, SEGMENT_ENDPOINT)
    (inpaint_body,) = bodies(rig, INPAINT_ENDPOINT)
    prefix = f"{rig.fal.base_url}/files/"
    urls = [segment_body["image_url"], inpaint_body["image_url"], inpaint_body["mask_url"]]
    assert all(url.startswith(prefix) for url in urls) and len(set(urls)) == 3, urls
    sizes = [Image.open(io.BytesIO(rig.fal.files[url.removeprefix(prefix)][0])).size for url in urls]
    job = only_job(rig)
    assert sizes == [(1728, 1152), (job.sent_width, job.sent_height), (job.sent_width, job.sent_height)]
    assert len(rig.fal.uploads) == 3 and endpoints(rig) == [SEGMENT_ENDPOINT, INPAINT_ENDPOINT]


async def test_words_that_match_nothing_are_shown_as_typed(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"segment_box": None})
    interaction = await rig.inpaint(COFFEE, prompt="a vase", mask_prompt="**the** [cup](https://x.example) @everyone")
    reply = await rig.wait_text(interaction, "❌")
    assert "Nothing matched" in reply.content and "**the**" not in reply.content, reply.content
    assert "\\[cup]" in reply.content and "@everyone" not in reply.content, reply.content  # no link, no ping

"""The picture of the mask over the image in a job's reply (SPEC 11): shown once the mask is known, uploaded once,
replaced by the result."""

from __future__ import annotations

import io

from PIL import Image

from tests.conftest import MakeRig
from tests.rig import fixture

COFFEE = fixture("coffee.png")  # 600 × 400
PREVIEW = "mask-preview.jpg"


def tint(pixel: tuple[int, ...]) -> int:
    """How magenta a pixel is: red and blue above green."""
    red, green, blue = pixel[:3]
    return min(red, blue) - green


async def test_the_reply_shows_the_mask_over_the_image_until_the_result_replaces_it(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, None, box="0,0,50,50")  # the top-left quarter

    reply = await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: any(a.filename == PREVIEW for a in interaction.original().attachments))
    (preview,) = interaction.original().attachments
    with Image.open(io.BytesIO(preview.data)) as picture:
        assert picture.format == "JPEG" and max(picture.size) <= 512
        shown = picture.convert("RGB")
    width, height = shown.size
    assert tint(shown.getpixel((width // 4, height // 4))) > tint(shown.getpixel((3 * width // 4, 3 * height // 4)))

    uploads = [r for r in rig.discord.requests if r.method == "PATCH" and r.files]
    rig.fal.release()
    final = await rig.wait_text(interaction, "Inpainted")

    assert [a.filename for a in final.attachments] == ["result-1.jpg"]  # the preview made way for the result
    assert len(uploads) == 1  # later edits kept the uploaded preview instead of sending it again
    assert reply.id == final.id


async def test_a_reply_without_a_known_mask_shows_no_preview(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True})
    interaction = await rig.inpaint(COFFEE, None, mask_prompt="the crema")

    await rig.wait_text(interaction, "Finding “the crema” in your image")
    assert interaction.original().attachments == []
    rig.fal.release()
    final = await rig.wait_text(interaction, "Inpainted", timeout=30)
    assert [a.filename for a in final.attachments] == ["result-1.jpg"]


async def test_a_failed_job_s_last_text_goes_without_the_preview(make_rig: MakeRig) -> None:
    rig = await make_rig(fal={"hold": True, "fail_with": "CUDA out of memory"})
    interaction = await rig.inpaint(COFFEE, None, region="top")
    await rig.wait_text(interaction, "Queued at fal")
    await rig.discord.wait_for(lambda: any(a.filename == PREVIEW for a in interaction.original().attachments))
    rig.fal.release()
    final = await rig.wait_text(interaction, "CUDA out of memory")
    assert final.attachments == []

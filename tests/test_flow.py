"""/inpaint end to end in one process: the real discord.py and runtime against the fake Discord and fake fal."""

from __future__ import annotations

import io

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

"""/inpaint: turns the command's options into a JobService.accept call."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import SecretStr

from bot.app import FluxpaintBot
from bot.models import InpaintOptions, MaskRegion, Origin, Upload
from bot.service import JobService

MAX_PAGES = 10  # /loras answers with at most this many ephemeral messages; the option's search finds the rest


def origin_of(interaction: discord.Interaction, message_id: int | None, token_ttl_s: float) -> Origin:
    channel = interaction.channel
    nsfw = bool(getattr(channel, "is_nsfw", lambda: False)())
    roles = tuple(r.id for r in getattr(interaction.user, "roles", ()))
    assert interaction.channel_id is not None
    return Origin(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        application_id=interaction.application_id,
        interaction_id=interaction.id,
        interaction_token=SecretStr(interaction.token),
        # Discord's 15 minutes, or less when ui.token_ttl_s says so (to try the channel routes sooner)
        token_expires_at=min(interaction.expires_at, interaction.created_at + timedelta(seconds=token_ttl_s)),
        channel_nsfw=nsfw,
        upload_limit_bytes=interaction.filesize_limit,
        role_ids=roles,
        message_id=message_id,
    )


def upload_of(attachment: discord.Attachment) -> Upload:
    return Upload(
        url=attachment.url, filename=attachment.filename, size=attachment.size, content_type=attachment.content_type
    )


def _given(interaction: discord.Interaction) -> frozenset[str]:
    """The options the member typed (discord.py fills in the defaults of the others): a style's defaults fill only
    what the member left out."""
    data: dict[str, Any] = dict(interaction.data or {})
    options: list[Any] = list(data.get("options") or [])
    return frozenset(str(o["name"]) for o in options if isinstance(o, dict) and "name" in o)


class Inpaint(commands.Cog):
    def __init__(self, service: JobService) -> None:
        self.service = service

    @app_commands.command(description="Repaint the masked part of an image with FLUX")
    @app_commands.describe(
        image="The photo to edit (PNG, JPEG, WebP, GIF, AVIF, BMP or TIFF)",
        prompt="What to paint in the masked area",
        mask="White = repaint, black = keep. Leave out to repaint the image's transparent areas",
        strength="How much to change the masked area: 0.01 barely, 1 completely (default 0.85)",
        num_images="How many versions to make (default 1)",
        num_inference_steps="More steps: more detail, slower (default 28)",
        guidance_scale="How closely to follow the prompt (default 3.5)",
        seed="Use the same seed to repeat a result (random if left out)",
        output_format="File format of the results (default jpeg)",
        invert_mask="Repaint the black part of the mask instead of the white part",
        mask_prompt="No mask file? Say what to repaint (“the sky”, “the dog's collar”)",
        box="Or repaint a box: x1,y1,x2,y2 in percent of width and height, like 25,10,75,60",
        region="Or repaint a part of the image",
        mask_grow="Grow the mask by this many pixels (default 0)",
        mask_feather="Soften the edge where the result meets your photo, in pixels (default 8)",
        style="A preset of this server: prompt, LoRAs and settings (see /loras)",
        lora="A LoRA to paint with (see /loras)",
        lora_scale="How strongly the LoRA applies, 0 to 4 (default: the LoRA's own)",
        lora2="A second LoRA",
        lora2_scale="How strongly the second LoRA applies, 0 to 4",
    )
    @app_commands.guild_only()
    async def inpaint(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 2000],
        mask: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] = 0.85,
        num_images: app_commands.Range[int, 1, 4] = 1,
        num_inference_steps: app_commands.Range[int, 1, 50] = 28,
        guidance_scale: app_commands.Range[float, 0.0, 35.0] = 3.5,
        seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,
        output_format: Literal["jpeg", "png"] = "jpeg",
        invert_mask: bool = False,
        mask_prompt: app_commands.Range[str, 1, 200] | None = None,
        box: app_commands.Range[str, 1, 100] | None = None,
        region: MaskRegion | None = None,
        mask_grow: app_commands.Range[int, 0, 128] = 0,
        mask_feather: app_commands.Range[int, 0, 64] = 8,
        style: app_commands.Range[str, 1, 100] | None = None,
        lora: app_commands.Range[str, 1, 500] | None = None,
        lora_scale: app_commands.Range[float, 0.0, 4.0] | None = None,
        lora2: app_commands.Range[str, 1, 500] | None = None,
        lora2_scale: app_commands.Range[float, 0.0, 4.0] | None = None,
    ) -> None:
        chosen = {
            "prompt": prompt,
            "strength": strength,
            "num_images": num_images,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "output_format": output_format,
            "invert_mask": invert_mask,
            "mask_prompt": mask_prompt,
            "box": box,
            "region": region,
            "mask_grow": mask_grow,
            "mask_feather": mask_feather,
            "style": style,
            "lora": lora,
            "lora_scale": lora_scale,
            "lora2": lora2,
            "lora2_scale": lora2_scale,
        }
        given = _given(interaction) | {"prompt"}
        # only what the member typed is "set", so that a style's defaults fill the rest (model_fields_set)
        options = InpaintOptions(**{name: value for name, value in chosen.items() if name in given})
        ttl_s = self.service.settings.ui.token_ttl_s
        # Refusals that need no download are answered privately (the tree's on_error), before anything is public.
        await self.service.check(options, origin_of(interaction, None, ttl_s), mask_file=mask is not None)
        callback = await interaction.response.defer(thinking=True)  # within the 3 s deadline, before any download
        message_id = callback.message_id if callback is not None else None
        if message_id is None:
            message_id = (await interaction.original_response()).id
        origin = origin_of(interaction, message_id, ttl_s)
        await self.service.accept(options, origin, upload_of(image), upload_of(mask) if mask else None)

    @inpaint.autocomplete("style")
    async def _styles(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await self._suggest(interaction, current, "style")

    @inpaint.autocomplete("lora")
    @inpaint.autocomplete("lora2")
    async def _loras(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await self._suggest(interaction, current, "lora")

    async def _suggest(
        self, interaction: discord.Interaction, current: str, kind: Literal["lora", "style"]
    ) -> list[app_commands.Choice[str]]:
        found = await self.service.library.suggest(interaction.guild_id, current, kind)
        return [app_commands.Choice(name=choice.name, value=choice.value) for choice in found]

    @app_commands.command(name="loras", description="The styles and LoRAs you can use in this server")
    @app_commands.guild_only()
    async def list_loras(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        pages = await self.service.library.pages(interaction.guild_id)
        for page in pages[:MAX_PAGES]:
            await interaction.followup.send(page, ephemeral=True)
        if len(pages) > MAX_PAGES:
            await interaction.followup.send(
                f"…and {len(pages) - MAX_PAGES} more pages: type a few letters in `/inpaint lora` to search them all.",
                ephemeral=True,
            )


async def setup(bot: FluxpaintBot) -> None:
    await bot.add_cog(Inpaint(bot.service))

"""The mask painter's buttons (SPEC 12): "Paint the mask" on a job that waits for one, "Repaint" on a result. A
link in a public message would let anyone in the channel paint, so each press answers the member privately with a
fresh single-use link."""

from __future__ import annotations

from typing import Any

import discord

from bot.app import FluxpaintBot, refuse_privately, start_in_channel
from bot.iterate import Verb
from bot.models import Job
from cogs.buttons import JobItem
from cogs.inpaint import origin_of

JOB = r"(?P<job_id>[0-9a-f]{32})"


def link_view(url: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label="Paint the mask", style=discord.ButtonStyle.link, url=url))
    return view


async def _send_link(interaction: discord.Interaction[FluxpaintBot], job_id: str) -> None:
    service = interaction.client.service
    url = await refuse_privately(interaction, service.paint_link(job_id, user_id=interaction.user.id))
    if url is None:
        return
    ttl = service.settings.web.link_ttl_s
    text = (
        f"Your link to paint the mask (it works once, for up to {ttl / 60:.0f} minutes; press the button again "
        "for a new one):"
    )
    if interaction.response.is_done():
        await interaction.followup.send(text, view=link_view(url), ephemeral=True)
    else:
        await interaction.response.send_message(text, view=link_view(url), ephemeral=True)


class PaintButton(JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:paint:{JOB}"):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(label="Paint the mask", style=discord.ButtonStyle.primary, custom_id=f"fp:paint:{job_id}")
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await _send_link(interaction, self.job_id)


class RepaintButton(
    JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"fp:repaint:{JOB}:(?P<number>[1-4])"
):
    def __init__(self, job_id: str, number: int) -> None:
        custom_id = f"fp:repaint:{job_id}:{number}"
        super().__init__(discord.ui.Button(label="Repaint", style=discord.ButtonStyle.secondary, custom_id=custom_id))
        self.job_id, self.number = job_id, number

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        service = interaction.client.service
        origin = origin_of(interaction, None, service.settings.ui.token_ttl_s)
        clicked = interaction.message.id if interaction.message is not None else None
        await interaction.response.defer(ephemeral=True, thinking=True)
        draft = await refuse_privately(
            interaction,
            service.draft(self.job_id, Verb.REPAINT, origin, index=self.number - 1, message_id=clicked),
        )
        if draft is None:
            return
        reference = (
            discord.MessageReference(
                message_id=draft.message_id, channel_id=origin.channel_id, fail_if_not_exists=False
            )
            if draft.message_id is not None
            else None
        )

        async def begin(message_id: int) -> Job:
            channel_origin = origin.model_copy(update={"message_id": message_id, "reply_via": "channel"})
            return await service.accept_draft(draft, channel_origin)

        job = await start_in_channel(
            interaction,
            reference=reference,
            intro=f"🖌️ Repainting for <@{origin.user_id}>…",
            begin=begin,
            release=lambda: service.release_check(origin),
        )
        if job is not None:
            await _send_link(interaction, job.id)


async def setup(bot: FluxpaintBot) -> None:
    bot.add_dynamic_items(PaintButton, RepaintButton)

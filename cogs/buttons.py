"""Buttons that keep working after a restart: their custom_id carries the job id."""

from __future__ import annotations

import re
from typing import Any, Self

import discord

from bot.app import FluxpaintBot, answer_privately
from bot.progress import CANCEL_PREFIX


class JobItem:
    """A button whose custom id carries a job id, and a result's number when its template names one: rebuilt
    from the id alone, so it works after restarts. Mixed in before ``discord.ui.DynamicItem``."""

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        if match.groupdict().get("number") is not None:
            return cls(match["job_id"], int(match["number"]))  # type: ignore[call-arg]
        return cls(match["job_id"])  # type: ignore[call-arg]


class CancelButton(
    JobItem, discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"{CANCEL_PREFIX}(?P<job_id>[0-9a-f]{{32}})"
):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"{CANCEL_PREFIX}{job_id}")
        )
        self.job_id = job_id

    async def callback(self, interaction: discord.Interaction[FluxpaintBot]) -> None:  # type: ignore[override]
        await interaction.response.defer(ephemeral=True, thinking=True)
        await answer_privately(interaction, self._cancel(interaction))

    async def _cancel(self, interaction: discord.Interaction[FluxpaintBot]) -> str:
        result = await interaction.client.service.cancel(
            self.job_id, user_id=interaction.user.id, can_manage=interaction.permissions.manage_messages
        )
        return result.message


async def setup(bot: FluxpaintBot) -> None:
    bot.add_dynamic_items(CancelButton)

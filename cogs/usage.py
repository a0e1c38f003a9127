"""/usage and /history: a member's own spend and jobs, shown only to them."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import FluxpaintBot
from bot.service import JobService


class Usage(commands.Cog):
    def __init__(self, service: JobService) -> None:
        self.service = service

    @app_commands.command(description="Show what your inpainting jobs have cost")
    async def usage(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self.service.usage_text(user_id=interaction.user.id, guild_id=interaction.guild_id)
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(description="Your last ten jobs in this server, with links to their results")
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self.service.history_text(user_id=interaction.user.id, guild_id=interaction.guild_id)
        await interaction.followup.send(text, ephemeral=True)


async def setup(bot: FluxpaintBot) -> None:
    await bot.add_cog(Usage(bot.service))

"""/fluxpaint: the server admins' group (usage, budgets, pause, bans, limits); every answer is ephemeral."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import FluxpaintBot
from bot.service import JobService


def _guild(interaction: discord.Interaction) -> int:
    if interaction.guild_id is None:  # guild_only keeps this from happening; a DM gets a clear answer anyway
        raise app_commands.NoPrivateMessage()
    return interaction.guild_id


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Admin(commands.GroupCog, group_name="fluxpaint", group_description="Run fluxpaint in this server"):
    def __init__(self, service: JobService) -> None:
        self.service = service
        self.admin = service.admin
        super().__init__()

    async def _answer(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(description="What each member spent in a period")
    @app_commands.describe(days="How many days back to count (default 30)")
    async def usage(self, interaction: discord.Interaction, days: app_commands.Range[int, 1, 366] = 30) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(interaction, await self.admin.usage_report(_guild(interaction), days=days))

    @app_commands.command(description="Set this server's budgets in USD; leave an option out to keep it")
    @app_commands.describe(
        member_daily="Most one member may spend per day (UTC); 0 stops spending",
        server_monthly="Most this server may spend per calendar month (UTC); 0 stops spending",
        reset="Go back to the bot owner's defaults for both budgets",
    )
    async def budget(
        self,
        interaction: discord.Interaction,
        member_daily: app_commands.Range[float, 0.0, 100_000.0] | None = None,
        server_monthly: app_commands.Range[float, 0.0, 1_000_000.0] | None = None,
        reset: bool = False,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        text = await self.admin.set_budgets(
            _guild(interaction),
            by=interaction.user.id,
            user_daily_usd=member_daily,
            guild_monthly_usd=server_monthly,
            reset=reset,
        )
        await self._answer(interaction, text)

    @app_commands.command(description="Stop taking new /inpaint jobs in this server")
    async def pause(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(
            interaction, await self.service.set_paused(_guild(interaction), True, by=interaction.user.id)
        )

    @app_commands.command(description="Take /inpaint jobs again in this server")
    async def resume(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(
            interaction, await self.service.set_paused(_guild(interaction), False, by=interaction.user.id)
        )

    @app_commands.command(description="Stop a member from using /inpaint here")
    @app_commands.describe(member="Who to ban", reason="Shown in the admin log")
    async def ban(
        self,
        interaction: discord.Interaction,
        member: discord.User,
        reason: app_commands.Range[str, 1, 200] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        text = await self.service.ban(_guild(interaction), member.id, by=interaction.user.id, reason=reason)
        await self._answer(interaction, text)

    @app_commands.command(description="Let a banned member use /inpaint again")
    @app_commands.describe(member="Who to unban")
    async def unban(self, interaction: discord.Interaction, member: discord.User) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(
            interaction, await self.service.unban(_guild(interaction), member.id, by=interaction.user.id)
        )

    @app_commands.command(description="Show the limits, budgets and state that apply in this server")
    async def limits(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(interaction, await self.admin.limits_text(_guild(interaction)))


async def setup(bot: FluxpaintBot) -> None:
    await bot.add_cog(Admin(bot.service))

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
    lora = app_commands.Group(name="lora", description="This server's own LoRAs")
    style = app_commands.Group(name="style", description="This server's own styles")

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.admin = service.admin
        self.library = service.library
        super().__init__()

    @lora.command(name="add", description="Add a LoRA members can pick by name")
    @app_commands.describe(
        name="1 to 32 of a-z, 0-9, - and _",
        path="https link to the .safetensors file (Hugging Face, Civitai or fal)",
        scale="Default strength, 0 to 4 (default 1)",
        trigger_words="Words the LoRA was trained on, comma-separated; put in front of prompts",
        description="Shown in the autocomplete list and /loras",
    )
    async def lora_add(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 32],
        path: app_commands.Range[str, 8, 1000],
        scale: app_commands.Range[float, 0.0, 4.0] = 1.0,
        trigger_words: app_commands.Range[str, 1, 1000] | None = None,
        description: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        text = await self.library.add_lora(
            _guild(interaction),
            by=interaction.user.id,
            name=name,
            path=path,
            scale=scale,
            trigger_words=trigger_words or "",
            description=description or "",
        )
        await self._answer(interaction, text)

    @lora.command(name="remove", description="Remove one of this server's LoRAs")
    @app_commands.describe(name="The LoRA's name")
    async def lora_remove(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 32]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(
            interaction, await self.library.remove(_guild(interaction), "lora", name, by=interaction.user.id)
        )

    @style.command(name="add", description="Add a style: a prompt template, LoRAs and default settings")
    @app_commands.describe(
        name="1 to 32 of a-z, 0-9, - and _",
        prompt="A template holding {prompt}, like: pixel art of {prompt}, 16-bit",
        description="Shown in the autocomplete list and /loras",
        loras="LoRA names with optional scales, like: pixel-art:0.8, watercolor",
        strength="Default strength when the member gives none",
        num_inference_steps="Default steps when the member gives none",
        guidance_scale="Default guidance when the member gives none",
    )
    async def style_add(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 32],
        prompt: app_commands.Range[str, 8, 1000] = "{prompt}",
        description: app_commands.Range[str, 1, 100] | None = None,
        loras: app_commands.Range[str, 1, 500] | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] | None = None,
        num_inference_steps: app_commands.Range[int, 1, 50] | None = None,
        guidance_scale: app_commands.Range[float, 0.0, 35.0] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        text = await self.library.add_style(
            _guild(interaction),
            by=interaction.user.id,
            name=name,
            prompt=prompt,
            description=description or "",
            lora_names=loras or "",
            strength=strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
        )
        await self._answer(interaction, text)

    @style.command(name="remove", description="Remove one of this server's styles")
    @app_commands.describe(name="The style's name")
    async def style_remove(self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 32]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before any slow work (3 s)
        await self._answer(
            interaction, await self.library.remove(_guild(interaction), "style", name, by=interaction.user.id)
        )

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

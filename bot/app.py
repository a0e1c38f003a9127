"""FluxpaintBot and FluxpaintTree: loads cogs, registers buttons, syncs commands when they change, answers errors."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.config import DiscordSettings, Settings
from bot.errors import UserFacingError, user_message

if TYPE_CHECKING:
    from bot.service import JobService

log = logging.getLogger(__name__)

T = TypeVar("T")

DISCORD_CONNECTIONS = 32  # kept alive and reused; the request budget, not the pool, sets the pace
EXTENSIONS = ("cogs.inpaint", "cogs.buttons", "cogs.iterate", "cogs.paint", "cogs.usage", "cogs.admin")


def point_at(discord_settings: DiscordSettings) -> None:
    """Send discord.py to another Discord (the end-to-end rig's fake on loopback) when configured."""
    if discord_settings.api_base_url:
        discord.http.Route.BASE = f"{discord_settings.api_base_url}/api/v10"
    if discord_settings.gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(discord_settings.gateway_url)


async def reply_once(interaction: discord.Interaction, text: str) -> None:
    """Tell the member what went wrong: in the deferred reply if there is one, else ephemerally."""
    try:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=f"❌ {text}", embed=None, attachments=[], view=None)
        else:
            await interaction.response.send_message(f"❌ {text}", ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not report an error to the member (%s %s)", exc.status, exc.code)


async def answer_privately(interaction: discord.Interaction, work: Awaitable[str]) -> None:
    """A component's answer, whatever happens: discord.py only logs what a button's callback raises, and the
    member would be left looking at "thinking…". The interaction must be deferred (ephemeral) already."""
    try:
        text = await work
    except Exception as exc:
        if not isinstance(exc, UserFacingError):
            log.exception("component %s failed", interaction.data and interaction.data.get("custom_id"))
        text = user_message(exc)
    try:
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer a component (%s %s)", exc.status, exc.code)


async def refuse_privately(interaction: discord.Interaction, work: Awaitable[T]) -> T | None:
    """A component's or a modal's checks before it is answered: a refusal goes to the member alone (ephemeral)
    and gives None; nothing public is left."""
    try:
        return await work
    except Exception as exc:
        if not isinstance(exc, UserFacingError):
            log.exception("component %s failed", interaction.data and interaction.data.get("custom_id"))
        await reply_once(interaction, user_message(exc))
        return None


TAKE_BACK_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)  # discord.py lets these through
CANNOT_REPLY = 160002  # a reply needs Read Message History in the channel


async def _post_intro(
    channel: discord.PartialMessageable, intro: str, reference: discord.MessageReference | None, nonce: str
) -> discord.Message | None:
    """The new job's message, answering ``reference`` when the bot may; None when it cannot post at all."""
    mentions = discord.AllowedMentions.none()
    try:
        if reference is not None:
            try:
                return await channel.send(
                    intro, reference=reference, mention_author=False, allowed_mentions=mentions, nonce=nonce
                )
            except discord.HTTPException as exc:
                if exc.code != CANNOT_REPLY:
                    raise
        return await channel.send(intro, allowed_mentions=mentions, nonce=nonce)
    except TAKE_BACK_ERRORS as exc:
        log.warning("could not post a new job's reply (%s)", getattr(exc, "code", type(exc).__name__))
        return None


async def start_in_channel(
    interaction: discord.Interaction,
    *,
    reference: discord.MessageReference | None,
    intro: str,
    begin: Callable[[int], Awaitable[T]],
    release: Callable[[], None] = lambda: None,
) -> T | None:
    """Start a job whose reply is a new message of the bot's answering ``reference`` (SPEC 10): the clicker is
    answered privately, the message is posted, and ``begin(message_id)`` makes the job. A refusal takes the message
    away again and is told to the clicker alone; ``release`` is called when ``begin`` is never reached."""
    if not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)
    assert interaction.channel_id is not None
    channel = interaction.client.get_partial_messageable(interaction.channel_id, guild_id=interaction.guild_id)
    # a nonce: discord.py retries a POST that got a 5xx, and one click must not post two messages
    reply = await _post_intro(channel, intro, reference, nonce=f"fpi{interaction.id}"[:25])
    if reply is None:
        release()
        await reply_once(interaction, "I can't post in this channel (Send Messages), so I can't start a job here.")
        return None
    try:
        started = await begin(reply.id)
    except Exception as exc:
        if not isinstance(exc, UserFacingError):
            log.exception("a job from %s could not start", interaction.data and interaction.data.get("custom_id"))
        await _take_back(reply, user_message(exc))
        await reply_once(interaction, user_message(exc))
        return None
    try:
        await interaction.edit_original_response(content=f"Started: {reply.jump_url}")
    except TAKE_BACK_ERRORS as exc:
        log.warning("could not tell the member where their job is (%s)", getattr(exc, "code", type(exc).__name__))
    return started


async def _take_back(reply: discord.Message, text: str) -> None:
    """A refused job's message goes; if it cannot, it says why instead of promising a job."""
    try:
        await reply.delete()
        return
    except TAKE_BACK_ERRORS as exc:
        log.warning("could not take back a refused job's reply (%s)", getattr(exc, "code", type(exc).__name__))
    try:
        await reply.edit(content=f"❌ {text}")
    except TAKE_BACK_ERRORS as exc:
        log.warning("could not correct a refused job's reply (%s)", getattr(exc, "code", type(exc).__name__))


class FluxpaintTree(app_commands.CommandTree["FluxpaintBot"]):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        cause: BaseException = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, app_commands.CheckFailure) and not isinstance(cause, app_commands.CommandInvokeError):
            await reply_once(interaction, str(cause) or "You can't use this command here.")
            return
        if not isinstance(cause, UserFacingError):
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=cause)
        await reply_once(interaction, user_message(cause))


class FluxpaintBot(commands.Bot):
    def __init__(self, settings: Settings, *, http_trace: aiohttp.TraceConfig) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            tree_cls=FluxpaintTree,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            http_trace=http_trace,
            # Connections are kept and reused: a burst of commands must not open hundreds of TLS handshakes on the
            # event loop at once (each costs milliseconds of CPU there).
            connector=aiohttp.TCPConnector(limit=DISCORD_CONNECTIONS),
            # several processes on one PostgreSQL store (SPEC 13): each runs its shard; Discord sends a guild's
            # events to one shard, and any process may post any job's results (REST needs no gateway)
            shard_id=settings.discord.shard_ids[0] if settings.discord.shard_ids else None,
            shard_count=settings.discord.shard_count if settings.discord.shard_ids else None,
        )
        self.settings = settings
        self._service: JobService | None = None

    @property
    def service(self) -> JobService:
        if self._service is None:
            raise RuntimeError("FluxpaintBot.service used before attach()")
        return self._service

    def attach(self, service: JobService) -> None:
        self._service = service

    async def setup_hook(self) -> None:
        for name in EXTENSIONS:
            await self.load_extension(name)
        await self.sync_commands()
        await self.service.start()

    async def sync_commands(self) -> None:
        """Sync only when the definitions changed: Discord allows 200 command creations a day per guild."""
        data_dir = self.settings.storage.data_dir
        targets: list[discord.Object | None] = [discord.Object(gid) for gid in self.settings.discord.guild_ids]
        for guild in targets or [None]:
            if guild is not None:
                self.tree.copy_global_to(guild=guild)
            payload = [cmd.to_dict(self.tree) for cmd in self.tree.get_commands(guild=guild)]
            digest = hashlib.sha256(
                json.dumps([self.application_id, payload], sort_keys=True, default=str).encode()
            ).hexdigest()
            marker = Path(data_dir) / f"commands-{guild.id if guild else 'global'}.sha256"
            if marker.exists() and marker.read_text().strip() == digest:
                log.info("commands unchanged for %s; not syncing", guild.id if guild else "global")
                continue
            await self.tree.sync(guild=guild)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(digest)
            log.info("synced %d command(s) to %s", len(payload), guild.id if guild else "global")

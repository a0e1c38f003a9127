"""The real bot runtime (bot.cli.runtime) in this process against the fake Discord and the fake fal.

``BotRig.start()`` and ``stop()`` can be called again and again on the same data dir, which is how the
restart tests work: a new runtime resumes whatever the previous one left in the SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import FluxpaintBot
from bot.cli import runtime
from bot.config import Settings
from tests.fakes.discord import FakeDiscord, FakeInteraction, FakeMessage
from tests.fakes.fal import FakeFal

FIXTURES = Path(__file__).parent / "fixtures"
# The fake Discord sends its one GUILD_CREATE right after READY; discord.py would wait 2 s for more before "ready".
GUILD_READY_TIMEOUT_S = 0.05


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def host_of(base_url: str) -> str:
    return base_url.split("://", 1)[1].rstrip("/")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_settings(data_dir: Path, discord: FakeDiscord, fal: FakeFal, /, **sections: dict[str, Any]) -> Settings:
    """Settings for a bot that talks only to the two fakes; ``sections`` override per test."""
    base: dict[str, Any] = {
        "discord": {
            "token": discord.bot_token,
            "api_base_url": discord._base(),
            "gateway_url": discord.gateway_url,
            "attachment_hosts": [host_of(discord._base())],
        },
        "fal": {
            "key": fal.key,
            "base_url": fal.base_url,
            "media_hosts": [fal.media_host],
            "status_mode": "poll",
            "poll_interval_s": 0.05,
            "max_poll_interval_s": 0.05,
            "submit_timeout_s": 5,
            "request_timeout_s": 5,
        },
        "storage": {"data_dir": str(data_dir)},
    }
    return Settings(**_merge(base, sections))


class BotRig:
    def __init__(self, discord: FakeDiscord, fal: FakeFal, settings: Settings) -> None:
        self.discord = discord
        self.fal = fal
        self.settings = settings
        self.bot: FluxpaintBot | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._conn: asyncio.Task[None] | None = None

    async def start(self, settings: Settings | None = None) -> FluxpaintBot:
        if settings is not None:
            self.settings = settings
        stack = contextlib.AsyncExitStack()
        bot = await stack.enter_async_context(runtime(self.settings))
        bot._connection.guild_ready_timeout = GUILD_READY_TIMEOUT_S  # bot.app builds the Client; set before connect
        await bot.login(self.settings.discord.token.get_secret_value())
        self._conn = asyncio.create_task(bot.connect(reconnect=False))
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        self._stack, self.bot = stack, bot
        return bot

    async def stop(self) -> None:
        """A graceful stop, as on SIGTERM: the runtime closes the service, the notifier and the bot."""
        if self._stack is not None:
            await self._stack.aclose()
        if self._conn is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._conn, 5)
        self._stack, self.bot, self._conn = None, None, None

    async def restart(self) -> FluxpaintBot:
        await self.stop()
        return await self.start()

    # members

    async def inpaint(
        self,
        image: bytes,
        mask: bytes | None = None,
        *,
        prompt: str = "a red hat",
        user: str = "alice",
        channel: str = "general",
        image_name: str = "photo.png",
        mask_name: str = "mask.png",
        **options: Any,
    ) -> FakeInteraction:
        attachments: dict[str, tuple[str, bytes, str | None]] = {"image": (image_name, image, None)}
        if mask is not None:
            attachments["mask"] = (mask_name, mask, None)
        return await self.discord.slash(
            "inpaint",
            user=user,
            channel=channel,
            options={"prompt": prompt, **options},
            attachments=attachments,
        )

    async def reply_of(self, interaction: FakeInteraction) -> FakeMessage:
        await self.discord.wait_for(lambda: interaction.original() is not None)
        original = interaction.original()
        assert original is not None
        return original

    async def wait_text(self, interaction: FakeInteraction, needle: str, timeout: float = 10) -> FakeMessage:  # noqa: ASYNC109
        """Wait until the member's reply shows ``needle`` (in content or embed)."""

        def shown() -> bool:
            msg = interaction.original()
            return msg is not None and needle in visible_text(msg)

        await self.discord.wait_for(shown, timeout)
        msg = interaction.original()
        assert msg is not None
        return msg


def visible_text(message: FakeMessage) -> str:
    parts = [message.content or ""]
    for embed in message.embeds:
        parts.append(embed.get("title") or "")
        parts.append(embed.get("description") or "")
        parts.extend(f"{f.get('name')}: {f.get('value')}" for f in embed.get("fields") or [])
        parts.append((embed.get("footer") or {}).get("text") or "")
    return "\n".join(parts)


@contextlib.asynccontextmanager
async def running(rig: BotRig) -> AsyncIterator[BotRig]:
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()

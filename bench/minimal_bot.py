"""The benchmarks' baseline: a minimal /inpaint bot that edits its reply on every fal status change, with no pacing.

It is what a naive bot does, not product code: one file, no store, no retries, no limits of its own. Run it as
``python -m bench.minimal_bot --config config.toml`` with the same TOML (and ``DISCORD_TOKEN``, ``FAL_KEY``) as the
real bot; it reads only ``discord`` (the fake's addresses) and ``fal`` (base URL, endpoint, key).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import logging
import resource
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bot.app import point_at
from bot.config import FalSettings, Settings, load_settings

log = logging.getLogger("bench.minimal_bot")


def data_uri(data: bytes, content_type: str | None) -> str:
    return f"data:{content_type or 'image/png'};base64,{base64.b64encode(data).decode()}"


def status_text(status: dict[str, Any]) -> str:
    if status.get("status") == "IN_QUEUE":
        return f"🕒 Queued at fal: position {status.get('queue_position')}"
    return "🎨 Generating…"


class MinimalBot(discord.Client):
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        super().__init__(intents=discord.Intents.default(), allowed_mentions=discord.AllowedMentions.none())
        self.fal: FalSettings = settings.fal
        self.auth = {"Authorization": f"Key {settings.fal.key.get_secret_value()}"}
        self.session = session
        self.tree: app_commands.CommandTree[MinimalBot] = app_commands.CommandTree(self)
        self.tree.add_command(self._inpaint_command())

    async def setup_hook(self) -> None:
        await self.tree.sync()

    def _inpaint_command(self) -> app_commands.Command[Any, ..., None]:
        @app_commands.command(name="inpaint", description="Repaint the masked part of an image")
        @app_commands.describe(image="Photo to edit", mask="White = repaint", prompt="What to paint")
        @app_commands.guild_only()
        async def inpaint(
            interaction: discord.Interaction, image: discord.Attachment, mask: discord.Attachment, prompt: str
        ) -> None:
            await interaction.response.defer(thinking=True)
            await self.run_job(interaction, image, mask, prompt)

        return inpaint

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> bytes:
        async with self.session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            return await resp.read()

    async def _edit(self, interaction: discord.Interaction, **fields: Any) -> None:
        try:
            await interaction.edit_original_response(**fields)
        except discord.HTTPException as exc:  # e.g. 401 once the token expired: carry on, as a naive bot does
            log.warning("edit failed: %s %s", exc.status, exc.code)

    async def submit(self, image: discord.Attachment, mask: discord.Attachment, prompt: str) -> dict[str, Any]:
        """Download both attachments and queue the job at fal; fal's answer (request id and URLs)."""
        image_bytes, mask_bytes = await asyncio.gather(self._get(image.url), self._get(mask.url))
        body = {
            "prompt": prompt,
            "image_url": data_uri(image_bytes, image.content_type),
            "mask_url": data_uri(mask_bytes, mask.content_type),
        }
        url = f"{self.fal.base_url}/{self.fal.endpoint}"
        async with self.session.post(url, json=body, headers=self.auth) as resp:
            resp.raise_for_status()
            handle: dict[str, Any] = await resp.json()
            return handle

    async def run_job(
        self, interaction: discord.Interaction, image: discord.Attachment, mask: discord.Attachment, prompt: str
    ) -> None:
        auth = self.auth
        handle = await self.submit(image, mask, prompt)
        shown = ""
        async with self.session.get(f"{handle['status_url']}/stream", headers=auth) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators and ": keep-alive" comments
                status = json.loads(line[5:])
                if status["status"] == "COMPLETED":
                    break
                if (text := status_text(status)) != shown:
                    shown = text
                    await self._edit(interaction, content=text)
        result = json.loads(await self._get(handle["response_url"], auth))
        files = [
            discord.File(io.BytesIO(await self._get(img["url"])), filename=img.get("file_name") or f"result-{n}.jpg")
            for n, img in enumerate(result["images"])
        ]
        await self._edit(interaction, content=f"Inpainted: {prompt}", attachments=files)


async def main(config: str | None) -> None:
    settings = load_settings(config)
    point_at(settings.discord)
    # every job holds an SSE connection to fal: aiohttp's default pool of 100 would stall the 101st job
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        MinimalBot(settings, session) as client,
    ):
        await client.start(settings.discord.token.get_secret_value())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.minimal_bot", description=__doc__)
    parser.add_argument("--config", help="the TOML file the real bot would read")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a thousand streams need a thousand sockets
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main(args.config))

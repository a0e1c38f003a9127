"""Fixtures of the end-to-end rig: fakes in the test process, the bot as a real subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BotProcess, config_for
from tests.fakes.discord import FakeDiscord, start_fake_discord
from tests.fakes.fal import FakeFal, start_fake_fal


@dataclass
class E2E:
    discord: FakeDiscord
    fal: FakeFal
    bot: BotProcess


MakeE2E = Callable[..., Awaitable[E2E]]


@pytest.fixture
async def make_e2e(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[MakeE2E]:
    made: list[E2E] = []

    async def make(
        *,
        fake_discord: dict[str, Any] | None = None,
        fake_fal: dict[str, Any] | None = None,
        **sections: dict[str, Any],
    ) -> E2E:
        """Knobs of the fakes, and config sections on top of the rig's (``fal={"max_concurrent": 1}``)."""
        discord = await start_fake_discord(aiohttp_server, **(fake_discord or {}))
        fal = await start_fake_fal(aiohttp_server, **(fake_fal or {}))
        config = config_for(tmp_path, discord, fal, sections)
        rig = E2E(discord, fal, BotProcess(tmp_path, discord, fal, config))
        made.append(rig)
        await rig.bot.start()
        return rig

    yield make
    for rig in made:
        await rig.bot.close()
        if rig.fal.hold is not None:
            rig.fal.release()
        for event in (rig.discord.upload_gate, rig.discord.upload_hold, rig.discord.cdn_hold):
            if event is not None:
                event.set()

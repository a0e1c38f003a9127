"""Shared fixtures: the bot runtime in this process against the fake Discord and the fake fal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord import start_fake_discord
from tests.fakes.fal import start_fake_fal
from tests.rig import BotRig, make_settings

MakeRig = Callable[..., Awaitable[BotRig]]


@pytest.fixture
async def make_rig(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[MakeRig]:
    """``await make_rig(discord={...knobs}, fal={...knobs}, limits={...}, ...)`` starts both fakes and the bot."""
    rigs: list[BotRig] = []

    async def make(
        *,
        discord: dict[str, Any] | None = None,
        fal: dict[str, Any] | None = None,
        fal_settings: dict[str, Any] | None = None,
        start: bool = True,
        **sections: Any,
    ) -> BotRig:
        """``discord`` and ``fal`` are knobs of the fakes; ``fal_settings`` and ``sections`` override Settings."""
        if fal_settings:
            sections["fal"] = fal_settings
        fake_discord = await start_fake_discord(aiohttp_server, **(discord or {}))
        fake_fal = await start_fake_fal(aiohttp_server, **(fal or {}))
        rig = BotRig(fake_discord, fake_fal, make_settings(tmp_path / "data", fake_discord, fake_fal, **sections))
        rigs.append(rig)
        if start:
            await rig.start()
        return rig

    yield make
    for rig in rigs:
        await rig.stop()
        if rig.fal.hold is not None:
            rig.fal.release()

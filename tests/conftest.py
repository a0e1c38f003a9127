"""Shared fixtures: the bot runtime in this process against the fake Discord and the fake fal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord import start_fake_discord
from tests.fakes.fal import start_fake_fal
from tests.rig import BotRig, make_settings

MakeRig = Callable[..., Awaitable[BotRig]]

PLAIN_SECRETS = ("DISCORD_TOKEN", "FAL_KEY")


@pytest.fixture(autouse=True)
def isolated_settings(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test sees the developer's settings: ``FLUXPAINT_*``, ``DISCORD_TOKEN`` and ``FAL_KEY`` are removed, the
    working directory is an empty one (``Settings()`` reads ``./config.toml`` whatever ``FLUXPAINT_CONFIG`` says)
    and ``FLUXPAINT_CONFIG`` names a file that does not exist. A test may set its own afterwards; ``-m live``
    tests keep the environment, since they need the developer's real ``FAL_KEY``."""
    if request.node.get_closest_marker("live") is not None:
        return
    for var in list(os.environ):
        if var.startswith("FLUXPAINT_") or var in PLAIN_SECRETS:
            monkeypatch.delenv(var)
    workdir = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("FLUXPAINT_CONFIG", str(workdir / "no-config.toml"))


@pytest.fixture
async def make_rig(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[MakeRig]:
    """``await make_rig(discord={...knobs}, fal={...knobs}, limits={...}, ...)`` starts both fakes and the bot."""
    rigs: list[BotRig] = []

    async def make(
        *,
        discord: dict[str, Any] | None = None,
        fal: dict[str, Any] | None = None,
        fal_settings: dict[str, Any] | None = None,
        discord_settings: dict[str, Any] | None = None,
        start: bool = True,
        **sections: Any,
    ) -> BotRig:
        """``discord`` and ``fal`` are knobs of the fakes; ``*_settings`` and ``sections`` override Settings."""
        if fal_settings:
            sections["fal"] = fal_settings
        if discord_settings:
            sections["discord"] = discord_settings
        fake_discord = await start_fake_discord(aiohttp_server, **(discord or {}))
        fake_fal = await start_fake_fal(aiohttp_server, **(fal or {}))
        rig = BotRig(fake_discord, fake_fal, make_settings(tmp_path / "data", fake_discord, fake_fal, **sections))
        rigs.append(rig)
        if start:
            await rig.start()
        return rig

    yield make
    for rig in rigs:
        if rig.fal.submit_gate is not None:  # first: a stop waits for a submit under way to be answered
            rig.fal.submit_gate.set()
        await rig.stop()
        if rig.fal.hold is not None:
            rig.fal.release()

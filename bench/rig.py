"""What the benchmarks share: the fakes served outside pytest, the real (or minimal) bot as a subprocess, /proc
readings."""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageDraw

from tests.e2e.harness import BotProcess, config_for
from tests.fakes.discord import FakeDiscord, FakeInteraction, start_fake_discord
from tests.fakes.fal import FakeFal, start_fake_fal
from tests.rig import fixture

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
FLUXPAINT = "bot"
MINIMAL_BOT = "bench.minimal_bot"  # the baseline of issue 11's benchmarks
FAL_CLIENT_BASELINE = "baseline (fal-client defaults)"
MINIMAL_BASELINE = "baseline (minimal bot)"


@dataclass
class Figure:
    """One printed result: what was measured, its value, the target if the issue sets one, and a baseline."""

    name: str
    value: str
    target: str = ""
    baseline: str = ""
    met: bool | None = None


@dataclass
class Rig:
    discord: FakeDiscord
    fal: FakeFal
    bot: BotProcess
    workdir: Path
    servers: list[TestServer] = field(default_factory=list)

    async def inpaint(
        self, user: str, image: bytes, mask: bytes, channel: str = "general", **options: Any
    ) -> FakeInteraction:
        return await self.discord.slash(
            "inpaint",
            user=user,
            channel=channel,
            options={"prompt": "a red hat", **options},
            attachments={"image": ("photo.png", image, None), "mask": ("mask.png", mask, None)},
        )

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the bot process so far."""
        assert self.bot.proc is not None
        fields = Path(f"/proc/{self.bot.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime

    def rss_mib(self) -> tuple[float, float]:
        """(resident now, peak resident) of the bot process in MiB."""
        assert self.bot.proc is not None
        status = dict(line.split(":", 1) for line in Path(f"/proc/{self.bot.proc.pid}/status").read_text().splitlines())
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


@contextlib.asynccontextmanager
async def rig(
    *,
    fake_discord: dict[str, Any] | None = None,
    fake_fal: dict[str, Any] | None = None,
    program: str = FLUXPAINT,
    **sections: dict[str, Any],
) -> AsyncIterator[Rig]:
    """The fakes on 127.0.0.1 (with these knobs) and ``python -m bot`` (or ``program``, e.g. ``MINIMAL_BOT``) with
    its defaults, but for the fakes' addresses and the config ``sections`` given."""
    servers: list[TestServer] = []

    async def serve(app: web.Application, **kwargs: Any) -> TestServer:
        server = TestServer(app, **kwargs)
        await server.start_server()
        servers.append(server)
        return server

    with tempfile.TemporaryDirectory(prefix="fluxpaint-bench-") as tmp:
        workdir = Path(tmp)
        # the schema checks are the tests' job; here they would add the fake's own time to the bot's figures
        discord = await start_fake_discord(serve, **{"validate": False, **(fake_discord or {})})
        fal = await start_fake_fal(serve, **(fake_fal or {}))
        path = config_for(workdir, discord, fal, sections, defaults={})  # the bot's own defaults
        bench = Rig(discord, fal, BotProcess(workdir, discord, fal, path, module=program), workdir, servers)
        try:
            await bench.bot.start()
            yield bench
        finally:
            await bench.bot.close()
            fal.release()
            for server in reversed(servers):
                await server.close()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct`` % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def coffee() -> tuple[bytes, bytes]:
    """The 600×400 coffee photo and its mask from the shared fixtures."""
    return fixture("coffee.png"), fixture("coffee_mask.png")


def megapixel_photo() -> tuple[bytes, bytes]:
    """A real photo at 1224×816 (1.0 MP) as PNG, and a mask over its middle."""
    with Image.open(io.BytesIO(fixture("coffee.png"))) as photo:
        big = photo.convert("RGB").resize((1224, 816), Image.Resampling.LANCZOS)
    mask = Image.new("L", big.size, 0)
    ImageDraw.Draw(mask).ellipse((400, 250, 824, 566), fill=255)
    return _png(big), _png(mask)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report(title: str, figures: Sequence[Figure], baseline: str = FAL_CLIENT_BASELINE) -> None:
    """``figures`` as a Markdown table; ``baseline`` heads the last column."""
    print(f"\n## {title}\n")
    print(f"| figure | value | target | {baseline} |")
    print("|---|---|---|---|")
    for f in figures:
        mark = "" if f.met is None else (" ✅" if f.met else " ❌")
        print(f"| {f.name} | {f.value} | {f.target}{mark} | {f.baseline} |")

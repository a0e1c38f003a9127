"""Peak memory of the bot when 50 members post 20 MiB photos at the same moment (downloads and decodes are
limited to ``limits.max_parallel_prepare`` at once); the baseline lifts that limit."""

from __future__ import annotations

import asyncio
import io
import random

from PIL import Image

from bench.rig import Figure, rig
from tests.e2e.harness import poll_until

MEMBERS = 50


def big_photo(target_bytes: int = 19 * 1024 * 1024) -> tuple[bytes, bytes]:
    """A noise PNG just under 20 MiB (incompressible, so its file is as large as its pixels) and a mask."""
    side = int((target_bytes / 3) ** 0.5)
    rng = random.Random(7)
    photo = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, side // 2, side // 2))
    out, out_mask = io.BytesIO(), io.BytesIO()
    photo.save(out, format="PNG", compress_level=1)
    mask.save(out_mask, format="PNG")
    return out.getvalue(), out_mask.getvalue()


async def _peak(image: bytes, mask: bytes, parallel: int | None) -> tuple[float, float, int]:
    limits = {"max_parallel_prepare": parallel} if parallel else {}
    async with rig(fake_fal={"hold": True}, fal={"max_concurrent": MEMBERS}, limits=limits) as bench:
        idle, _ = bench.rss_mib()
        members = [f"member{n}" for n in range(MEMBERS)]
        for name in members:
            bench.discord.add_member(name)
        await asyncio.gather(*(bench.inpaint(n, image, mask) for n in members))
        await poll_until(lambda: len(bench.fal.submits) >= MEMBERS, f"{MEMBERS} submits", timeout=600)
        _, peak = bench.rss_mib()
        return idle, peak, len(bench.fal.submits)


async def run() -> list[Figure]:
    image, mask = await asyncio.to_thread(big_photo)
    size_mib = len(image) / (1024 * 1024)
    idle, peak, sent = await _peak(image, mask, None)
    _, baseline_peak, _ = await _peak(image, mask, MEMBERS)
    return [
        Figure("resident memory, idle after start", f"{idle:.0f} MiB"),
        Figure(
            f"peak resident memory, {MEMBERS} × {size_mib:.1f} MiB photos at once ({sent} accepted)",
            f"{peak:.0f} MiB",
            baseline=f"{baseline_peak:.0f} MiB with max_parallel_prepare = {MEMBERS}",
        ),
    ]

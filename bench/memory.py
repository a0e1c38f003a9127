"""Resident memory of the bot with 1,000 jobs waiting in fal's queue (each watched over its own SSE stream)."""

from __future__ import annotations

import asyncio

from bench.rig import Figure, coffee, rig
from tests.e2e.harness import poll_until

BATCH = 100  # commands sent at once; the whole thousand is sent within about a minute


async def run(jobs: int = 1000) -> list[Figure]:
    image, mask = coffee()
    async with rig(fake_fal={"hold": True}, fal={"max_concurrent": jobs}) as bench:
        idle_rss, _ = bench.rss_mib()
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        for start in range(0, jobs, BATCH):
            batch = await asyncio.gather(*(bench.inpaint(n, image, mask) for n in members[start : start + BATCH]))
            await bench.discord.wait_for(lambda: all(i.callbacks for i in batch), 60)  # noqa: B023
        await poll_until(lambda: bench.fal.stream_calls >= jobs, f"{jobs} status streams", timeout=600)
        await asyncio.sleep(5)  # let the last replies and their edits settle
        rss, peak = bench.rss_mib()
        at_fal = len(bench.fal.jobs)
    return [
        Figure("resident memory, idle after start", f"{idle_rss:.0f} MiB"),
        Figure(f"resident memory with {at_fal} jobs waiting at fal", f"{rss:.0f} MiB", "< 300 MB", met=rss < 286),
        Figure("peak resident memory while they were accepted", f"{peak:.0f} MiB", "< 300 MB", met=peak < 286),
    ]

"""From fal's COMPLETED to the images posted in Discord, for a 1-megapixel photo; stream vs 0.1 s polling."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.rig import Figure, megapixel_photo, ms, percentile, rig
from tests.rig import visible_text

GENERATION_S = 3.0  # time at IN_PROGRESS before COMPLETED: FLUX inpainting takes a few seconds at fal
BASELINE = {"status_mode": "poll", "poll_interval_s": 0.1, "max_poll_interval_s": 0.1}


async def _measure(jobs: int, fal_settings: dict[str, Any]) -> list[float]:
    image, mask = megapixel_photo()
    async with rig(fake_fal={"hold": True, "result_echo": True}, fal={"max_concurrent": jobs, **fal_settings}) as bench:
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        interactions = [await bench.inpaint(name, image, mask) for name in members]

        def showing(text: str) -> bool:
            return all((m := i.original()) is not None and text in visible_text(m) for i in interactions)

        await bench.discord.wait_for(lambda: showing("Queued at fal"), 120)
        for request_id in bench.fal.jobs:
            bench.fal.advance(request_id, steps=len(bench.fal.positions))  # IN_PROGRESS
        await bench.discord.wait_for(lambda: showing("Generating"), 60)
        await asyncio.sleep(GENERATION_S)
        by_message = {i.original_message_id: i for i in interactions}
        delays: list[float] = []
        for request_id in list(bench.fal.jobs):
            bench.fal.render_result(request_id)  # fal's work, not the bot's: made before the clock starts
            before = len(bench.discord.requests)
            started = time.monotonic()
            bench.fal.complete(request_id)
            await bench.discord.wait_for(lambda b=before: any(r.files for r in bench.discord.requests[b:]), 30)
            posted = next(r for r in bench.discord.requests[before:] if r.files)
            delays.append(posted.time - started)
            await asyncio.sleep(0.3)  # one completion at a time, as a steady stream of jobs would finish
        await bench.discord.wait_for(lambda: showing("Inpainted"), 60)
        assert len(by_message) == jobs
    return delays


async def run(jobs: int = 20) -> list[Figure]:
    ours = await _measure(jobs, {})
    baseline = await _measure(jobs, BASELINE)
    median, p99 = statistics.median(ours), percentile(ours, 99)
    return [
        Figure(
            f"COMPLETED → posted, median (1 MP, {jobs} jobs)",
            ms(median),
            "< 1 s",
            ms(statistics.median(baseline)),
            met=median < 1.0,
        ),
        Figure("COMPLETED → posted, p99", ms(p99), "", ms(percentile(baseline, 99))),
    ]

"""Edits of each job's reply while fal moves it through the queue: how many, how far apart, any 429s."""

from __future__ import annotations

import asyncio

from bench.rig import Figure, coffee, rig
from tests.fakes.discord import peak_in_window
from tests.rig import visible_text

POSITIONS = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
RUNNING_STEPS = 4
WINDOW_S = 5.0  # Discord's per-message edit window
STEP_S = 0.5  # fal reports a change every half second: far more often than the reply may be edited


async def run(jobs: int = 10) -> list[Figure]:
    image, mask = coffee()
    async with rig(
        # Without rate-limit headers discord.py cannot pace itself: every edit past Discord's limit is a 429.
        fake_discord={"ratelimit_headers": False},
        fake_fal={"hold": True, "positions": POSITIONS, "in_progress_steps": RUNNING_STEPS},
        fal={"max_concurrent": jobs},
    ) as bench:
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        interactions = [await bench.inpaint(name, image, mask) for name in members]
        await bench.discord.wait_for(lambda: len(bench.fal.jobs) == jobs and all(i.original() for i in interactions))
        changes = len(POSITIONS) + RUNNING_STEPS
        for _ in range(changes):
            await asyncio.sleep(STEP_S)
            for request_id in bench.fal.jobs:
                bench.fal.advance(request_id)
        for request_id in bench.fal.jobs:
            bench.fal.complete(request_id)

        def delivered() -> bool:
            return all("Inpainted" in visible_text(i.original()) for i in interactions)  # type: ignore[arg-type]

        await bench.discord.wait_for(delivered, 60)
        per_message = [bench.discord.edits_of(i.original_message_id) for i in interactions]  # type: ignore[arg-type]
        busiest = max(peak_in_window(edits, WINDOW_S) for edits in per_message)
        rate_limited = len(bench.discord.rate_limited)
    counts = [len(e) for e in per_message]
    mean = sum(counts) / len(counts)
    return [
        Figure(
            f"edits per job ({changes} status changes over {changes * STEP_S:g} s)",
            f"{mean:.1f} (min {min(counts)}, max {max(counts)})",
            "",
            f"{changes + 1} (an edit per change, and the result)",
        ),
        Figure(
            f"most edits of one message in any {WINDOW_S:g} s",
            str(busiest),
            "< 5 (Discord's 5 per 5 s; the fifth is never used)",
            met=busiest < 5,
        ),
        Figure("429 answers from Discord", str(rate_limited), "0", met=rate_limited == 0),
    ]

"""fal status calls per job-minute, and the bot's CPU seconds per job: SSE (default), polling, 0.1 s polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.rig import Figure, coffee, rig
from tests.rig import visible_text

AT_FAL_S = 30.0  # each job spends this long at fal
STEPS = 15  # and changes state this many times there
MODES: dict[str, dict[str, Any]] = {
    "stream (default)": {},
    "poll (1 s, backing off to 10 s)": {"status_mode": "poll"},
    "fal-client default: poll every 0.1 s": {"status_mode": "poll", "poll_interval_s": 0.1, "max_poll_interval_s": 0.1},
}


async def _measure(jobs: int, fal_settings: dict[str, Any]) -> tuple[float, float]:
    """(status calls per job-minute at fal, bot CPU seconds per job)."""
    image, mask = coffee()
    positions = list(range(STEPS - 2, -1, -1))
    async with rig(
        fake_fal={"hold": True, "positions": positions, "in_progress_steps": 2},
        fal={"max_concurrent": jobs, **fal_settings},
    ) as bench:
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        cpu_before = bench.cpu_seconds()
        interactions = [await bench.inpaint(name, image, mask) for name in members]
        await bench.discord.wait_for(lambda: len(bench.fal.jobs) == jobs, 60)
        submitted = time.monotonic()  # the status watch of each job began at its submit, counted from zero
        for _ in range(STEPS):
            await asyncio.sleep(AT_FAL_S / STEPS)
            for request_id in bench.fal.jobs:
                bench.fal.advance(request_id)
        for request_id in bench.fal.jobs:
            bench.fal.complete(request_id)
        await bench.discord.wait_for(
            lambda: all("Inpainted" in visible_text(i.original()) for i in interactions),  # type: ignore[arg-type]
            60,
        )
        job_minutes = jobs * (time.monotonic() - submitted) / 60
        calls = _status_calls(bench.fal)
        cpu = bench.cpu_seconds() - cpu_before
    return calls / job_minutes, cpu / jobs


def _status_calls(fal: Any) -> int:
    """Polls and stream connections: each is a request to fal's status routes."""
    return int(fal.status_calls + fal.stream_calls)


async def run(jobs: int = 10) -> list[Figure]:
    results = {mode: await _measure(jobs, settings) for mode, settings in MODES.items()}
    baseline_calls, baseline_cpu = results["fal-client default: poll every 0.1 s"]
    figures = []
    for mode, (calls, cpu) in results.items():
        if mode.startswith("fal-client"):
            continue
        figures.append(
            Figure(
                f"status calls per job-minute, {mode}",
                f"{calls:.1f}",
                "< 60 (1 per s)",
                f"{baseline_calls:.0f}",
                met=calls < 60,
            )
        )
        cpu_name = f"CPU seconds per job ({AT_FAL_S:g} s at fal), {mode}"
        figures.append(Figure(cpu_name, f"{cpu:.3f}", "", f"{baseline_cpu:.3f}"))
    return figures

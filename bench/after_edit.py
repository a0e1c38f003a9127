"""From fal's COMPLETED to the images posted, when fal finishes a job 0.3 to 1.5 s after an edit of its reply."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable

from bench.rig import FLUXPAINT, MINIMAL_BOT, Figure, megapixel_photo, ms, percentile, rig
from tests.fakes.discord import FakeDiscord, FakeInteraction, RecordedRequest
from tests.rig import visible_text

FIRST_GAP_S, LAST_GAP_S = 0.3, 1.5  # from the status edit to COMPLETED: inside fluxpaint's 2 s between edits
SETTLE_S = 2.5  # after the replies show the queue, so that no earlier edit is still on its way


def _arrived(discord: FakeDiscord, since: int, matches: Callable[[RecordedRequest], bool]) -> Callable[[], bool]:
    """Whether a request that ``matches`` reached Discord after its first ``since`` requests."""
    return lambda: any(matches(r) for r in discord.requests[since:])


def _has_files(request: RecordedRequest) -> bool:
    return bool(request.files)


def _edit_of(interaction: FakeInteraction, text: str) -> Callable[[RecordedRequest], bool]:
    def matches(request: RecordedRequest) -> bool:
        content = (request.json or {}).get("content") if isinstance(request.json, dict) else None
        return request.method == "PATCH" and interaction.token in request.path and text in (content or "")

    return matches


async def _measure(program: str, jobs: int) -> list[float]:
    """Seconds from ``complete()`` to the request with the files, one job at a time, ``jobs`` gaps after the edit."""
    image, mask = megapixel_photo()
    gaps = [FIRST_GAP_S + (LAST_GAP_S - FIRST_GAP_S) * k / (jobs - 1) for k in range(jobs)]
    async with rig(
        program=program,
        fake_fal={"hold": True, "positions": [0], "result_echo": True},
        fal={"max_concurrent": jobs},
    ) as bench:
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        prompts = [f"a red hat, take {n}" for n in range(jobs)]  # which fal request is whose
        interactions = [await bench.inpaint(m, image, mask, prompt=p) for m, p in zip(members, prompts, strict=True)]

        def showing(text: str) -> bool:
            return all((m := i.original()) is not None and text in visible_text(m) for i in interactions)

        await bench.discord.wait_for(lambda: len(bench.fal.jobs) == jobs and showing("Queued at fal"), 120)
        await asyncio.sleep(SETTLE_S)
        by_prompt = {job.payload["prompt"]: request_id for request_id, job in bench.fal.jobs.items()}
        delays: list[float] = []
        for interaction, prompt, gap in zip(interactions, prompts, gaps, strict=True):
            request_id = by_prompt[prompt]
            bench.fal.render_result(request_id)  # fal's work, not the bot's: made before the clock starts
            is_edit = _edit_of(interaction, "Generating")
            before = len(bench.discord.requests)
            bench.fal.advance(request_id)  # IN_QUEUE → IN_PROGRESS: the reply says "Generating…"
            await bench.discord.wait_for(_arrived(bench.discord, before, is_edit), 30)
            edited = next(r for r in bench.discord.requests[before:] if is_edit(r))
            await asyncio.sleep(max(0.0, edited.real_time + gap - time.monotonic()))
            before = len(bench.discord.requests)
            started = time.monotonic()
            bench.fal.complete(request_id)
            await bench.discord.wait_for(_arrived(bench.discord, before, _has_files), 30)
            posted = next(r for r in bench.discord.requests[before:] if r.files)
            delays.append(posted.real_time - started)
        await bench.discord.wait_for(lambda: showing("Inpainted"), 60)
    return delays


async def run(jobs: int = 20) -> list[Figure]:
    ours = await _measure(FLUXPAINT, jobs)
    baseline = await _measure(MINIMAL_BOT, jobs)
    median = statistics.median(ours)
    return [
        Figure(
            f"COMPLETED → posted, median ({jobs} jobs, {FIRST_GAP_S:g}–{LAST_GAP_S:g} s after a status edit)",
            ms(median),
            "< 300 ms",
            ms(statistics.median(baseline)),
            met=median < 0.3,
        ),
        Figure("COMPLETED → posted, p99", ms(percentile(ours, 99)), "", ms(percentile(baseline, 99))),
        Figure(
            f"COMPLETED → posted when fal finished {FIRST_GAP_S:g} s after the edit",
            ms(ours[0]),
            "",
            ms(baseline[0]),
        ),
    ]

"""200 /inpaint commands at once from three members: time to the first answer, and the bot's longest loop stall."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from bench.rig import FLUXPAINT, MINIMAL_BOT, Figure, coffee, ms, percentile, rig

MEMBERS = 3  # fluxpaint takes two jobs from each (limits.max_jobs_per_user) and tells the rest why not
SPREAD = 1.3  # the target: p99 at most this many times p50
DEFERRED = 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE; the other first answer is 4, a message (a refusal)
STALL_LINE = re.compile(r"event loop: longest stall (\d+) ms over (\d+) s; (\d+) stall\(s\) of (\d+) ms or more")


@dataclass(frozen=True)
class Burst:
    latencies: list[float]  # each command's time from its creation to its first callback
    deferred: int  # first callbacks that were a defer, not a message at once
    stall: re.Match[str] | None  # the loop-lag line the bot logs at SIGTERM, if any


async def _burst(program: str, count: int) -> Burst:
    image, mask = coffee()
    async with rig(program=program, fake_fal={"hold": True}) as bench:
        members = [f"member{n}" for n in range(MEMBERS)]
        for name in members:
            bench.discord.add_member(name)
        interactions = await asyncio.gather(*(bench.inpaint(members[n % MEMBERS], image, mask) for n in range(count)))
        await bench.discord.wait_for(lambda: all(i.callbacks for i in interactions), 60)
        await asyncio.sleep(2)  # the accepted jobs go on to fal meanwhile; their work is part of the burst
        latencies = [i.callbacks[0].time - i.created_at for i in interactions]
        deferred = sum(1 for i in interactions if i.callbacks[0].type == DEFERRED)
        await bench.bot.terminate()
        matches = list(STALL_LINE.finditer(bench.bot.log_text()))
    return Burst(latencies, deferred, matches[-1] if matches else None)


async def run(count: int = 200) -> list[Figure]:
    result = await _burst(FLUXPAINT, count)
    baseline = await _burst(MINIMAL_BOT, count)
    ours, base, stall = result.latencies, baseline.latencies, result.stall
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    spread = f"p99 = {p99 / p50:.2f} × p50"
    figures = [
        Figure(f"first response p50, {count} commands by {MEMBERS} members", ms(p50), "", ms(percentile(base, 50))),
        Figure(
            f"first response p99 ({spread})",
            ms(p99),
            f"≤ {SPREAD:g} × p50",
            ms(percentile(base, 99)),
            met=p99 <= SPREAD * p50,
        ),
        Figure(
            "first answers that were a defer (else a message at once)",
            f"{result.deferred}/{count}",
            "",
            f"{baseline.deferred}/{count}",
        ),
    ]
    if stall is None:
        figures.append(Figure("longest event-loop stall", "not logged", "< 100 ms", met=False))
    else:
        longest, over, stalls, warn = (int(g) for g in stall.groups())
        figures += [
            Figure(
                f"longest event-loop stall (over the bot's {over} s)", f"{longest} ms", "< 100 ms", met=longest < 100
            ),
            Figure(f"event-loop stalls of {warn} ms or more", str(stalls), "0", met=stalls == 0),
        ]
    return figures

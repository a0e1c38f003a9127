"""First-response latency: a burst of /inpaint commands from different members, time to the defer."""

from __future__ import annotations

import asyncio

from bench.rig import Figure, coffee, ms, percentile, rig

DEADLINE_S = 3.0  # Discord's; the fake refuses a later first answer with 10062


async def run(count: int = 200) -> list[Figure]:
    image, mask = coffee()
    async with rig(fake_fal={"hold": True}) as bench:
        members = [f"member{n}" for n in range(count)]
        for name in members:
            bench.discord.add_member(name)
        interactions = await asyncio.gather(*(bench.inpaint(name, image, mask) for name in members))
        await bench.discord.wait_for(lambda: all(i.callbacks for i in interactions), 60)
        latencies = [i.callbacks[0].time - i.created_at for i in interactions]
        in_time = sum(1 for i in interactions if i.callbacks[0].status == 200)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return [
        Figure(f"first response p50, {count} commands in a burst", ms(p50)),
        Figure(f"first response p99, {count} commands in a burst", ms(p99), "< 500 ms", met=p99 < 0.5),
        Figure("first response max", ms(max(latencies)), f"< {DEADLINE_S:g} s (Discord)", met=max(latencies) < 3),
        Figure("answered within Discord's deadline", f"{in_time}/{count}", f"{count}/{count}", met=in_time == count),
    ]

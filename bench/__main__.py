"""``python -m bench [name ...]``: run the benchmarks (all by default) and print their figures as Markdown."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable

from bench import delivery, edits, first_response, memory, status_calls, uploads
from bench.rig import Figure, report

BENCHES: dict[str, tuple[str, Callable[[], Awaitable[list[Figure]]]]] = {
    "first_response": ("First response under a burst", first_response.run),
    "delivery": ("COMPLETED to posted", delivery.run),
    "edits": ("Edits of the reply", edits.run),
    "status_calls": ("fal status calls and CPU per job", status_calls.run),
    "memory": ("Memory with 1,000 jobs at fal", memory.run),
    "uploads": ("Memory with 50 photos of 20 MiB at once", uploads.run),
}


async def main(names: list[str]) -> None:
    print(f"fluxpaint benchmarks: Python {platform.python_version()}, {platform.machine()}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} CPU(s), {time.strftime('%Y-%m-%d')}")
    for name in names:
        title, bench = BENCHES[name]
        started = time.monotonic()
        figures = await bench()
        report(f"{title} ({time.monotonic() - started:.0f} s)", figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {', '.join(BENCHES)} (default: all)")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in BENCHES]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    asyncio.run(main(args.names or list(BENCHES)))

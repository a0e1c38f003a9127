"""``python -m bench [name ...]``: run the benchmarks (all by default) and print their figures as Markdown."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from bench import (
    after_edit,
    autocomplete,
    burst,
    composite,
    delivery,
    edits,
    first_response,
    flood,
    line,
    memory,
    paint_page,
    status_calls,
    uploads,
)
from bench.rig import FAL_CLIENT_BASELINE, MINIMAL_BASELINE, Figure, report

NO_BASELINE = "baseline (none)"


class Bench(NamedTuple):
    title: str
    run: Callable[[], Awaitable[list[Figure]]]
    baseline: str = FAL_CLIENT_BASELINE  # the header of the baseline column


BENCHES: dict[str, Bench] = {
    "first_response": Bench("First response under a burst", first_response.run),
    "delivery": Bench("COMPLETED to posted", delivery.run),
    "edits": Bench("Edits of the reply", edits.run),
    "status_calls": Bench("fal status calls and CPU per job", status_calls.run),
    "memory": Bench("Memory with 1,000 jobs at fal", memory.run),
    "uploads": Bench("Memory with 50 photos of 20 MiB at once", uploads.run),
    "after_edit": Bench("COMPLETED to posted after a status edit", after_edit.run, MINIMAL_BASELINE),
    "flood": Bench("1,000 jobs waiting at fal", flood.run, MINIMAL_BASELINE),
    "burst": Bench("200 commands in one burst by three members", burst.run, MINIMAL_BASELINE),
    "composite": Bench("Crop and composite of a 12 MP photo", composite.run, composite.BASELINE),
    "autocomplete": Bench("LoRA autocomplete over 500 catalog entries", autocomplete.run, NO_BASELINE),
    "paint_page": Bench("The mask painter's page in headless Chromium", paint_page.run, NO_BASELINE),
    "line": Bench("The shared line on PostgreSQL: 1, 2 and 4 processes, and take-over", line.run, NO_BASELINE),
}


async def main(names: list[str]) -> None:
    print(f"fluxpaint benchmarks: Python {platform.python_version()}, {platform.machine()}, ", end="")
    print(f"{len(os.sched_getaffinity(0))} CPU(s), {time.strftime('%Y-%m-%d')}")
    for name in names:
        bench = BENCHES[name]
        started = time.monotonic()
        figures = await bench.run()
        report(f"{bench.title} ({time.monotonic() - started:.0f} s)", figures, bench.baseline)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of {', '.join(BENCHES)} (default: all)")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in BENCHES]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    asyncio.run(main(args.names or list(BENCHES)))

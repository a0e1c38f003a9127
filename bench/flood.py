"""1,000 jobs waiting in fal's queue, each moving up a place a second: Discord requests, 429s, CPU and memory of the
bot, while the interaction tokens live and once they have expired."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from bench.rig import FLUXPAINT, MINIMAL_BOT, Figure, Rig, coffee, rig
from tests.fakes.discord import FakeInteraction, RateStats
from tests.rig import visible_text

BATCH = 100  # commands sent at once, as bench/memory.py does
PHASE_S = 60  # each phase is measured for this long, one queue step a second
MAX_PER_S = 40  # the target: below Discord's global 50 per second, with room for the rest
MAX_RSS_MIB = 150e6 / 2**20  # 150 MB
# The bot's clock and the fake's both end a token after TOKEN_TTL_S (Discord: 15 minutes), so that the second phase
# comes within minutes; fluxpaint leaves the token TOKEN_MARGIN_S before that. The first phase must end before the
# first token does: TOKEN_TTL_S - TOKEN_MARGIN_S exceeds the time to submit all jobs and show their replies (about
# 140 s for fluxpaint on two cores: it paces the replies' first edits too), plus PHASE_S.
TOKEN_TTL_S = 280.0
TOKEN_MARGIN_S = 30.0
SHOWN_WITHIN_S = TOKEN_TTL_S - TOKEN_MARGIN_S - PHASE_S  # any later and the first phase would outlive a token
QUIET_S = 30  # nothing happened for this long while replies were missing: they are lost
TRACEBACK_END = re.compile(r"^[\w.]+(Error|Exception|NotFound|Forbidden)\b")  # the last line of a traceback


def _line(n: int) -> Iterable[int]:
    """The n-th job joins fal's queue at position n and moves down from there."""
    return range(n, -1, -1)


@dataclass(frozen=True)
class Phase:
    rates: RateStats
    cpu_pct: float  # of one core, over the phase
    rss_mib: float  # the largest resident set seen, sampled once a second
    unauthorized: int  # 401 answers: the token was dead
    edits: int  # edits Discord took
    moving: int  # jobs whose queue position changed during the phase


@dataclass(frozen=True)
class Flood:
    shown: int  # replies that showed their place at fal before the first phase
    waiting: Phase
    expired: Phase


async def _phase(bench: Rig, seconds: int) -> Phase:
    """Move every queued job one place a second for ``seconds``, and measure."""
    since = time.monotonic()
    cpu_before = bench.cpu_seconds()
    rss = []
    moving: set[str] = set()
    for tick in range(seconds):
        for request_id, job in bench.fal.jobs.items():
            if job.state == "IN_QUEUE":
                bench.fal.advance(request_id)  # position 0 moves on to IN_PROGRESS, and stays there
                moving.add(request_id)
        rss.append(bench.rss_mib()[0])
        await asyncio.sleep(max(0.0, since + tick + 1 - time.monotonic()))
    until = time.monotonic()
    cpu = bench.cpu_seconds() - cpu_before
    seen = [r for r in bench.discord.requests if since <= r.real_time <= until]
    return Phase(
        rates=bench.discord.rate_stats(since, until),
        cpu_pct=100 * cpu / (until - since),
        rss_mib=max(rss),
        unauthorized=sum(1 for r in seen if r.status == 401),
        edits=sum(1 for r in seen if r.method == "PATCH" and r.status == 200),
        moving=len(moving),
    )


def _causes(bench: Rig) -> list[tuple[str, int]]:
    """The commonest errors in the bot's log: tracebacks' last lines and ERROR lines, without times or ids."""
    causes: Counter[str] = Counter()
    for line in bench.bot.log_text().splitlines():
        if TRACEBACK_END.match(line):
            causes[line[:100]] += 1
        elif " ERROR " in line:
            causes[re.sub(r"[0-9a-f]{32}|\d+", "…", line.split(" ERROR ", 1)[1])[:100]] += 1
    return causes.most_common(3)


async def _shown(bench: Rig, interactions: list[FakeInteraction]) -> int:
    """Wait until every reply shows its place at fal, or until nothing has happened for ``QUIET_S`` (no reply, no
    submit, no Discord request: the missing ones are lost); how many do."""
    started = time.monotonic()
    last, last_at = (-1, -1, -1), started
    while True:
        count = sum(1 for i in interactions if (m := i.original()) is not None and "Queued at fal" in visible_text(m))
        now = time.monotonic()
        if (progress := (count, len(bench.fal.jobs), len(bench.discord.requests))) != last:
            last, last_at = progress, now
        if count == len(interactions) or now - last_at > QUIET_S or now - started > SHOWN_WITHIN_S:
            return count
        await asyncio.sleep(0.5)


async def _flood(program: str, jobs: int) -> Flood:
    """The two phases for ``program``."""
    image, mask = coffee()
    async with rig(
        program=program,
        fake_discord={"token_ttl_s": TOKEN_TTL_S},
        fake_fal={"hold": True, "positions_for": _line},
        fal={"max_concurrent": jobs},
        ui={"token_ttl_s": TOKEN_TTL_S, "token_margin_s": TOKEN_MARGIN_S},
    ) as bench:
        members = [f"member{n}" for n in range(jobs)]
        for name in members:
            bench.discord.add_member(name)
        interactions: list[FakeInteraction] = []
        for start in range(0, jobs, BATCH):
            batch = await asyncio.gather(*(bench.inpaint(n, image, mask) for n in members[start : start + BATCH]))
            interactions += batch
            await bench.discord.wait_for(lambda: all(i.callbacks for i in batch), 60)  # noqa: B023

        shown = await _shown(bench, interactions)
        if shown < jobs:  # a job lost on the way: say why, from the bot's log, and measure the others
            print(
                f"{program}: {jobs - shown} job(s) never showed their place at fal; {_causes(bench)}", file=sys.stderr
            )
        waiting = await _phase(bench, PHASE_S)
        # fluxpaint leaves the token by its own clock; the minimal bot learns of it from Discord's 401
        token_end = TOKEN_TTL_S - (TOKEN_MARGIN_S if program == FLUXPAINT else 0)
        created = [i.created_at for i in interactions]  # the fake's clock: time.monotonic
        first, last = min(created), max(created)
        if (late := time.monotonic() - (first + token_end)) >= 0:
            raise RuntimeError(f"the first phase ended {late:.0f} s after the first token: raise TOKEN_TTL_S")
        await asyncio.sleep(last + token_end + 1 - time.monotonic())
        expired = await _phase(bench, PHASE_S)
    return Flood(shown, waiting, expired)


def _figures(label: str, tag: str, ours: Phase, base: Phase) -> list[Figure]:
    rss_ok = ours.rss_mib < MAX_RSS_MIB
    return [
        Figure(
            f"{tag}: Discord requests/s, peak in any 1 s, {label} ({ours.moving} jobs moved)",
            str(ours.rates.peak_per_s),
            f"≤ {MAX_PER_S}",
            f"{base.rates.peak_per_s} ({base.moving} jobs moved)",
            met=ours.rates.peak_per_s <= MAX_PER_S,
        ),
        Figure(
            f"{tag}: of them counted by the global limit, peak",
            str(ours.rates.peak_global_per_s),
            "",
            str(base.rates.peak_global_per_s),
        ),
        Figure(f"{tag}: mean requests/s", f"{ours.rates.mean_per_s:.1f}", "", f"{base.rates.mean_per_s:.1f}"),
        Figure(f"{tag}: edits Discord took", str(ours.edits), "", str(base.edits)),
        Figure(
            f"{tag}: 429 answers",
            str(ours.rates.rate_limited),
            "0",
            str(base.rates.rate_limited),
            met=ours.rates.rate_limited == 0,
        ),
        Figure(f"{tag}: 401 answers (dead token)", str(ours.unauthorized), "", str(base.unauthorized)),
        Figure(
            f"{tag}: bot CPU, % of one core",
            f"{ours.cpu_pct:.1f} %",
            "< 5 %",
            f"{base.cpu_pct:.1f} %",
            met=ours.cpu_pct < 5,
        ),
        Figure(
            f"{tag}: bot resident memory, max", f"{ours.rss_mib:.0f} MiB", "< 150 MB", f"{base.rss_mib:.0f} MiB", rss_ok
        ),
    ]


async def run(jobs: int = 1000) -> list[Figure]:
    ours = await _flood(FLUXPAINT, jobs)
    base = await _flood(MINIMAL_BOT, jobs)
    return [
        Figure(
            "replies showing their place at fal before the phases",
            f"{ours.shown}/{jobs}",
            f"{jobs}/{jobs}",
            f"{base.shown}/{jobs}",
            met=ours.shown == jobs,
        ),
        *_figures(f"{PHASE_S} s while the tokens live", "waiting", ours.waiting, base.waiting),
        *_figures(f"{PHASE_S} s after the tokens expired", "expired", ours.expired, base.expired),
    ]

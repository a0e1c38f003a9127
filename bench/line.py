"""The line several processes share on PostgreSQL (SPEC 13): jobs per second it hands out with 1, 2 and 4 bot
processes, and how long a job waits for another process after ``kill -9``.

Each process here is a real OS process (``python -m bench.line --worker …``) with its own store (an asyncpg pool)
and the bot's own ``Scheduler``; only the pipeline is a stand-in whose every job is a fast fake fal job (its
states are saved as the real one saves them: submitting, queued, fetched, done; fal itself takes ``FAL_S``). The
server is a throwaway cluster from ``tests.pg``. Run: ``python -m bench.line``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
from pydantic import SecretStr

from bench.rig import Figure, report
from bot.models import InpaintOptions, Job, JobState, Origin, utcnow
from bot.scheduler import Scheduler
from bot.store_pg import PgJobStore
from tests.pg import cluster

REPO = Path(__file__).resolve().parents[1]
JOBS = 600
MEMBERS = 30
MAX_AT_FAL = 16
FAL_S = 0.05  # a fast fake fal job: submit, then COMPLETED this much later
TAKE_OVER_JOBS = 8
TAKE_OVER_LEASE_S = 5.0


class StandInPipeline:
    """What the scheduler asks of ``JobPipeline``, each job a fast fake fal job (or one that never ends)."""

    def __init__(self, store: PgJobStore, *, fal_s: float, hang: bool = False) -> None:
        self.store = store
        self.fal_s = fal_s
        self.hang = hang
        self.settings = SimpleNamespace(limits=SimpleNamespace(max_jobs_per_user=1_000_000))
        self.intake = SimpleNamespace(budgets=self._no_budgets)
        self.started: dict[str, float] = {}  # job id -> when its run began (time.monotonic)
        self.all_started = asyncio.Event()  # set once ``expected`` jobs have begun
        self.expected = TAKE_OVER_JOBS

    @staticmethod
    async def _no_budgets(_origin: Origin) -> tuple[None, None]:
        return None, None

    async def refusal(self, _job: Job) -> None:
        return None

    async def show_waiting(self, _job: Job, **_kwargs: object) -> None:
        return None

    async def fail_interrupted_intake(self, job: Job) -> None:
        job.state = JobState.FAILED
        await self.store.save(job)

    async def run(self, job: Job) -> None:
        self.started.setdefault(job.id, time.monotonic())
        if len(self.started) >= self.expected:
            self.all_started.set()
        if job.state is JobState.WAITING:
            job.state = JobState.SUBMITTING
            job = await self.store.save(job)
            job.request_id = f"req-{job.id[:8]}"
            job.state = JobState.QUEUED
            job = await self.store.save(job)
        if self.hang:
            await asyncio.Event().wait()  # watched for ever: until the process is killed
        await asyncio.sleep(self.fal_s)
        for state in (JobState.FETCHED, JobState.DONE):
            job.state = state
            job = await self.store.save(job)


def new_job(user_id: int, n: int) -> Job:
    now = utcnow()
    origin = Origin(
        user_id=user_id,
        guild_id=1,
        channel_id=2,
        application_id=3,
        interaction_id=n,
        interaction_token=SecretStr("bench-token"),
        token_expires_at=now + timedelta(minutes=15),
    )
    return Job(origin=origin, options=InpaintOptions(prompt="bench"), created_at=now, updated_at=now)


async def accept(store: PgJobStore, count: int, first: int) -> None:
    """``count`` jobs through this process's intake, as the bot's accept leaves them: in the line, its own."""
    now = utcnow()
    for n in range(first, first + count):
        job = new_job(1000 + n % MEMBERS, n)
        await store.create(job)
        reason = await store.reserve(
            job,
            user_daily_usd=None,
            guild_monthly_usd=None,
            day_start=now - timedelta(days=1),
            month_start=now - timedelta(days=31),
            max_unfinished_per_user=1_000_000,
        )
        assert reason is None


async def worker(args: argparse.Namespace) -> None:
    """One bot process: its jobs in the line, then (on "go" from stdin) the scheduler until the line is empty."""
    store = await PgJobStore.open(args.worker, lease_s=args.lease_s, max_size=4)
    pipeline = StandInPipeline(store, fal_s=args.fal_s, hang=args.hang)
    scheduler = Scheduler(store=store, pipeline=cast(Any, pipeline), max_concurrent=args.max_concurrent)
    try:
        await accept(store, args.jobs, args.first)
        await scheduler.resume()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
        scheduler.begin()
        while True:  # until every job in the database is done (the parent kills a hanging worker)
            left = await store._pool.fetchval("SELECT COUNT(*) FROM jobs WHERE state <> 'done'")
            if left == 0:
                break
            await asyncio.sleep(0.05)
        print(f"started {len(pipeline.started)}", flush=True)
    finally:
        await scheduler.close()
        await store.close()


async def spawn(dsn: str, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.line",
        "--worker",
        dsn,
        *extra,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    if line.strip() != b"ready":
        raise RuntimeError(f"a worker failed to start: {line!r}")
    return proc


async def throughput(dsn: str, processes: int) -> float:
    """Jobs per second handed out and carried to done by ``processes`` processes sharing one line."""
    share = JOBS // processes
    procs = [
        await spawn(dsn, "--jobs", str(share), "--first", str(n * share), "--max-concurrent", str(MAX_AT_FAL))
        for n in range(processes)
    ]
    started = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    for proc in procs:
        assert await proc.wait() == 0
    elapsed = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    try:
        done = await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
        peak_ok = done == share * processes
    finally:
        await conn.close()
    assert peak_ok, f"{done} of {share * processes} jobs done"
    return share * processes / elapsed


async def take_over(dsn: str) -> float:
    """Seconds from ``kill -9`` of the process watching jobs at fal to another process watching them again."""
    victim = await spawn(
        dsn, "--jobs", str(TAKE_OVER_JOBS), "--hang", "--lease-s", str(TAKE_OVER_LEASE_S), "--max-concurrent", "64"
    )
    assert victim.stdin is not None
    victim.stdin.write(b"go\n")
    await victim.stdin.drain()
    conn = await asyncpg.connect(dsn)
    store = await PgJobStore.open(dsn, lease_s=TAKE_OVER_LEASE_S, max_size=4)
    pipeline = StandInPipeline(store, fal_s=FAL_S)
    survivor = Scheduler(store=store, pipeline=cast(Any, pipeline), max_concurrent=64)
    try:
        while True:  # until every job is at fal, watched by the victim (another process: nothing signals it here)
            if await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE state = 'queued'") == TAKE_OVER_JOBS:
                break
            await asyncio.sleep(0.02)
        await survivor.resume()
        survivor.begin()
        await asyncio.sleep(1.0)  # a few renewals: the victim holds its lease as a live process does
        assert not pipeline.started, "the survivor took jobs from a live process"
        victim.kill()
        killed = time.monotonic()
        await victim.wait()
        await asyncio.wait_for(pipeline.all_started.wait(), TAKE_OVER_LEASE_S + 30)
        return max(pipeline.started.values()) - killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            victim.kill()
        await survivor.close()
        await store.close()
        await conn.close()


async def run() -> list[Figure]:
    figures: list[Figure] = []
    with cluster() as pg:
        rates = {}
        for processes in (1, 2, 4):
            rates[processes] = await throughput(pg.create_database("line"), processes)
        for processes, rate in rates.items():
            figures.append(
                Figure(
                    f"jobs handed out and done per second, {processes} process(es), fal cap {MAX_AT_FAL}",
                    f"{rate:.0f}/s",
                    f"≤ {MAX_AT_FAL / FAL_S:.0f}/s (the cap over a {FAL_S * 1000:.0f} ms fal job)",
                )
            )
        seconds = await take_over(pg.create_database("takeover"))
        figures.append(
            Figure(
                f"kill -9 to watched again by another process (lease_s = {TAKE_OVER_LEASE_S:g})",
                f"{seconds:.2f} s",
                f"< lease_s + 2 s = {TAKE_OVER_LEASE_S + 2:g} s",
                met=seconds < TAKE_OVER_LEASE_S + 2,
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.line")
    parser.add_argument("--worker", metavar="DSN", help="run as one bot process on this database")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--max-concurrent", type=int, default=MAX_AT_FAL)
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument("--fal-s", type=float, default=FAL_S)
    parser.add_argument("--hang", action="store_true", help="jobs at fal never finish (the take-over's victim)")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    started = time.monotonic()
    figures = asyncio.run(run())
    report(f"The shared line on PostgreSQL ({len(os.sched_getaffinity(0))} CPU(s))", figures, "")
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""The bot's Prometheus metrics, in a registry of its own (SPEC 13); no label ever holds a job, user or request id."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bot.fal_http import FalCallKind, FalCallStatus
from bot.models import JobState
from bot.pacing import DiscordRoute, RateLimitScope

log = logging.getLogger(__name__)

StateCounts = Callable[[], Awaitable[Mapping[str, int]]]

STATE_COUNTS_TIMEOUT_S = 2.0  # a scrape must not hang on a store that does not answer
STATES = tuple(state.value for state in JobState)
NO_GUILD = "none"  # a job from a DM

# fal's queue can hold a job for many minutes; a run is seconds to a few minutes
QUEUE_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
RUN_BUCKETS_S = (1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600)
# Discord wants an answer within 3 s of the command
FIRST_RESPONSE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 5, 10)
POSTED_BUCKETS_S = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


def _seconds(value: float) -> float | None:
    """A duration fit for a histogram: a wall clock that stepped back reads 0, a NaN is dropped."""
    return max(value, 0.0) if math.isfinite(value) else None


class Metrics:
    """Counters, gauges and histograms the fal client, the Discord trace and the pipeline report to; the ops
    server exposes ``registry``. Jobs by state are read from ``state_counts`` at each scrape (``refresh``), the
    line's length from ``line_length`` (without it: the jobs waiting)."""

    def __init__(self, *, state_counts: StateCounts, line_length: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._state_counts = state_counts
        self._line_length = line_length
        self._unreadable = False
        reg = self.registry
        self._jobs = Gauge("fluxpaint_jobs", "Jobs in each state, read from the store", ["state"], registry=reg)
        self._finished = Counter(
            "fluxpaint_jobs_finished", "Jobs that reached a final state in this process", ["state"], registry=reg
        )
        self._fal_calls = Counter(
            "fluxpaint_fal_calls", "HTTP calls to fal by kind and outcome", ["kind", "status"], registry=reg
        )
        self._queue_s = Histogram(
            "fluxpaint_fal_queue_seconds", "Submit to IN_PROGRESS at fal", buckets=QUEUE_BUCKETS_S, registry=reg
        )
        self._run_s = Histogram(
            "fluxpaint_fal_run_seconds", "IN_PROGRESS to COMPLETED at fal", buckets=RUN_BUCKETS_S, registry=reg
        )
        self._first_response_s = Histogram(
            "fluxpaint_first_response_seconds",
            "Command received to the first reply on Discord",
            buckets=FIRST_RESPONSE_BUCKETS_S,
            registry=reg,
        )
        self._posted_s = Histogram(
            "fluxpaint_completed_to_posted_seconds",
            "COMPLETED at fal to the result posted on Discord",
            buckets=POSTED_BUCKETS_S,
            registry=reg,
        )
        self._discord_429 = Counter(
            "fluxpaint_discord_429", "429 answers from Discord", ["route", "scope"], registry=reg
        )
        self._line = Gauge("fluxpaint_line_length", "Jobs in the waiting line", registry=reg)
        if line_length is not None:
            self._line.set_function(lambda: float(line_length()))
        self._usd = Counter("fluxpaint_charged_usd", "USD charged to jobs, by guild", ["guild"], registry=reg)

    async def refresh(self) -> None:
        """Read the jobs by state for a scrape; when the store does not answer, no stale counts are shown."""
        try:
            async with asyncio.timeout(STATE_COUNTS_TIMEOUT_S):
                counts = await self._state_counts()
        except Exception as exc:  # any store's failure, or a slow one: /healthz says so; no stale counts are shown
            if not self._unreadable:  # once per outage, not once per scrape
                log.warning("metrics: jobs by state could not be read; left out until they can be", exc_info=exc)
            self._unreadable = True
            self._jobs.clear()
            if self._line_length is None:
                self._line.set(math.nan)
            return
        if self._unreadable:
            log.info("metrics: jobs by state can be read again")
            self._unreadable = False
        for state in STATES:  # only JobState's values: a label set that cannot grow
            self._jobs.labels(state=state).set(counts.get(state, 0))
        if self._line_length is None:
            self._line.set(counts.get(JobState.WAITING.value, 0))

    # what the fal client and the Discord trace report

    def fal_call(self, kind: FalCallKind, status: FalCallStatus) -> None:
        self._fal_calls.labels(kind=kind, status=status).inc()

    def discord_429(self, route: DiscordRoute = "other", scope: RateLimitScope = "unknown") -> None:
        self._discord_429.labels(route=route, scope=scope).inc()

    # what the pipeline reports

    def observe_queue_s(self, seconds: float) -> None:
        """Time at fal from the submit's answer to the first IN_PROGRESS (0 when it ran at once)."""
        if (value := _seconds(seconds)) is not None:
            self._queue_s.observe(value)

    def observe_run_s(self, seconds: float) -> None:
        """Time at fal from the first IN_PROGRESS to COMPLETED."""
        if (value := _seconds(seconds)) is not None:
            self._run_s.observe(value)

    def observe_first_response_s(self, seconds: float) -> None:
        """From the interaction's creation to the bot's first reply (the acknowledgement)."""
        if (value := _seconds(seconds)) is not None:
            self._first_response_s.observe(value)

    def observe_posted_s(self, seconds: float) -> None:
        """From COMPLETED at fal to the result's last part posted on Discord."""
        if (value := _seconds(seconds)) is not None:
            self._posted_s.observe(value)

    def job_finished(self, state: JobState) -> None:
        """A job reached DONE, FAILED or CANCELLED (counted once, by the writer that saved it)."""
        if state.finished:
            self._finished.labels(state=state.value).inc()

    def charged(self, guild_id: int | None, usd: float) -> None:
        """``usd`` charged to a job of ``guild_id`` (a DM's jobs count under ``none``); nothing for 0 or less."""
        if math.isfinite(usd) and usd > 0:
            self._usd.labels(guild=NO_GUILD if guild_id is None else str(guild_id)).inc(usd)

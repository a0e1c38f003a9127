"""A loop-lag probe: how late the event loop runs a short timer, so a blocking call shows up in the log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.05
WARN_EVERY_S = 10.0  # a loop that stalls again and again is reported once per this many seconds, with the count


class LoopLagProbe:
    """Sleeps ``interval_s`` at a time; the time it overslept is time the loop spent in someone else's callback."""

    def __init__(
        self,
        *,
        warn_s: float,
        interval_s: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.warn_s = warn_s
        self.interval_s = interval_s
        self.clock = clock
        self.longest_s = 0.0
        self.stalls = 0  # lags of at least warn_s
        self._started = clock()
        self._last_warning = float("-inf")
        self._unreported = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, lag_s: float) -> None:
        """Account for one lag; warn at most every ``WARN_EVERY_S``."""
        self.longest_s = max(self.longest_s, lag_s)
        if lag_s < self.warn_s:
            return
        self.stalls += 1
        self._unreported += 1
        now = self.clock()
        if now - self._last_warning >= WARN_EVERY_S:
            log.warning(
                "event loop blocked for %.0f ms (%d stall(s) since the last warning)", lag_s * 1000, self._unreported
            )
            self._last_warning = now
            self._unreported = 0

    async def _run(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, self.clock() - before - self.interval_s))

    def start(self) -> None:
        self._started = self.clock()
        self._task = asyncio.create_task(self._run(), name="fluxpaint-loop-lag")

    async def __aenter__(self) -> LoopLagProbe:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        log.info(
            "event loop: longest stall %.0f ms over %.0f s; %d stall(s) of %.0f ms or more",
            self.longest_s * 1000,
            self.clock() - self._started,
            self.stalls,
            self.warn_s * 1000,
        )

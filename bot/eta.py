"""How long a job at fal will still take, learnt from how fast this bot's jobs moved up fal's queue lately and how
long they ran there; pure bookkeeping with an injected clock, and no estimate at all until there is evidence."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

HORIZON_S = 900.0  # older movement says little about the queue now: a track is re-anchored past this age
MIN_WATCH_S = 30.0  # a job watched this long that moved at least MIN_MOVES places shows how fast the queue moves
MIN_MOVES = 2
RUN_SAMPLES = 20  # the run times of the last jobs that ran
RECOMPUTE_S = 5.0  # the queue's speed is a median over every job; worked out at most this often


@dataclass
class _Track:
    first_s: float
    first_position: int
    last_s: float
    last_position: int

    def speed(self, now: float) -> float | None:
        """Places per second since the job was first seen, counted up to now (a stalled queue slows it down)."""
        moved = self.first_position - self.last_position
        watched = now - self.first_s
        if watched < MIN_WATCH_S or moved < MIN_MOVES:
            return None
        return moved / watched


class QueueEstimator:
    """Told what fal reports for each job, it says how long a job at a given position will still take."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tracks: dict[str, _Track] = {}
        self._finished_tracks: deque[tuple[float, _Track]] = deque(maxlen=50)  # tracks of jobs that left the queue
        self._started: dict[str, float] = {}
        self._runs: deque[float] = deque(maxlen=RUN_SAMPLES)
        self._run_s: float | None = None
        self._speed: float | None = None
        self._speed_at = float("-inf")

    def queued(self, job_id: str, position: int) -> None:
        """fal reports ``job_id`` at ``position`` in its queue."""
        now = self.clock()
        track = self._tracks.get(job_id)
        if track is None or position > track.last_position or now - track.first_s > HORIZON_S:
            # new, sent back (a proxy's reshuffle) or long watched: count from here
            first = track.last_position if track is not None and position <= track.last_position else position
            first_s = track.last_s if track is not None and position <= track.last_position else now
            self._tracks[job_id] = _Track(first_s, first, now, position)
            return
        track.last_s, track.last_position = now, position

    def running(self, job_id: str) -> None:
        """fal started ``job_id``: its time in the queue is over, its run time begins."""
        now = self.clock()
        if (track := self._tracks.pop(job_id, None)) is not None:
            track.last_s, track.last_position = now, -1  # it reached the front: one place past position 0
            self._finished_tracks.append((now, track))
        self._started[job_id] = now  # a job sent back to the queue and started again counts from now

    def finished(self, job_id: str) -> None:
        """fal completed ``job_id``."""
        self._tracks.pop(job_id, None)
        if (started := self._started.pop(job_id, None)) is not None:
            self._runs.append(self.clock() - started)
            self._run_s = statistics.median(self._runs)  # once per job, not at every status event

    def forget(self, job_id: str) -> None:
        self._tracks.pop(job_id, None)
        self._started.pop(job_id, None)

    def queue_speed(self) -> float | None:
        """Places per second the queue moves, the median over the jobs that have shown it; None without evidence."""
        now = self.clock()
        if now - self._speed_at < RECOMPUTE_S:
            return self._speed
        speeds = [s for t in self._tracks.values() if (s := t.speed(now)) is not None]
        if not speeds:  # nobody in the queue shows it now: how fast the last jobs went through it
            speeds = [
                s
                for ended, t in self._finished_tracks
                if now - ended < HORIZON_S and (s := t.speed(t.last_s)) is not None
            ]
        self._speed = statistics.median(speeds) if speeds else None
        self._speed_at = now
        return self._speed

    def eta_s(self, position: int) -> float | None:
        """Seconds until a job at ``position`` is done: its way to the front plus a typical run; None when either
        part is unknown, so that no estimate is made up."""
        speed = self.queue_speed()
        if not speed or self._run_s is None:
            return None
        return (position + 1) / speed + self._run_s

    def unobserved_s(self, position: int | None, *, stale_s: float, near: int, unknown_s: float) -> float:
        """How long a job at ``position`` may go without a look: no longer than its reply may stay stale
        (``stale_s``), and at most half the time it needs, at the queue's speed, to come within ``near`` of the
        front, where every move is shown (``unknown_s`` while the speed is unknown); 0 when it is there already or
        not in the queue."""
        if position is None or position <= near or stale_s <= 0:
            return 0.0
        speed = self.queue_speed()
        to_near = (position - near) / speed / 2 if speed else unknown_s
        return max(0.0, min(stale_s, to_near))

"""The line several processes share on PostgreSQL (SPEC 13): claims in one transaction with the fal cap, the member's
cap and the budgets, leases on each process's jobs, take-over of a dead process's jobs, and the notifications that
wake the other processes. It logs no job data."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from bot.models import Job, JobState
from bot.store_pg_guilds import PgGuilds, at
from bot.store_pg_schema import LINE_LOCK, NOTIFY_CHANNEL
from bot.store_rows import dump_job, load_job, over_budget
from bot.store_schema import (
    AT_FAL_STATES,
    COST_SQL,
    IN_FLIGHT_STATES,
    UNFINISHED_STATES,
    ClaimRequest,
    ClaimResult,
    LineRules,
    LineSnapshot,
    Orphans,
    sql_in,
)

# an unfinished job in these states needs no task of its owner: it is being checked, waits in the line, or waits
# for its mask to be painted
TASKLESS_STATES = (JobState.ACCEPTED, JobState.WAITING, JobState.PAINTING)

log = logging.getLogger("bot.store")

FAIR_MEMORY = timedelta(days=1)  # a member not served for this long counts as never served (fair order)
REFUSAL_MEMORY = timedelta(seconds=60)  # a job a claim left waiting is offered again after this
# Their lease is never handed over: a crash there is "maybe sent", and the job is taken over only as that.
ON_THE_WIRE = (JobState.SUBMITTING, JobState.SEGMENTING)
# $1 is the time. A slot is held by a job at fal, and by a waiting job a live process is starting.
HOLDS_A_SLOT = f"(state IN {sql_in(AT_FAL_STATES)} OR (state = 'waiting' AND starting AND lease_until > $1))"
NOBODYS = "(owner IS NULL OR lease_until <= $1)"  # no live process holds it


class PgLine(PgGuilds):
    def __init__(
        self, pool: asyncpg.Pool, clock: Callable[[], datetime], *, dsn: str, owner: str, lease_s: float
    ) -> None:
        super().__init__(pool, clock)
        self._dsn = dsn  # for the listener's own connection; never shown
        self._owner = owner
        self._lease_s = lease_s
        self._listener: asyncpg.Connection | None = None
        self._seen: dict[str, Job] = {}  # the line's jobs as the last snapshot read them

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def lease_s(self) -> float:
        return self._lease_s

    def _until(self, now: datetime) -> datetime:
        return at(now) + timedelta(seconds=self._lease_s)

    # waking the other processes

    async def _notify(self, conn: Any) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, self._owner)  # sent at commit

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process changes the line; reconnects a lost listener, else a no-op."""
        if self._listener is not None and not self._listener.is_closed():
            return
        conn = await asyncpg.connect(self._dsn)

        def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload != self._owner:
                wake()

        await conn.add_listener(NOTIFY_CHANNEL, heard)
        self._listener = conn

    async def _close_listener(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()

    # the checks a reserve and a claim share

    async def _spend(
        self, conn: Any, *, user_id: int | None, guild_id: int | None, since: datetime, exclude: str | None = None
    ) -> float:
        where: list[str] = ["created_at >= $1"]
        params: list[object] = [at(since)]
        for column, value, op in (("user_id", user_id, "="), ("guild_id", guild_id, "="), ("id", exclude, "<>")):
            if value is not None:
                params.append(value)
                where.append(f"{column} {op} ${len(params)}")
        sql = f"SELECT COALESCE(SUM({COST_SQL}), 0) FROM jobs WHERE {' AND '.join(where)}"
        return float(await conn.fetchval(sql, *params))

    async def _refusal(
        self,
        conn: Any,
        *,
        job_id: str,
        user_id: int,
        guild_id: int | None,
        estimate_usd: float,
        user_daily_usd: float | None,
        guild_monthly_usd: float | None,
        rules: LineRules,
    ) -> str | None:
        """Why the member may not have this job in flight (SQLite's ``_reserve`` checks, in the same order)."""
        others = await conn.fetchval(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND id <> $2 AND state IN {sql_in(IN_FLIGHT_STATES)}",
            user_id,
            job_id,
        )
        if int(others) >= rules.max_unfinished_per_user:
            return "user_limit"
        if user_daily_usd is not None:  # the budget of the server that set it counts spend in that server
            spent = await self._spend(conn, user_id=user_id, guild_id=guild_id, since=rules.day_start, exclude=job_id)
            if over_budget(spent, estimate_usd, user_daily_usd):
                return "user_budget"
        if guild_id is not None and guild_monthly_usd is not None:
            spent = await self._spend(conn, user_id=None, guild_id=guild_id, since=rules.month_start, exclude=job_id)
            if over_budget(spent, estimate_usd, guild_monthly_usd):
                return "guild_budget"
        return None

    # the line

    async def line_snapshot(self) -> LineSnapshot:
        """Every process's jobs in the line (oldest first), which are this process's or no live one's, the slots in
        use by member, and each member's latest claim. A job unchanged since the last pass is not read again
        (every process reads the whole line at every pass; parsing it would cost each of them ~30 µs a job)."""
        now = at(self._clock())
        rows = await self._pool.fetch(
            f"SELECT id, user_id, owner, refused, version, (state = 'waiting' AND NOT {HOLDS_A_SLOT}) AS in_line, "
            f"{NOBODYS} AS nobodys, (refused IS NOT NULL AND refused_at > $2) AS held FROM jobs "
            f"WHERE state = 'waiting' OR {HOLDS_A_SLOT} ORDER BY created_at, seq",
            now,
            now - REFUSAL_MEMORY,
        )
        in_line = [row for row in rows if row["in_line"]]
        jobs = await self._line_jobs({row["id"]: row["version"] for row in in_line})
        snapshot = LineSnapshot([], set(), set(), [], Counter(), {})
        for row in rows:
            if not row["in_line"]:
                snapshot.active[int(row["user_id"])] += 1
            elif (job := jobs.get(row["id"])) is not None:
                mine = row["owner"] == self._owner and not row["nobodys"]
                if row["held"]:
                    if mine:
                        snapshot.refused.append((job, row["refused"]))
                    continue
                snapshot.waiting.append(job)
                if mine:
                    snapshot.mine.add(job.id)
                if mine or row["nobodys"]:
                    snapshot.claimable.add(job.id)
        served = await self._pool.fetch(
            "SELECT user_id, MAX(claimed_at) AS last FROM jobs WHERE claimed_at >= $1 GROUP BY user_id",
            now - FAIR_MEMORY,
        )
        snapshot.last_started = {int(r["user_id"]): r["last"] for r in served}
        return snapshot

    async def _line_jobs(self, versions: dict[str, int]) -> dict[str, Job]:
        """The jobs of the line at these versions: from the last pass where unchanged, else read. The scheduler
        only reads them; a job it starts comes fresh from the claim."""
        stale = [
            job_id
            for job_id, version in versions.items()
            if (c := self._seen.get(job_id)) is None or c.version != version
        ]
        if stale:
            for row in await self._pool.fetch("SELECT id, data FROM jobs WHERE id = ANY($1::text[])", stale):
                if (job := load_job(row["id"], row["data"])) is not None:
                    self._seen[job.id] = job
        self._seen = {job_id: job for job_id, job in self._seen.items() if job_id in versions}
        return self._seen

    async def claim_waiting(self, requests: Sequence[ClaimRequest], rules: LineRules) -> ClaimResult:
        """Start waiting jobs in the order given while the fal cap across every process allows; a job another
        transaction holds is skipped (``SKIP LOCKED``), one over its member's cap or budget is left waiting and
        left out of the line for a while."""
        result = ClaimResult()
        if not requests:
            return result
        now = at(self._clock())
        async with self._transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LINE_LOCK)  # one claim or reserve at a time
            in_use = int(await conn.fetchval(f"SELECT COUNT(*) FROM jobs WHERE {HOLDS_A_SLOT}", now))
            for request in requests:
                if in_use >= rules.max_at_fal:
                    break
                row = await conn.fetchrow(
                    "SELECT id, user_id, guild_id, cost_estimate_usd, data FROM jobs WHERE id = $2 AND state = "
                    f"'waiting' AND NOT starting AND (owner = $3 OR {NOBODYS}) FOR UPDATE SKIP LOCKED",
                    now,
                    request.job_id,
                    self._owner,
                )
                if row is None:
                    continue  # started, cancelled, another process's, or being written meanwhile
                reason = await self._refusal(
                    conn,
                    job_id=row["id"],
                    user_id=int(row["user_id"]),
                    guild_id=row["guild_id"],
                    estimate_usd=float(row["cost_estimate_usd"]),
                    user_daily_usd=request.user_daily_usd,
                    guild_monthly_usd=request.guild_monthly_usd,
                    rules=rules,
                )
                if reason is not None:
                    result.refused[row["id"]] = reason
                    continue
                if (job := load_job(row["id"], row["data"])) is not None:
                    result.claimed.append(job)
                    in_use += 1
            if result.refused:  # every process leaves them out of its fair order for a while: no slot waits on them
                await conn.execute(
                    "UPDATE jobs SET refused = r.reason, refused_at = $1 "
                    "FROM unnest($2::text[], $3::text[]) AS r(id, reason) WHERE jobs.id = r.id",
                    now,
                    list(result.refused),
                    list(result.refused.values()),
                )
            if result.claimed:
                await conn.execute(
                    "UPDATE jobs SET owner = $1, lease_until = $2, claimed_at = $3, starting = TRUE, refused = NULL "
                    "WHERE id = ANY($4::text[])",
                    self._owner,
                    self._until(now),
                    now,
                    [job.id for job in result.claimed],
                )
        return result

    async def claim_orphans(self) -> Orphans:
        """Take the unfinished jobs no live process holds, those in the line included (they are shown and started
        by this process from now on); and when the next lease another process holds runs out."""
        now = at(self._clock())
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT id, data FROM jobs WHERE state IN {sql_in(UNFINISHED_STATES)} AND {NOBODYS} "
                "ORDER BY created_at, seq FOR UPDATE SKIP LOCKED",
                now,
            )
            jobs = [job for job in (load_job(row["id"], row["data"]) for row in rows) if job is not None]
            if rows:
                await conn.execute(
                    # a job of this very process (its renewals stalled) keeps its slot; a dead one's starts over
                    "UPDATE jobs SET starting = starting AND owner IS NOT DISTINCT FROM $1, owner = $1, "
                    "lease_until = $2 WHERE id = ANY($3::text[])",
                    self._owner,
                    self._until(now),
                    [row["id"] for row in rows],
                )
            if jobs:
                # A fence: a former owner that only stalled still holds the job at the version it read, so its
                # next save (a submit's "submitting" first of all) fails instead of overwriting the new owner's.
                for job in jobs:
                    job.version += 1
                await conn.executemany(
                    "UPDATE jobs SET version = $1, data = $2 WHERE id = $3",
                    [(job.version, dump_job(job, self._clock()), job.id) for job in jobs],
                )
            next_expiry = await conn.fetchval(
                f"SELECT MIN(lease_until) FROM jobs WHERE state IN {sql_in(UNFINISHED_STATES)} "
                "AND owner <> $1 AND lease_until > $2",
                self._owner,
                now,
            )
        return Orphans(jobs, next_expiry)

    async def renew(self, job_ids: Collection[str]) -> set[str]:
        """Extend the lease on the jobs this process carries (``job_ids``, its tasks) and on its jobs that need no
        task (being checked, in the line, waiting for a painted mask); the ids among ``job_ids`` that another
        process owns now. A job of this process that no task carries (its runner stopped) is let lapse, so that it
        is taken over instead of held for ever."""
        now = at(self._clock())
        ids = list(job_ids)
        async with self._transaction() as conn:
            await conn.execute(
                f"UPDATE jobs SET lease_until = $1 WHERE owner = $2 AND state IN {sql_in(UNFINISHED_STATES)} "
                f"AND (id = ANY($3::text[]) OR state IN {sql_in(TASKLESS_STATES)})",
                self._until(now),
                self._owner,
                ids,
            )
            if not ids:
                return set()
            lost = await conn.fetch(
                f"SELECT id FROM jobs WHERE id = ANY($1::text[]) AND state IN {sql_in(UNFINISHED_STATES)} "
                "AND owner IS DISTINCT FROM $2",
                ids,
                self._owner,
            )
        return {row["id"] for row in lost}

    async def release(self, job_ids: Collection[str], *, hand_over: bool = False) -> None:
        """The tasks carrying these jobs ended: their slots are free; with ``hand_over`` the jobs are nobody's
        (one that may be on the wire keeps its lease)."""
        if not job_ids:
            return
        if hand_over:
            sql = (
                "UPDATE jobs SET owner = NULL, lease_until = NULL, starting = FALSE "
                f"WHERE owner = $1 AND id = ANY($2::text[]) AND state NOT IN {sql_in(ON_THE_WIRE)}"
            )
        else:
            sql = "UPDATE jobs SET starting = FALSE WHERE owner = $1 AND id = ANY($2::text[])"
        async with self._transaction() as conn:
            await conn.execute(sql, self._owner, list(job_ids))
            await self._notify(conn)  # a slot may be free, jobs up for taking

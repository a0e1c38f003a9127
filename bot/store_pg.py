"""PgJobStore over an asyncpg pool: the store several bot processes share (SPEC 13), with JobStore's methods and
semantics (the line they share is ``bot.store_pg_line``). It logs no job data and never shows the DSN's password."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

import asyncpg

from bot.models import FINISHED_STATES, Job, JobState, utcnow
from bot.store_pg_guilds import at
from bot.store_pg_line import PgLine
from bot.store_pg_schema import INSERT_JOB, LINE_LOCK, UPDATE_JOB, migrate_pg, rowcount
from bot.store_rows import dump_job, load_job, masked_url
from bot.store_schema import (
    AT_FAL_STATES,
    COST_SQL,
    IN_FLIGHT_STATES,
    UNFINISHED_STATES,
    LineRules,
    MemberFacts,
    StaleJobError,
    UsageRow,
    sql_in,
)

log = logging.getLogger("bot.store")

POOL_MAX_SIZE = 10


def new_owner_id() -> str:
    """This process's name in the ``owner`` column: readable for an operator, unique across restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _fields(job: Job, now: datetime) -> tuple[Any, ...]:
    """The job's columns after ``id``, in ``JOB_COLUMNS`` order up to ``data``."""
    o = job.origin
    return (
        job.state.value,
        o.user_id,
        o.guild_id,
        o.channel_id,
        at(job.created_at),
        at(job.updated_at),
        job.request_id,
        job.cost_estimate_usd,
        job.cost_usd,
        dump_job(job, now),
    )


class PgJobStore(PgLine):
    """The job store on PostgreSQL; every method is one transaction, so several processes may share it."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Callable[[], datetime],
        *,
        dsn: str,
        owner: str,
        lease_s: float,
        shown_as: str,
    ) -> None:
        super().__init__(pool, clock, dsn=dsn, owner=owner, lease_s=lease_s)
        self._shown_as = shown_as
        self._closed = False

    def __repr__(self) -> str:
        return f"PgJobStore({self._shown_as!r}, owner={self.owner!r})"

    # life cycle

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        lease_s: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        owner: str | None = None,
        max_size: int = POOL_MAX_SIZE,
    ) -> PgJobStore:
        """Connect a pool to ``dsn`` (``postgresql://user:password@host/db``) and migrate the database.

        Raises:
            StoreError: the database was written by a newer version of the bot.
            OSError, asyncpg.PostgresError: it cannot be reached or refuses the login.
        """
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
        try:
            async with pool.acquire() as conn:
                await migrate_pg(conn)
        except BaseException:
            await pool.close()
            raise
        store = cls(pool, clock, dsn=dsn, owner=owner or new_owner_id(), lease_s=lease_s, shown_as=masked_url(dsn))
        log.info("job store: PostgreSQL at %s, owner %s, lease %.0f s", store._shown_as, store.owner, lease_s)
        return store

    async def ping(self) -> None:
        """One trivial query: the store answers (for /healthz).

        Raises:
            OSError, asyncpg.PostgresError: it does not.
        """
        await self._pool.fetchval("SELECT 1")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._close_listener()
            finally:
                await self._pool.close()

    async def __aenter__(self) -> PgJobStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _jobs(self, where: str, *params: object) -> list[Job]:
        rows = await self._pool.fetch(f"SELECT id, data FROM jobs WHERE {where} ORDER BY created_at, seq", *params)
        return [job for job in (load_job(row["id"], row["data"]) for row in rows) if job is not None]

    # jobs

    async def create(self, job: Job, *, max_unfinished_per_user: int | None = None) -> bool:
        """Insert a new job; False (and nothing written) when its member already has ``max_unfinished_per_user``
        unfinished jobs, those still being checked included. An existing id is an error
        (asyncpg.UniqueViolationError). A job being checked (ACCEPTED) is this process's until it is in the line."""
        now = self._clock()
        owner, until = (self.owner, self._until(now)) if job.state is JobState.ACCEPTED else (None, None)
        async with self._transaction() as conn:
            if max_unfinished_per_user is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('fluxpaint:user:' || $1::bigint::text, 0))",
                    job.origin.user_id,
                )
                count = await conn.fetchval(
                    f"SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND state IN {sql_in(UNFINISHED_STATES)}",
                    job.origin.user_id,
                )
                if int(count) >= max_unfinished_per_user:
                    return False
            job.version = 0
            await conn.execute(INSERT_JOB, job.id, *_fields(job, now), job.version, owner, until)
        return True

    async def _update(self, conn: Any, job: Job) -> None:
        """Write ``job`` over the version it was read at, and bump it.

        Raises:
            StaleJobError: another writer saved the job meanwhile; nothing was written.
        """
        read = job.version
        job.version = read + 1
        try:
            status = await conn.execute(UPDATE_JOB, *_fields(job, self._clock()), job.version, job.id, read)
        except BaseException:
            job.version = read  # nothing was written: the object must still match the row
            raise
        if rowcount(status) != 1:
            job.version = read
            raise StaleJobError(job.id, read)

    async def save(self, job: Job) -> Job:
        """Stamp ``updated_at`` and write the job; it is committed when this returns. Returns the same object.

        Raises:
            StaleJobError: the row changed since ``job`` was read (a cancel won the race); re-read it.
        """
        job.updated_at = self._clock()
        read = job.version
        try:
            await self._update(self._pool, job)  # one statement: its own transaction
        except BaseException:
            job.version = read
            raise
        return job

    async def get(self, job_id: str) -> Job | None:
        data = await self._pool.fetchval("SELECT data FROM jobs WHERE id = $1", job_id)
        return None if data is None else load_job(job_id, data)

    async def list_unfinished(self) -> list[Job]:
        """Every job not done, failed or cancelled, oldest first."""
        return await self._jobs(f"state IN {sql_in(UNFINISHED_STATES)}")

    async def waiting_line(self) -> tuple[list[Job], Counter[int]]:
        """The jobs waiting in the line, oldest first, and how many jobs each member has at fal, in one statement
        (as JobStore's; the scheduler of several processes reads ``line_snapshot``)."""
        rows = await self._pool.fetch(
            "SELECT id, user_id, CASE WHEN state = 'waiting' THEN data END AS data FROM jobs "
            f"WHERE state = 'waiting' OR state IN {sql_in(AT_FAL_STATES)} ORDER BY created_at, seq"
        )
        waiting: list[Job] = []
        active: Counter[int] = Counter()
        for row in rows:
            if row["data"] is None:
                active[int(row["user_id"])] += 1
            elif (job := load_job(row["id"], row["data"])) is not None:
                waiting.append(job)
        return waiting, active

    async def count_unfinished(self, user_id: int) -> int:
        """The member's jobs not done, failed or cancelled, those still being checked included."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND state IN {sql_in(UNFINISHED_STATES)}"
        return int(await self._pool.fetchval(sql, user_id))

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state, every state named (for /metrics)."""
        rows = await self._pool.fetch("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {state.value: 0 for state in JobState} | {str(row["state"]): int(row["n"]) for row in rows}

    async def member_facts(self, guild_id: int | None, user_id: int) -> MemberFacts:
        """Ban, unfinished jobs and the guild's admin state in one round trip."""
        row = await self._pool.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM guild_bans WHERE guild_id = $1 AND user_id = $2), "
            f"(SELECT COUNT(*) FROM jobs WHERE user_id = $2 AND state IN {sql_in(UNFINISHED_STATES)}), "
            "g.paused, g.user_daily_set, g.user_daily_usd, g.guild_monthly_set, g.guild_monthly_usd "
            "FROM (SELECT 1) AS one LEFT JOIN guild_settings AS g ON g.guild_id = $1",
            guild_id,
            user_id,
        )
        return MemberFacts.of_row(guild_id, tuple(row))

    async def forget_expired_tokens(self) -> int:
        """Blank the interaction token of every row whose token expired or whose job ended; returns how many."""
        status = await self._pool.execute(
            "UPDATE jobs SET data = jsonb_set(data, '{origin,interaction_token}', '\"\"') "
            "WHERE data->'origin'->>'interaction_token' <> '' AND "
            f"(state IN {sql_in(FINISHED_STATES)} OR (data->'origin'->>'token_expires_at')::timestamptz <= $1)",
            at(self._clock()),
        )
        return rowcount(status)

    async def prune(self, before: datetime) -> list[str]:
        """Delete finished jobs last changed before ``before``; returns their ids so their files can go too."""
        rows = await self._pool.fetch(
            f"DELETE FROM jobs WHERE state IN {sql_in(FINISHED_STATES)} AND updated_at < $1 RETURNING id", at(before)
        )
        return [row["id"] for row in rows]

    async def recent_jobs(self, *, user_id: int, guild_id: int | None, limit: int = 10) -> list[Job]:
        """The member's latest jobs in this server, newest first (one indexed query)."""
        rows = await self._pool.fetch(
            "SELECT id, data FROM jobs WHERE user_id = $1 AND guild_id IS NOT DISTINCT FROM $2 "
            "ORDER BY created_at DESC, seq DESC LIMIT $3",
            user_id,
            guild_id,
            limit,
        )
        return [job for job in (load_job(row["id"], row["data"]) for row in rows) if job is not None]

    # money

    async def spend(self, *, user_id: int | None = None, guild_id: int | None = None, since: datetime) -> float:
        """USD committed by jobs created at or after ``since``: actual costs, plus estimates of jobs in flight."""
        return await self._spend(self._pool, user_id=user_id, guild_id=guild_id, since=since)

    async def reserve(
        self,
        job: Job,
        *,
        user_daily_usd: float | None,
        guild_monthly_usd: float | None,
        day_start: datetime,
        month_start: datetime,
        max_unfinished_per_user: int,
    ) -> str | None:
        """Atomically check the member's job limit and both budgets, then move ``job`` to WAITING, this process's.

        As JobStore's; the checks and the write hold the line's lock, so two processes reserving for one member
        (or one guild) at once cannot both pass a budget that fits one.
        """
        before = (job.state, job.updated_at, job.version)
        rules = LineRules(
            max_at_fal=0, max_unfinished_per_user=max_unfinished_per_user, day_start=day_start, month_start=month_start
        )
        try:
            async with self._transaction() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LINE_LOCK)
                reason = await self._refusal(
                    conn,
                    job_id=job.id,
                    user_id=job.origin.user_id,
                    guild_id=job.origin.guild_id,
                    estimate_usd=job.cost_estimate_usd,
                    user_daily_usd=user_daily_usd,
                    guild_monthly_usd=guild_monthly_usd,
                    rules=rules,
                )
                if reason is not None:
                    return reason
                job.state, job.updated_at = JobState.WAITING, self._clock()
                await self._update(conn, job)
                await conn.execute(  # this process's to show and start; any process's once this one is gone
                    "UPDATE jobs SET owner = $2, lease_until = $3, starting = FALSE WHERE id = $1",
                    job.id,
                    self.owner,
                    self._until(self._clock()),
                )
                await self._notify(conn)  # the other processes' members may have moved back a place
        except BaseException:
            job.state, job.updated_at, job.version = before  # the commit failed: the row is as it was
            raise
        return None

    async def usage(self, *, guild_id: int | None, since: datetime, until: datetime | None = None) -> list[UsageRow]:
        """Per-member jobs, delivered images and spend for jobs created in [since, until), biggest spender first.

        ``guild_id=None`` reports across every guild. Jobs refused or failed before fal (nothing committed) are
        left out; in-flight jobs count with their estimate.
        """
        where: list[str] = ["created_at >= $1"]
        params: list[object] = [at(since)]
        if until is not None:
            params.append(at(until))
            where.append(f"created_at < ${len(params)}")
        if guild_id is not None:
            params.append(guild_id)
            where.append(f"guild_id = ${len(params)}")
        where.append(f"(cost_usd IS NOT NULL OR state IN {sql_in((*IN_FLIGHT_STATES, JobState.DONE))})")
        rows = await self._pool.fetch(
            "SELECT user_id, COUNT(*) AS jobs, "
            "COALESCE(SUM(CASE WHEN state = 'done' THEN jsonb_array_length(data->'result_files') ELSE 0 END), 0), "
            f"COALESCE(SUM({COST_SQL}), 0) AS spent FROM jobs WHERE {' AND '.join(where)} "
            "GROUP BY user_id ORDER BY spent DESC, jobs DESC, user_id",
            *params,
        )
        return [UsageRow(user_id=u, jobs=j, images=i, spent_usd=s) for u, j, i, s in rows]

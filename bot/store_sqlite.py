"""JobStore over aiosqlite, the default store for one process: jobs and budgets (guild state in
``bot.store_sqlite_guilds``). It logs no job data."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from bot.models import FINISHED_STATES, Job, JobState, utcnow
from bot.store_rows import dump_job, load_job, over_budget
from bot.store_schema import (
    COST_SQL,
    IN_FLIGHT_STATES,
    INSERT_JOB,
    UNFINISHED_STATES,
    UPDATE_JOB,
    MemberFacts,
    StaleJobError,
    UsageRow,
    migrate,
    sql_in,
)
from bot.store_sqlite_guilds import SqliteGuilds, ts

log = logging.getLogger("bot.store")

BUSY_TIMEOUT_MS = 10_000


def _fields(job: Job, now: datetime) -> tuple[Any, ...]:
    """The job's columns after ``id``, in ``JOB_COLUMNS`` order up to ``data``."""
    o = job.origin
    return (
        job.state.value,
        o.user_id,
        o.guild_id,
        o.channel_id,
        ts(job.created_at),
        ts(job.updated_at),
        job.request_id,
        job.cost_estimate_usd,
        job.cost_usd,
        dump_job(job, now),
    )


class JobStore(SqliteGuilds):
    """One aiosqlite connection; writes are serialised by a lock and run in explicit transactions."""

    def __init__(self, db: aiosqlite.Connection, path: Path, clock: Callable[[], datetime]) -> None:
        super().__init__(db, clock)
        self.path = path
        self._closed = False

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    # life cycle

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], datetime] = utcnow) -> JobStore:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises:
            StoreError: the file was written by a newer version of the bot.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)  # autocommit: transactions are explicit
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA secure_delete=ON")  # a blanked token is overwritten, not left in free space
            await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        return cls(db, path, clock)

    async def ping(self) -> None:
        """One trivial query: the store answers (for /healthz).

        Raises:
            sqlite3.Error: it does not.
        """
        await self._scalar("SELECT 1")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.close()

    async def __aenter__(self) -> JobStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _jobs(self, where: str, params: Sequence[Any] = ()) -> list[Job]:
        rows = await self._fetchall(f"SELECT id, data FROM jobs WHERE {where} ORDER BY created_at, rowid", params)
        return [job for job in (load_job(job_id, data) for job_id, data in rows) if job is not None]

    # jobs

    async def create(self, job: Job, *, max_unfinished_per_user: int | None = None) -> bool:
        """Insert a new job; False (and nothing written) when its member already has ``max_unfinished_per_user``
        unfinished jobs, those still being checked included. An existing id is an error (sqlite3.IntegrityError)."""
        async with self._transaction() as db:
            if max_unfinished_per_user is not None:
                sql = f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN {sql_in(UNFINISHED_STATES)}"
                if int(await self._scalar(sql, (job.origin.user_id,))) >= max_unfinished_per_user:
                    return False
            job.version = 0
            await db.execute(INSERT_JOB, (job.id, *_fields(job, self._clock()), job.version))
        return True

    async def _update(self, db: aiosqlite.Connection, job: Job) -> None:
        """Write ``job`` over the version it was read at, and bump it.

        Raises:
            StaleJobError: another writer saved the job meanwhile; nothing was written.
        """
        read = job.version
        job.version = read + 1
        try:
            cursor = await db.execute(UPDATE_JOB, (*_fields(job, self._clock()), job.version, job.id, read))
        except BaseException:
            job.version = read  # nothing was written: the object must still match the row
            raise
        if cursor.rowcount != 1:
            job.version = read
            raise StaleJobError(job.id, read)

    async def save(self, job: Job) -> Job:
        """Stamp ``updated_at`` and write the job; it is on disk when this returns. Returns the same object.

        Raises:
            StaleJobError: the row changed since ``job`` was read (a cancel won the race); re-read it.
        """
        job.updated_at = self._clock()
        read = job.version
        try:
            async with self._transaction() as db:
                await self._update(db, job)
        except BaseException:
            job.version = read  # a failed commit rolled the row back too
            raise
        return job

    async def get(self, job_id: str) -> Job | None:
        data = await self._scalar("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return None if data is None else load_job(job_id, data)

    async def list_unfinished(self) -> list[Job]:
        """Every job not done, failed or cancelled, oldest first."""
        return await self._jobs(f"state IN {sql_in(UNFINISHED_STATES)}")

    async def waiting_line(self) -> tuple[list[Job], Counter[int]]:
        """The jobs waiting in the bot's line, oldest first, and how many jobs each member has at fal: what the
        scheduler reads at every pass, without loading every job at fal (a thousand cost the loop ~20 ms). One
        statement, so a job that leaves the line meanwhile is not counted twice (once waiting, once at fal)."""
        at_fal = [state for state in JobState if state.at_fal]
        rows = await self._fetchall(
            "SELECT id, user_id, CASE WHEN state = ? THEN data END FROM jobs "
            f"WHERE state = ? OR state IN {sql_in(at_fal)} ORDER BY created_at, rowid",
            (JobState.WAITING.value, JobState.WAITING.value),
        )
        waiting: list[Job] = []
        active: Counter[int] = Counter()
        for job_id, user_id, data in rows:
            if data is None:
                active[int(user_id)] += 1
            elif (job := load_job(job_id, data)) is not None:
                waiting.append(job)
        return waiting, active

    async def count_unfinished(self, user_id: int) -> int:
        """The member's jobs not done, failed or cancelled, those still being checked included."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN {sql_in(UNFINISHED_STATES)}"
        return int(await self._scalar(sql, (user_id,)))

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state, every state named (for /metrics)."""
        rows = await self._fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state.value: 0 for state in JobState} | {str(state): int(n) for state, n in rows}

    async def member_facts(self, guild_id: int | None, user_id: int) -> MemberFacts:
        """Ban, unfinished jobs and the guild's admin state in one round trip (the checks run before Discord's
        3 s acknowledgement, for every command of a burst)."""
        rows = await self._fetchall(
            "SELECT EXISTS (SELECT 1 FROM guild_bans WHERE guild_id = ? AND user_id = ?), "
            f"(SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN {sql_in(UNFINISHED_STATES)}), "
            "g.paused, g.user_daily_set, g.user_daily_usd, g.guild_monthly_set, g.guild_monthly_usd "
            "FROM (SELECT 1) LEFT JOIN guild_settings AS g ON g.guild_id = ?",
            (guild_id, user_id, user_id, guild_id),
        )
        return MemberFacts.of_row(guild_id, rows[0])

    async def forget_expired_tokens(self) -> int:
        """Blank the interaction token of every row whose token expired or whose job ended; returns how many."""
        now = ts(self._clock())
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE jobs SET data = json_set(data, '$.origin.interaction_token', '') "
                "WHERE json_extract(data, '$.origin.interaction_token') != '' AND "
                f"(state IN {sql_in(FINISHED_STATES)} OR "
                "strftime('%Y-%m-%dT%H:%M:%f', json_extract(data, '$.origin.token_expires_at')) "
                "<= strftime('%Y-%m-%dT%H:%M:%f', ?))",
                (now,),
            )
            changed = int(cursor.rowcount)
        if changed:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old copies of the rows leave the log too
        return changed

    async def prune(self, before: datetime) -> list[str]:
        """Delete finished jobs last changed before ``before``; returns their ids so their files can go too."""
        async with self._transaction() as db:
            sql = f"DELETE FROM jobs WHERE state IN {sql_in(FINISHED_STATES)} AND updated_at < ? RETURNING id"
            async with db.execute(sql, (ts(before),)) as cursor:
                return [row[0] for row in await cursor.fetchall()]

    async def recent_jobs(self, *, user_id: int, guild_id: int | None, limit: int = 10) -> list[Job]:
        """The member's latest jobs in this server, newest first (one indexed query)."""
        rows = await self._fetchall(
            "SELECT id, data FROM jobs WHERE user_id = ? AND guild_id IS ? ORDER BY created_at DESC, rowid DESC "
            "LIMIT ?",
            (user_id, guild_id, limit),
        )
        return [job for job in (load_job(job_id, data) for job_id, data in rows) if job is not None]

    # money

    async def spend(self, *, user_id: int | None = None, guild_id: int | None = None, since: datetime) -> float:
        """USD committed by jobs created at or after ``since``: actual costs, plus estimates of jobs in flight."""
        return await self._spend(user_id=user_id, guild_id=guild_id, since=since)

    async def _spend(
        self, *, user_id: int | None, guild_id: int | None, since: datetime, exclude: str | None = None
    ) -> float:
        where: list[str] = ["created_at >= ?"]
        params: list[object] = [ts(since)]
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if guild_id is not None:
            where.append("guild_id = ?")
            params.append(guild_id)
        if exclude is not None:
            where.append("id != ?")
            params.append(exclude)
        sql = f"SELECT COALESCE(SUM({COST_SQL}), 0) FROM jobs WHERE {' AND '.join(where)}"
        return float(await self._scalar(sql, params))

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
        """Atomically check the member's job limit and both budgets, then move ``job`` to WAITING.

        A budget of ``None`` means no limit. Returns ``None`` when the job is in the line, else the reason it was
        refused: ``"user_limit"``, ``"user_budget"`` or ``"guild_budget"`` (the row is then left unchanged).
        Jobs still in ACCEPTED (being validated) count neither towards the limit nor the budgets.
        """
        before = (job.state, job.updated_at, job.version)
        try:
            return await self._reserve(
                job, user_daily_usd, guild_monthly_usd, day_start, month_start, max_unfinished_per_user
            )
        except BaseException:
            job.state, job.updated_at, job.version = before  # the commit failed: the row is as it was
            raise

    async def _reserve(
        self,
        job: Job,
        user_daily_usd: float | None,
        guild_monthly_usd: float | None,
        day_start: datetime,
        month_start: datetime,
        max_unfinished_per_user: int,
    ) -> str | None:
        user_id, guild_id = job.origin.user_id, job.origin.guild_id
        async with self._transaction() as db:
            others = await self._scalar(
                f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND id != ? AND state IN {sql_in(IN_FLIGHT_STATES)}",
                (user_id, job.id),
            )
            if int(others) >= max_unfinished_per_user:
                return "user_limit"
            if user_daily_usd is not None:  # the budget of the server that set it counts spend in that server
                spent = await self._spend(user_id=user_id, guild_id=guild_id, since=day_start, exclude=job.id)
                if over_budget(spent, job.cost_estimate_usd, user_daily_usd):
                    return "user_budget"
            if guild_id is not None and guild_monthly_usd is not None:
                spent = await self._spend(user_id=None, guild_id=guild_id, since=month_start, exclude=job.id)
                if over_budget(spent, job.cost_estimate_usd, guild_monthly_usd):
                    return "guild_budget"
            job.state, job.updated_at = JobState.WAITING, self._clock()
            await self._update(db, job)
        return None

    async def usage(self, *, guild_id: int | None, since: datetime, until: datetime | None = None) -> list[UsageRow]:
        """Per-member jobs, delivered images and spend for jobs created in [since, until), biggest spender first.

        ``guild_id=None`` reports across every guild. Jobs refused or failed before fal (nothing committed) are
        left out; in-flight jobs count with their estimate.
        """
        where: list[str] = ["created_at >= ?"]
        params: list[object] = [ts(since)]
        if until is not None:
            where.append("created_at < ?")
            params.append(ts(until))
        if guild_id is not None:
            where.append("guild_id = ?")
            params.append(guild_id)
        where.append(f"(cost_usd IS NOT NULL OR state IN {sql_in((*IN_FLIGHT_STATES, JobState.DONE))})")
        rows = await self._fetchall(
            "SELECT user_id, COUNT(*) AS jobs, "
            "COALESCE(SUM(CASE WHEN state = 'done' THEN json_array_length(data, '$.result_files') ELSE 0 END), 0), "
            f"COALESCE(SUM({COST_SQL}), 0) AS spent FROM jobs WHERE {' AND '.join(where)} "
            "GROUP BY user_id ORDER BY spent DESC, jobs DESC, user_id",
            params,
        )
        return [UsageRow(user_id=u, jobs=j, images=i, spent_usd=s) for u, j, i, s in rows]

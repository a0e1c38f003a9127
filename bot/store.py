"""JobStore over aiosqlite: jobs, budgets, bans and the admin log. It logs no job data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import pydantic

from bot.config import LoraEntry, StyleEntry
from bot.models import FINISHED_STATES, Job, JobState, utcnow
from bot.store_schema import (
    COST_SQL,
    IN_FLIGHT_STATES,
    INSERT_JOB,
    UNCHANGED,
    UNFINISHED_STATES,
    UPDATE_JOB,
    AdminLogEntry,
    BudgetChange,
    GuildSettings,
    MemberFacts,
    StaleJobError,
    UsageRow,
    migrate,
    sql_in,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
USD_EPSILON = 1e-9  # a budget that fits exactly must pass despite float rounding


def _ts(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes given to the store must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _from_ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _dump(job: Job, now: datetime) -> str:
    data = job.model_dump(mode="json")
    # The token is kept only while it can still be used: a finished job or an expired token has no use for it.
    usable = not job.state.finished and now < job.origin.token_expires_at
    data["origin"]["interaction_token"] = job.origin.interaction_token.get_secret_value() if usable else ""
    return json.dumps(data, separators=(",", ":"))


def _fields(job: Job, now: datetime) -> tuple[Any, ...]:
    """The job's columns after ``id``, in ``JOB_COLUMNS`` order up to ``data``."""
    o = job.origin
    return (
        job.state.value,
        o.user_id,
        o.guild_id,
        o.channel_id,
        _ts(job.created_at),
        _ts(job.updated_at),
        job.request_id,
        job.cost_estimate_usd,
        job.cost_usd,
        _dump(job, now),
    )


def _load(job_id: str, data: str) -> Job | None:
    try:
        return Job.model_validate_json(data)
    except pydantic.ValidationError as exc:  # str(exc) would quote the row, token included
        log.error("job=%s stored row is unreadable (%d validation errors); skipped", job_id, exc.error_count())
        return None


def _budget_text(is_set: bool, usd: float | None) -> str:
    if not is_set:
        return "default"
    return "no limit" if usd is None else f"{usd:.2f} USD"


def _with_budget(s: GuildSettings, which: str, change: float | BudgetChange | None) -> GuildSettings:
    if change is BudgetChange.UNCHANGED:
        return s
    if change is BudgetChange.DEFAULT:
        return s.model_copy(update={f"{which}_set": False, f"{which}_usd": None})
    usd = None if isinstance(change, BudgetChange) or change is None else float(change)
    return s.model_copy(update={f"{which}_set": True, f"{which}_usd": usd})


def _budget_texts(s: GuildSettings) -> dict[str, str]:
    return {
        "member daily": _budget_text(s.user_daily_set, s.user_daily_usd),
        "server monthly": _budget_text(s.guild_monthly_set, s.guild_monthly_usd),
    }


def _check_budget(value: float | BudgetChange | None) -> None:
    if isinstance(value, float | int) and (not math.isfinite(value) or value < 0):
        raise ValueError("a budget is a finite amount of USD, at least 0")


class JobStore:
    """One aiosqlite connection; writes are serialised by a lock and run in explicit transactions."""

    def __init__(self, db: aiosqlite.Connection, path: Path, clock: Callable[[], datetime]) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self._lock = asyncio.Lock()
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

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        # One connection is shared, so a second writer must not interleave its statements with ours.
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")  # inside the try: a cancelled BEGIN still runs
                yield self._db
                await self._db.commit()
            except BaseException:
                await self._db.rollback()  # a no-op when no transaction is open
                raise

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def _jobs(self, where: str, params: Sequence[Any] = ()) -> list[Job]:
        rows = await self._fetchall(f"SELECT id, data FROM jobs WHERE {where} ORDER BY created_at, rowid", params)
        return [job for job in (_load(job_id, data) for job_id, data in rows) if job is not None]

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
        return None if data is None else _load(job_id, data)

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
            elif (job := _load(job_id, data)) is not None:
                waiting.append(job)
        return waiting, active

    async def count_unfinished(self, user_id: int) -> int:
        """The member's jobs not done, failed or cancelled, those still being checked included."""
        sql = f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN {sql_in(UNFINISHED_STATES)}"
        return int(await self._scalar(sql, (user_id,)))

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
        banned, unfinished, paused, ud_set, ud, gm_set, gm = rows[0]
        settings = GuildSettings(
            guild_id=guild_id or 0,
            paused=bool(paused),
            user_daily_set=bool(ud_set),
            user_daily_usd=ud,
            guild_monthly_set=bool(gm_set),
            guild_monthly_usd=gm,
        )
        return MemberFacts(banned=bool(banned), unfinished=int(unfinished), settings=settings)

    async def forget_expired_tokens(self) -> int:
        """Blank the interaction token of every row whose token expired or whose job ended; returns how many."""
        now = _ts(self._clock())
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
            async with db.execute(sql, (_ts(before),)) as cursor:
                return [row[0] for row in await cursor.fetchall()]

    # money

    async def spend(self, *, user_id: int | None = None, guild_id: int | None = None, since: datetime) -> float:
        """USD committed by jobs created at or after ``since``: actual costs, plus estimates of jobs in flight."""
        return await self._spend(user_id=user_id, guild_id=guild_id, since=since)

    async def _spend(
        self, *, user_id: int | None, guild_id: int | None, since: datetime, exclude: str | None = None
    ) -> float:
        where: list[str] = ["created_at >= ?"]
        params: list[object] = [_ts(since)]
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
                if spent + job.cost_estimate_usd > user_daily_usd + USD_EPSILON:
                    return "user_budget"
            if guild_id is not None and guild_monthly_usd is not None:
                spent = await self._spend(user_id=None, guild_id=guild_id, since=month_start, exclude=job.id)
                if spent + job.cost_estimate_usd > guild_monthly_usd + USD_EPSILON:
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
        params: list[object] = [_ts(since)]
        if until is not None:
            where.append("created_at < ?")
            params.append(_ts(until))
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

    # guild admin state

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's stored admin state; a guild never configured gets the defaults."""
        rows = await self._fetchall(
            "SELECT paused, user_daily_set, user_daily_usd, guild_monthly_set, guild_monthly_usd "
            "FROM guild_settings WHERE guild_id = ?",
            (guild_id,),
        )
        if not rows:
            return GuildSettings(guild_id=guild_id)
        paused, ud_set, ud, gm_set, gm = rows[0]
        return GuildSettings(
            guild_id=guild_id,
            paused=bool(paused),
            user_daily_set=bool(ud_set),
            user_daily_usd=ud,
            guild_monthly_set=bool(gm_set),
            guild_monthly_usd=gm,
        )

    async def _write_settings(self, db: aiosqlite.Connection, s: GuildSettings) -> None:
        await db.execute(
            "INSERT INTO guild_settings (guild_id, paused, user_daily_set, user_daily_usd, guild_monthly_set, "
            "guild_monthly_usd, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id) DO UPDATE SET "
            "paused = excluded.paused, user_daily_set = excluded.user_daily_set, "
            "user_daily_usd = excluded.user_daily_usd, guild_monthly_set = excluded.guild_monthly_set, "
            "guild_monthly_usd = excluded.guild_monthly_usd, updated_at = excluded.updated_at",
            (
                s.guild_id,
                int(s.paused),
                int(s.user_daily_set),
                s.user_daily_usd,
                int(s.guild_monthly_set),
                s.guild_monthly_usd,
                _ts(self._clock()),
            ),
        )

    async def _log(self, db: aiosqlite.Connection, guild_id: int, by: int, action: str, detail: str | None) -> None:
        await db.execute(
            "INSERT INTO admin_log (at, guild_id, actor_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (_ts(self._clock()), guild_id, by, action, detail),
        )

    async def set_paused(self, guild_id: int, paused: bool, *, by: int) -> None:
        """Pause or resume /inpaint in a guild; logs "pause"/"resume" when the state changes."""
        async with self._transaction() as db:
            current = await self.guild_settings(guild_id)
            if current.paused == paused:
                return
            await self._write_settings(db, current.model_copy(update={"paused": paused}))
            await self._log(db, guild_id, by, "pause" if paused else "resume", None)

    async def set_budgets(
        self,
        guild_id: int,
        *,
        user_daily_usd: float | BudgetChange | None = UNCHANGED,
        guild_monthly_usd: float | BudgetChange | None = UNCHANGED,
        by: int,
    ) -> None:
        """Change a guild's budgets: a number (0 stops spending), ``None`` for no limit, ``DEFAULT`` for the
        config default, ``UNCHANGED`` to keep it. Logs "budget" when something changed.

        Raises:
            ValueError: a negative or non-finite amount.
        """
        _check_budget(user_daily_usd)
        _check_budget(guild_monthly_usd)
        async with self._transaction() as db:
            old = await self.guild_settings(guild_id)
            new = _with_budget(_with_budget(old, "user_daily", user_daily_usd), "guild_monthly", guild_monthly_usd)
            before, after = _budget_texts(old), _budget_texts(new)
            changes = [f"{label}: {before[label]} → {text}" for label, text in after.items() if before[label] != text]
            if not changes:
                return
            await self._write_settings(db, new)
            await self._log(db, guild_id, by, "budget", "; ".join(changes))

    async def ban(self, guild_id: int, user_id: int, *, by: int, reason: str | None) -> bool:
        """Ban a member from /inpaint in a guild; True if they were not banned before (then it is logged)."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO guild_bans (guild_id, user_id, banned_by, reason, banned_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (guild_id, user_id) DO NOTHING",
                (guild_id, user_id, by, reason, _ts(self._clock())),
            )
            if cursor.rowcount != 1:
                return False
            detail = f"<@{user_id}>" + (f": {reason}" if reason else "")
            await self._log(db, guild_id, by, "ban", detail)
            return True

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> bool:
        """Lift a ban; True if there was one (then it is logged)."""
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM guild_bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id))
            if cursor.rowcount != 1:
                return False
            await self._log(db, guild_id, by, "unban", f"<@{user_id}>")
            return True

    async def bans(self, guild_id: int) -> list[int]:
        """Banned member ids, oldest ban first."""
        rows = await self._fetchall(
            "SELECT user_id FROM guild_bans WHERE guild_id = ? ORDER BY banned_at, user_id", (guild_id,)
        )
        return [int(row[0]) for row in rows]

    async def add_admin_log(self, guild_id: int, *, by: int, action: str, detail: str | None = None) -> None:
        """Record an admin action that is not stored here (the store's own setters log themselves)."""
        async with self._transaction() as db:
            await self._log(db, guild_id, by, action, detail)

    async def admin_log(self, guild_id: int, limit: int = 20) -> list[AdminLogEntry]:
        """The guild's latest admin changes, newest first."""
        rows = await self._fetchall(
            "SELECT at, actor_id, action, detail FROM admin_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [
            AdminLogEntry(at=_from_ts(at), guild_id=guild_id, actor_id=actor, action=action, detail=detail)
            for at, actor, action, detail in rows
        ]

    async def recent_jobs(self, *, user_id: int, guild_id: int | None, limit: int = 10) -> list[Job]:
        """The member's latest jobs in this server, newest first (one indexed query)."""
        rows = await self._fetchall(
            "SELECT id, data FROM jobs WHERE user_id = ? AND guild_id IS ? ORDER BY created_at DESC, rowid DESC "
            "LIMIT ?",
            (user_id, guild_id, limit),
        )
        return [job for job in (_load(job_id, data) for job_id, data in rows) if job is not None]

    # the catalog entries a server's admins added (SPEC 9)

    async def catalog_entries(self, guild_id: int) -> tuple[list[LoraEntry], list[StyleEntry]]:
        """The guild's own LoRAs and styles, oldest first; one indexed query. An entry this version cannot read
        is logged and left out."""
        rows = await self._fetchall(
            "SELECT kind, name, data FROM catalog_entries WHERE guild_id = ? ORDER BY added_at, name", (guild_id,)
        )
        found_loras: list[LoraEntry] = []
        found_styles: list[StyleEntry] = []
        for kind, name, data in rows:
            try:
                if kind == "lora":
                    found_loras.append(LoraEntry.model_validate_json(data))
                else:
                    found_styles.append(StyleEntry.model_validate_json(data))
            except pydantic.ValidationError:
                log.error("guild=%s catalog %s %s cannot be read; left out", guild_id, kind, name)
        return found_loras, found_styles

    async def add_catalog_entry(self, guild_id: int, kind: str, name: str, data: str, *, by: int) -> bool:
        """Store an entry the caller checked; False (and nothing written) when the guild has one of that name."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO catalog_entries (guild_id, kind, name, data, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id, kind, name) DO NOTHING",
                (guild_id, kind, name, data, by, _ts(self._clock())),
            )
            if cursor.rowcount != 1:
                return False
            await self._log(db, guild_id, by, f"{kind} add", name)
            return True

    async def remove_catalog_entry(self, guild_id: int, kind: str, name: str, *, by: int) -> bool:
        """Delete an entry; False when the guild has none of that name."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM catalog_entries WHERE guild_id = ? AND kind = ? AND name = ?", (guild_id, kind, name)
            )
            if cursor.rowcount != 1:
                return False
            await self._log(db, guild_id, by, f"{kind} remove", name)
            return True

"""The PostgreSQL store's pool and transactions, and what it keeps per guild: admin state, bans, the admin log and
the catalog entries; ``bot.store_pg.PgJobStore`` adds the jobs and ``bot.store_pg_line`` the shared line."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bot.config import LoraEntry, StyleEntry
from bot.store_pg_schema import rowcount
from bot.store_rows import budget_changes, check_budget, read_catalog, with_budget
from bot.store_schema import UNCHANGED, AdminLogEntry, BudgetChange, GuildSettings


def at(moment: datetime) -> datetime:
    """A datetime as the store takes it: aware, in UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes given to the store must be timezone-aware")
    return moment.astimezone(UTC)


def _guild_settings(guild_id: int, row: Any) -> GuildSettings:
    return GuildSettings(
        guild_id=guild_id,
        paused=row["paused"],
        user_daily_set=row["user_daily_set"],
        user_daily_usd=row["user_daily_usd"],
        guild_monthly_set=row["guild_monthly_set"],
        guild_monthly_usd=row["guild_monthly_usd"],
    )


class PgGuilds:
    """An asyncpg pool; every write is one transaction, and those that read before they write take a lock."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], datetime]) -> None:
        self._pool = pool
        self._clock = clock

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _lock_guild(conn: asyncpg.Connection, guild_id: int) -> None:
        """Two admins changing one guild's settings at once, in two processes: the second reads the first's."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('fluxpaint:guild:' || $1::bigint::text, 0))", guild_id
        )

    # guild admin state

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's stored admin state; a guild never configured gets the defaults."""
        return await self._guild_settings(self._pool, guild_id)

    @staticmethod
    async def _guild_settings(conn: Any, guild_id: int) -> GuildSettings:
        row = await conn.fetchrow(
            "SELECT paused, user_daily_set, user_daily_usd, guild_monthly_set, guild_monthly_usd "
            "FROM guild_settings WHERE guild_id = $1",
            guild_id,
        )
        return GuildSettings(guild_id=guild_id) if row is None else _guild_settings(guild_id, row)

    async def _write_settings(self, conn: asyncpg.Connection, s: GuildSettings) -> None:
        await conn.execute(
            "INSERT INTO guild_settings (guild_id, paused, user_daily_set, user_daily_usd, guild_monthly_set, "
            "guild_monthly_usd, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (guild_id) DO UPDATE SET "
            "paused = excluded.paused, user_daily_set = excluded.user_daily_set, "
            "user_daily_usd = excluded.user_daily_usd, guild_monthly_set = excluded.guild_monthly_set, "
            "guild_monthly_usd = excluded.guild_monthly_usd, updated_at = excluded.updated_at",
            s.guild_id,
            s.paused,
            s.user_daily_set,
            s.user_daily_usd,
            s.guild_monthly_set,
            s.guild_monthly_usd,
            at(self._clock()),
        )

    async def _log(self, conn: asyncpg.Connection, guild_id: int, by: int, action: str, detail: str | None) -> None:
        await conn.execute(
            "INSERT INTO admin_log (at, guild_id, actor_id, action, detail) VALUES ($1, $2, $3, $4, $5)",
            at(self._clock()),
            guild_id,
            by,
            action,
            detail,
        )

    async def set_paused(self, guild_id: int, paused: bool, *, by: int) -> None:
        """Pause or resume /inpaint in a guild; logs "pause"/"resume" when the state changes."""
        async with self._transaction() as conn:
            await self._lock_guild(conn, guild_id)
            current = await self._guild_settings(conn, guild_id)
            if current.paused == paused:
                return
            await self._write_settings(conn, current.model_copy(update={"paused": paused}))
            await self._log(conn, guild_id, by, "pause" if paused else "resume", None)

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
        check_budget(user_daily_usd)
        check_budget(guild_monthly_usd)
        async with self._transaction() as conn:
            await self._lock_guild(conn, guild_id)
            old = await self._guild_settings(conn, guild_id)
            new = with_budget(with_budget(old, "user_daily", user_daily_usd), "guild_monthly", guild_monthly_usd)
            changes = budget_changes(old, new)
            if not changes:
                return
            await self._write_settings(conn, new)
            await self._log(conn, guild_id, by, "budget", "; ".join(changes))

    async def ban(self, guild_id: int, user_id: int, *, by: int, reason: str | None) -> bool:
        """Ban a member from /inpaint in a guild; True if they were not banned before (then it is logged)."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO guild_bans (guild_id, user_id, banned_by, reason, banned_at) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (guild_id, user_id) DO NOTHING",
                guild_id,
                user_id,
                by,
                reason,
                at(self._clock()),
            )
            if rowcount(status) != 1:
                return False
            detail = f"<@{user_id}>" + (f": {reason}" if reason else "")
            await self._log(conn, guild_id, by, "ban", detail)
            return True

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> bool:
        """Lift a ban; True if there was one (then it is logged)."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "DELETE FROM guild_bans WHERE guild_id = $1 AND user_id = $2", guild_id, user_id
            )
            if rowcount(status) != 1:
                return False
            await self._log(conn, guild_id, by, "unban", f"<@{user_id}>")
            return True

    async def bans(self, guild_id: int) -> list[int]:
        """Banned member ids, oldest ban first."""
        rows = await self._pool.fetch(
            "SELECT user_id FROM guild_bans WHERE guild_id = $1 ORDER BY banned_at, user_id", guild_id
        )
        return [int(row[0]) for row in rows]

    async def add_admin_log(self, guild_id: int, *, by: int, action: str, detail: str | None = None) -> None:
        """Record an admin action that is not stored here (the store's own setters log themselves)."""
        async with self._transaction() as conn:
            await self._log(conn, guild_id, by, action, detail)

    async def admin_log(self, guild_id: int, limit: int = 20) -> list[AdminLogEntry]:
        """The guild's latest admin changes, newest first."""
        rows = await self._pool.fetch(
            "SELECT at, actor_id, action, detail FROM admin_log WHERE guild_id = $1 ORDER BY id DESC LIMIT $2",
            guild_id,
            limit,
        )
        return [
            AdminLogEntry(
                at=row["at"], guild_id=guild_id, actor_id=row["actor_id"], action=row["action"], detail=row["detail"]
            )
            for row in rows
        ]

    # the catalog entries a server's admins added (SPEC 9)

    async def catalog_entries(self, guild_id: int) -> tuple[list[LoraEntry], list[StyleEntry]]:
        """The guild's own LoRAs and styles, oldest first; one indexed query. An entry this version cannot read
        is logged and left out."""
        rows = await self._pool.fetch(
            "SELECT kind, name, data FROM catalog_entries WHERE guild_id = $1 ORDER BY added_at, name", guild_id
        )
        return read_catalog(guild_id, [tuple(row) for row in rows])

    async def add_catalog_entry(self, guild_id: int, kind: str, name: str, data: str, *, by: int) -> bool:
        """Store an entry the caller checked; False (and nothing written) when the guild has one of that name."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "INSERT INTO catalog_entries (guild_id, kind, name, data, added_by, added_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (guild_id, kind, name) DO NOTHING",
                guild_id,
                kind,
                name,
                data,
                by,
                at(self._clock()),
            )
            if rowcount(status) != 1:
                return False
            await self._log(conn, guild_id, by, f"{kind} add", name)
            return True

    async def remove_catalog_entry(self, guild_id: int, kind: str, name: str, *, by: int) -> bool:
        """Delete an entry; False when the guild has none of that name."""
        async with self._transaction() as conn:
            status = await conn.execute(
                "DELETE FROM catalog_entries WHERE guild_id = $1 AND kind = $2 AND name = $3", guild_id, kind, name
            )
            if rowcount(status) != 1:
                return False
            await self._log(conn, guild_id, by, f"{kind} remove", name)
            return True

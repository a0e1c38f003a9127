"""The SQLite store's connection and transactions, and what it keeps per guild: admin state, bans, the admin log and
the catalog entries; ``bot.store_sqlite.JobStore`` adds the jobs. It logs no job data."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from bot.config import LoraEntry, StyleEntry
from bot.store_rows import budget_changes, check_budget, read_catalog, with_budget
from bot.store_schema import UNCHANGED, AdminLogEntry, BudgetChange, GuildSettings


def ts(moment: datetime) -> str:
    """A datetime as the store's text: UTC ISO 8601 with microseconds, so text order is time order."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes given to the store must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class SqliteGuilds:
    """One aiosqlite connection; writes are serialised by a lock and run in explicit transactions."""

    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._clock = clock
        self._lock = asyncio.Lock()

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
                ts(self._clock()),
            ),
        )

    async def _log(self, db: aiosqlite.Connection, guild_id: int, by: int, action: str, detail: str | None) -> None:
        await db.execute(
            "INSERT INTO admin_log (at, guild_id, actor_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (ts(self._clock()), guild_id, by, action, detail),
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
        check_budget(user_daily_usd)
        check_budget(guild_monthly_usd)
        async with self._transaction() as db:
            old = await self.guild_settings(guild_id)
            new = with_budget(with_budget(old, "user_daily", user_daily_usd), "guild_monthly", guild_monthly_usd)
            changes = budget_changes(old, new)
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
                (guild_id, user_id, by, reason, ts(self._clock())),
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
            AdminLogEntry(at=from_ts(at), guild_id=guild_id, actor_id=actor, action=action, detail=detail)
            for at, actor, action, detail in rows
        ]

    # the catalog entries a server's admins added (SPEC 9)

    async def catalog_entries(self, guild_id: int) -> tuple[list[LoraEntry], list[StyleEntry]]:
        """The guild's own LoRAs and styles, oldest first; one indexed query. An entry this version cannot read
        is logged and left out."""
        rows = await self._fetchall(
            "SELECT kind, name, data FROM catalog_entries WHERE guild_id = ? ORDER BY added_at, name", (guild_id,)
        )
        return read_catalog(guild_id, rows)

    async def add_catalog_entry(self, guild_id: int, kind: str, name: str, data: str, *, by: int) -> bool:
        """Store an entry the caller checked; False (and nothing written) when the guild has one of that name."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO catalog_entries (guild_id, kind, name, data, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id, kind, name) DO NOTHING",
                (guild_id, kind, name, data, by, ts(self._clock())),
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

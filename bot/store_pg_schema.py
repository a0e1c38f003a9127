"""The PostgreSQL store's schema: migrations, lock keys and the statements its modules share."""

from __future__ import annotations

import logging
from typing import Any, Final

from bot.store_schema import StoreError

log = logging.getLogger("bot.store")

# pg_advisory_xact_lock keys (any 64-bit numbers no other application on the database uses)
MIGRATE_LOCK: Final = 0x6670_6D69_6772_6174  # "fpmigrat": one process migrates at a time
LINE_LOCK: Final = 0x6670_6C69_6E65_0001  # "fpline": reserves and claims, so caps and budgets hold across processes
NOTIFY_CHANNEL: Final = "fluxpaint_line"  # payload: the owner id of the process that changed the line

# Applied in order, each in one transaction with the version row; never edit a shipped one.
PG_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,  -- insertion order: breaks ties of created_at, like SQLite's rowid
        state TEXT NOT NULL,
        user_id BIGINT NOT NULL,
        guild_id BIGINT,
        channel_id BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        request_id TEXT,
        cost_estimate_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        cost_usd DOUBLE PRECISION,
        data JSONB NOT NULL,  -- the whole Job, interaction token included
        version INTEGER NOT NULL DEFAULT 0,  -- compare-and-set saves, as in SQLite
        owner TEXT,  -- the process the job belongs to (SPEC 13): it shows and carries it; NULL: none
        lease_until TIMESTAMPTZ,  -- the owner's hold lasts until then unless renewed
        starting BOOLEAN NOT NULL DEFAULT FALSE,  -- waiting, claimed by its owner to be submitted: holds a slot
        claimed_at TIMESTAMPTZ,  -- the latest claim from the line: the fair order across processes
        refused TEXT,  -- why the latest claim left it waiting ("user_budget"), at refused_at
        refused_at TIMESTAMPTZ
    );
    CREATE INDEX jobs_request_id ON jobs (request_id);
    CREATE INDEX jobs_state_created ON jobs (state, created_at, seq);
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
    CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
    CREATE INDEX jobs_updated ON jobs (updated_at);
    CREATE INDEX jobs_owner ON jobs (owner) WHERE owner IS NOT NULL;
    CREATE INDEX jobs_claimed ON jobs (claimed_at) WHERE claimed_at IS NOT NULL;

    CREATE TABLE guild_settings (
        guild_id BIGINT PRIMARY KEY,
        paused BOOLEAN NOT NULL DEFAULT FALSE,
        user_daily_set BOOLEAN NOT NULL DEFAULT FALSE,  -- false: the config default applies
        user_daily_usd DOUBLE PRECISION,  -- when set: NULL means no limit
        guild_monthly_set BOOLEAN NOT NULL DEFAULT FALSE,
        guild_monthly_usd DOUBLE PRECISION,
        updated_at TIMESTAMPTZ NOT NULL
    );

    CREATE TABLE guild_bans (
        guild_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        banned_by BIGINT NOT NULL,
        reason TEXT,
        banned_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );

    CREATE TABLE admin_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL,
        guild_id BIGINT NOT NULL,
        actor_id BIGINT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX admin_log_guild ON admin_log (guild_id, id);

    -- LoRAs and styles a server's admins added (SPEC 9); the owner's live in the config
    CREATE TABLE catalog_entries (
        guild_id BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('lora', 'style')),
        name TEXT NOT NULL,
        data JSONB NOT NULL,  -- the LoraEntry or StyleEntry
        added_by BIGINT NOT NULL,
        added_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (guild_id, kind, name)
    );
    """,
)

JOB_COLUMNS: Final = (
    "id, state, user_id, guild_id, channel_id, created_at, updated_at, request_id, cost_estimate_usd, cost_usd, "
    "data, version, owner, lease_until"
)
INSERT_JOB: Final = (
    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
# Parameters: the row as for INSERT_JOB from its state to its data, then the new version, the id, the version read.
UPDATE_JOB: Final = (
    "UPDATE jobs SET state = $1, user_id = $2, guild_id = $3, channel_id = $4, created_at = $5, updated_at = $6, "
    "request_id = $7, cost_estimate_usd = $8, cost_usd = $9, data = $10, version = $11 WHERE id = $12 AND version = $13"
)


def rowcount(status: str) -> int:
    """The rows an INSERT, UPDATE or DELETE touched, from asyncpg's command status ("UPDATE 1")."""
    return int(status.rsplit(" ", 1)[-1])


async def migrate_pg(conn: Any) -> None:
    """Bring the database to the newest schema; one process at a time (an advisory lock), each step atomic.

    Raises:
        StoreError: the database is at a schema newer than this bot knows.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS fluxpaint_schema (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT MAX(version) FROM fluxpaint_schema")
    current = int(current or 0)
    if current > len(PG_MIGRATIONS):
        raise StoreError(f"the database is at schema {current}; this bot knows up to {len(PG_MIGRATIONS)}")
    for number in range(current + 1, len(PG_MIGRATIONS) + 1):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            if int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM fluxpaint_schema")) >= number:
                continue  # another process applied it first
            await conn.execute(PG_MIGRATIONS[number - 1])
            await conn.execute("INSERT INTO fluxpaint_schema (version) VALUES ($1)", number)
        log.info("store migrated to PostgreSQL schema %d", number)

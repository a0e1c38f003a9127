"""The job store's schema and what it hands out: migrations, state groups, SQL fragments, row models."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Final

import aiosqlite
from pydantic import BaseModel, ConfigDict

from bot.models import FINISHED_STATES, Job, JobState

log = logging.getLogger("bot.store")  # one logger for the store, whichever of its modules speaks

UNFINISHED_STATES: Final = tuple(s for s in JobState if s not in FINISHED_STATES)
IN_FLIGHT_STATES: Final = (
    JobState.WAITING,
    JobState.SEGMENTING,
    JobState.SUBMITTING,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.FETCHED,
    JobState.DELIVERING,
)
AT_FAL_STATES: Final = (JobState.SEGMENTING, JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)

# Applied in order, each in one transaction; PRAGMA user_version is the number applied. Never edit a shipped one.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        user_id INTEGER NOT NULL,
        guild_id INTEGER,
        channel_id INTEGER NOT NULL,
        created_at TEXT NOT NULL,  -- UTC ISO 8601 with microseconds, so text order is time order
        updated_at TEXT NOT NULL,
        request_id TEXT,
        cost_estimate_usd REAL NOT NULL DEFAULT 0,
        cost_usd REAL,
        data TEXT NOT NULL CHECK (json_valid(data))  -- the whole Job, interaction token included
    );
    CREATE INDEX jobs_request_id ON jobs (request_id);
    CREATE INDEX jobs_state_created ON jobs (state, created_at);
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
    CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
    CREATE INDEX jobs_updated ON jobs (updated_at);

    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        user_daily_set INTEGER NOT NULL DEFAULT 0,  -- 0: the config default applies
        user_daily_usd REAL,  -- when set: NULL means no limit
        guild_monthly_set INTEGER NOT NULL DEFAULT 0,
        guild_monthly_usd REAL,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE guild_bans (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        banned_by INTEGER NOT NULL,
        reason TEXT,
        banned_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );

    CREATE TABLE admin_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        guild_id INTEGER NOT NULL,
        actor_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX admin_log_guild ON admin_log (guild_id, id);
    """,
    """
    -- compare-and-set saves: a writer that read version n may only write over version n
    ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    """,
    """
    -- LoRAs and styles a server's admins added (SPEC 9); the owner's live in the config
    CREATE TABLE catalog_entries (
        guild_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('lora', 'style')),
        name TEXT NOT NULL,
        data TEXT NOT NULL CHECK (json_valid(data)),  -- the LoraEntry or StyleEntry
        added_by INTEGER NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (guild_id, kind, name)
    );
    """,
)

JOB_COLUMNS = (
    "id, state, user_id, guild_id, channel_id, created_at, updated_at, request_id, cost_estimate_usd, cost_usd, "
    "data, version"
)
INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Parameters: the row as for INSERT_JOB minus its id and version, then the id and the version the writer read.
UPDATE_JOB = (
    "UPDATE jobs SET state = ?, user_id = ?, guild_id = ?, channel_id = ?, created_at = ?, updated_at = ?, "
    "request_id = ?, cost_estimate_usd = ?, cost_usd = ?, data = ?, version = ? WHERE id = ? AND version = ?"
)


def sql_in(states: Iterable[JobState]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in states) + ")"  # enum values only, never caller input


# What a job has committed: its actual cost once known, else its estimate while it may still be charged.
COST_SQL = f"COALESCE(cost_usd, CASE WHEN state IN {sql_in(IN_FLIGHT_STATES)} THEN cost_estimate_usd ELSE 0 END)"


class StoreError(Exception):
    """The database cannot be used by this version of the bot."""


class StaleJobError(Exception):
    """Another writer saved the job since it was read: re-read it and decide again."""

    def __init__(self, job_id: str, version: int) -> None:
        super().__init__(f"job {job_id} changed since version {version}")
        self.job_id = job_id
        self.version = version


class BudgetChange(Enum):
    """Sentinels for ``JobStore.set_budgets``: keep the stored budget, or go back to the config default."""

    UNCHANGED = "unchanged"
    DEFAULT = "default"


UNCHANGED: Final = BudgetChange.UNCHANGED
DEFAULT: Final = BudgetChange.DEFAULT


class GuildSettings(BaseModel):
    """One guild's admin state.

    A budget is the config default unless its ``*_set`` flag is true; then ``*_usd`` is the guild's own budget,
    where ``None`` means no limit and ``0`` stops spending. Use ``user_daily``/``guild_monthly`` to resolve.
    """

    model_config = ConfigDict(frozen=True)

    guild_id: int
    paused: bool = False
    user_daily_set: bool = False
    user_daily_usd: float | None = None
    guild_monthly_set: bool = False
    guild_monthly_usd: float | None = None

    def user_daily(self, default: float | None) -> float | None:
        """The per-member daily budget in force (``None``: no limit), given the config default."""
        return self.user_daily_usd if self.user_daily_set else default

    def guild_monthly(self, default: float | None) -> float | None:
        """The guild's monthly budget in force (``None``: no limit), given the config default."""
        return self.guild_monthly_usd if self.guild_monthly_set else default


class MemberFacts(BaseModel):
    """What the checks before a job need to know of a member in a guild, read in one query."""

    model_config = ConfigDict(frozen=True)

    banned: bool
    unfinished: int
    settings: GuildSettings

    @classmethod
    def of_row(cls, guild_id: int | None, row: Sequence[Any]) -> MemberFacts:
        """From (banned, unfinished, paused, user_daily_set, user_daily_usd, guild_monthly_set, guild_monthly_usd),
        the guild's columns NULL when it was never configured."""
        banned, unfinished, paused, ud_set, ud, gm_set, gm = row
        settings = GuildSettings(
            guild_id=guild_id or 0,
            paused=bool(paused),
            user_daily_set=bool(ud_set),
            user_daily_usd=ud,
            guild_monthly_set=bool(gm_set),
            guild_monthly_usd=gm,
        )
        return cls(banned=bool(banned), unfinished=int(unfinished), settings=settings)


class UsageRow(BaseModel):
    """One member's line in the admin usage report."""

    model_config = ConfigDict(frozen=True)

    user_id: int
    jobs: int
    images: int
    spent_usd: float


class AdminLogEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    guild_id: int
    actor_id: int
    action: str
    detail: str | None = None


# what a store several processes share hands the scheduler (bot.store.SharedLine)


@dataclass(frozen=True)
class ClaimRequest:
    """A waiting job the scheduler would start, with the budgets in force for its member (None: no limit)."""

    job_id: str
    user_daily_usd: float | None
    guild_monthly_usd: float | None


@dataclass(frozen=True)
class LineRules:
    """What a claim checks besides each member's budgets: the fal cap across every process and the member's cap."""

    max_at_fal: int
    max_unfinished_per_user: int
    day_start: datetime
    month_start: datetime


@dataclass
class ClaimResult:
    claimed: list[Job] = field(default_factory=list)  # now this process's, as stored
    refused: dict[str, str] = field(default_factory=dict)  # job id -> "user_limit", "user_budget", "guild_budget"


@dataclass
class LineSnapshot:
    waiting: list[Job]  # every process's jobs in the line, oldest first (not those being started or just refused)
    mine: set[str]  # the ids among them this process owns: it shows them and starts them when their turn comes
    claimable: set[str]  # the ids it may claim: its own, and those of no live process
    refused: list[tuple[Job, str]]  # this process's jobs a claim just left waiting, with the reason
    active: Counter[int]  # slots in use by member: jobs at fal, and waiting jobs being started
    last_started: dict[int, datetime]  # member -> their latest claim, whichever process made it (fair order)


@dataclass
class Orphans:
    jobs: list[Job]  # unfinished jobs of no live process, now this process's: resume each as after a restart
    next_expiry: datetime | None  # the earliest lease another process holds, when it may be taken over


async def migrate(db: aiosqlite.Connection) -> None:
    async def version() -> int:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    current = await version()
    if current > len(MIGRATIONS):
        raise StoreError(f"the database is at schema {current}; this bot knows up to {len(MIGRATIONS)}")
    for number in range(current + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[number - 1]
        try:
            await db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except BaseException:
            await db.rollback()
            if await version() >= number:  # another process applied it first
                continue
            raise
        log.info("store migrated to schema %d", number)

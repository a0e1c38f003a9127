"""The job store behind one interface: ``Store`` (what every store does), ``SharedLine`` (what a store several
processes share adds) and ``open_store``, which picks SQLite or PostgreSQL by ``storage.url``. No SQL here."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.config import LoraEntry, Settings, StorageSettings, StyleEntry
from bot.models import Job, utcnow
from bot.store_rows import USD_EPSILON, masked_url
from bot.store_schema import (
    UNCHANGED,
    AdminLogEntry,
    BudgetChange,
    ClaimRequest,
    ClaimResult,
    GuildSettings,
    LineRules,
    LineSnapshot,
    MemberFacts,
    Orphans,
    StaleJobError,
    StoreError,
    UsageRow,
)
from bot.store_sqlite import JobStore

log = logging.getLogger(__name__)

SQLITE_FILE = "fluxpaint.sqlite3"  # in storage.data_dir when storage.url is unset

__all__ = [
    "SQLITE_FILE",
    "USD_EPSILON",
    "JobStore",
    "SharedLine",
    "StaleJobError",
    "Store",
    "StoreError",
    "masked_url",
    "open_store",
    "sqlite_path",
]


class Store(Protocol):
    """The job store, whichever database holds it: jobs with optimistic versions, budgets, guild admin state."""

    async def ping(self) -> None:
        """One trivial query: the store answers (for /healthz)."""

    async def close(self) -> None: ...

    # jobs

    async def create(self, job: Job, *, max_unfinished_per_user: int | None = None) -> bool:
        """Insert a new job; False (nothing written) when its member has ``max_unfinished_per_user`` unfinished."""

    async def save(self, job: Job) -> Job:
        """Stamp ``updated_at`` and write the job over the version it was read at.

        Raises:
            StaleJobError: the row changed since ``job`` was read; re-read it.
        """

    async def get(self, job_id: str) -> Job | None: ...

    async def list_unfinished(self) -> list[Job]:
        """Every job not done, failed or cancelled, oldest first."""

    async def waiting_line(self) -> tuple[list[Job], Counter[int]]:
        """The waiting jobs, oldest first, and how many jobs each member has at fal."""

    async def count_unfinished(self, user_id: int) -> int: ...

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state, every state named (for /metrics)."""

    async def member_facts(self, guild_id: int | None, user_id: int) -> MemberFacts: ...

    async def forget_expired_tokens(self) -> int: ...

    async def prune(self, before: datetime) -> list[str]: ...

    async def recent_jobs(self, *, user_id: int, guild_id: int | None, limit: int = 10) -> list[Job]: ...

    # money

    async def spend(self, *, user_id: int | None = None, guild_id: int | None = None, since: datetime) -> float: ...

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
        """Check the member's job limit and both budgets and move ``job`` to WAITING, atomically; the reason
        (``"user_limit"``, ``"user_budget"``, ``"guild_budget"``) when refused."""

    async def usage(
        self, *, guild_id: int | None, since: datetime, until: datetime | None = None
    ) -> list[UsageRow]: ...

    # guild admin state

    async def guild_settings(self, guild_id: int) -> GuildSettings: ...

    async def set_paused(self, guild_id: int, paused: bool, *, by: int) -> None: ...

    async def set_budgets(
        self,
        guild_id: int,
        *,
        user_daily_usd: float | BudgetChange | None = UNCHANGED,
        guild_monthly_usd: float | BudgetChange | None = UNCHANGED,
        by: int,
    ) -> None: ...

    async def ban(self, guild_id: int, user_id: int, *, by: int, reason: str | None) -> bool: ...

    async def unban(self, guild_id: int, user_id: int, *, by: int) -> bool: ...

    async def bans(self, guild_id: int) -> list[int]: ...

    async def add_admin_log(self, guild_id: int, *, by: int, action: str, detail: str | None = None) -> None: ...

    async def admin_log(self, guild_id: int, limit: int = 20) -> list[AdminLogEntry]: ...

    async def catalog_entries(self, guild_id: int) -> tuple[list[LoraEntry], list[StyleEntry]]: ...

    async def add_catalog_entry(self, guild_id: int, kind: str, name: str, data: str, *, by: int) -> bool: ...

    async def remove_catalog_entry(self, guild_id: int, kind: str, name: str, *, by: int) -> bool: ...


@runtime_checkable
class SharedLine(Store, Protocol):
    """A store several processes share (SPEC 13). A job belongs to the process that accepted it, which shows its
    place in the line and starts it when its turn comes in the fair order of every process's jobs; the fal cap,
    the member's cap and the budgets are checked in the claim's transaction. A process holds its jobs through a
    lease it renews; a job whose lease ran out (its process died) is taken over by another."""

    @property
    def owner(self) -> str:
        """This process's id in the ``owner`` column."""

    @property
    def lease_s(self) -> float:
        """How long a process holds its jobs without renewing."""

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process changes the line (a job enters it, a slot frees); reconnects a
        listener that was lost, and is a no-op while it lives."""

    async def line_snapshot(self) -> LineSnapshot:
        """Every process's jobs in the line, which are this process's, the slots in use by member, and when each
        member was last served."""

    async def claim_waiting(self, requests: Sequence[ClaimRequest], rules: LineRules) -> ClaimResult:
        """In one transaction: the fal cap across every process, then in order for each job still waiting, not
        being started and this process's or no live process's (``FOR UPDATE SKIP LOCKED``), the member's cap and
        budgets; the jobs now being started by this process."""

    async def claim_orphans(self) -> Orphans:
        """Take the unfinished jobs whose owner's lease ran out (or that have no owner), and say when the next
        lease another process holds runs out."""

    async def renew(self, job_ids: Collection[str]) -> set[str]:
        """Extend the lease on every unfinished job of this process; the ids among ``job_ids`` (the jobs it
        carries) that another process owns now (taken over while this one did not renew)."""

    async def release(self, job_ids: Collection[str], *, hand_over: bool = False) -> None:
        """The task carrying each job ended: its slot is free (a job back in line stays this process's). With
        ``hand_over`` (shutdown) the jobs are nobody's, so another process takes them at once; except a job that
        may be on the wire (submitting, segmenting), which keeps its lease and is taken over only once it runs
        out, as "maybe sent"."""


def sqlite_path(storage: StorageSettings) -> Path | None:
    """The SQLite file ``storage`` names (``sqlite:///relative`` or ``sqlite:////absolute``), None for PostgreSQL."""
    url = storage.url.get_secret_value() if storage.url is not None else None
    if url is None:
        return Path(storage.data_dir) / SQLITE_FILE
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings | StorageSettings, clock: Callable[[], datetime] = utcnow
) -> AsyncIterator[Store]:
    """The store ``storage.url`` names, migrated; closed on exit.

    Raises:
        StoreError: the database was written by a newer version of the bot.
    """
    storage = settings.storage if isinstance(settings, Settings) else settings
    path = sqlite_path(storage)
    store: Store
    if path is not None:
        store = await JobStore.open(path, clock=clock)
        log.info("job store: SQLite at %s", path)
    else:
        from bot.store_pg import PgJobStore  # asyncpg only where it is used

        assert storage.url is not None
        store = await PgJobStore.open(storage.url.get_secret_value(), lease_s=storage.lease_s, clock=clock)
    try:
        yield store
    finally:
        await store.close()

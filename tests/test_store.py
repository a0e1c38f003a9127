import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from bot.models import InpaintOptions, Job, JobState, Origin
from bot.store import JobStore, Store
from bot.store_pg_schema import PG_MIGRATIONS
from bot.store_schema import (
    DEFAULT,
    MIGRATIONS,
    ClaimRequest,
    GuildSettings,
    LineRules,
    StaleJobError,
    StoreError,
)
from tests.pg import PASSWORD, StoreDb, pg_cluster, pg_url, store_db

__all__ = ["pg_cluster", "pg_url", "store_db"]  # fixtures, imported to be found here

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DAY = T0.replace(hour=0)
MONTH = DAY.replace(day=1)
TOKEN = "aW50ZXJhY3Rpb24gdG9rZW4-very-secret"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_job(
    user: int = 10,
    *,
    guild: int | None = 1,
    state: JobState = JobState.ACCEPTED,
    created_at: datetime = T0,
    estimate: float = 0.0,
    cost: float | None = None,
) -> Job:
    origin = Origin(
        user_id=user,
        guild_id=guild,
        channel_id=2,
        application_id=3,
        interaction_id=4,
        interaction_token=SecretStr(TOKEN),
        token_expires_at=created_at + timedelta(minutes=15),
    )
    return Job(
        origin=origin,
        options=InpaintOptions(prompt="a red hat"),
        state=state,
        created_at=created_at,
        updated_at=created_at,
        cost_estimate_usd=estimate,
        cost_usd=cost,
    )


async def created(store: Store, job: Job) -> Job:
    await store.create(job)
    return job


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "fluxpaint.sqlite3"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(store_db: StoreDb, clock: Clock) -> AsyncIterator[Any]:
    """A store on this test's database, SQLite or PostgreSQL: every test that takes it runs against both."""
    async with await store_db.open(clock) as s:
        yield s


async def reserve(
    store: Store,
    job: Job,
    *,
    user_daily: float | None = None,
    guild_monthly: float | None = None,
    max_jobs: int = 100,
) -> str | None:
    return await store.reserve(
        job,
        user_daily_usd=user_daily,
        guild_monthly_usd=guild_monthly,
        day_start=DAY,
        month_start=MONTH,
        max_unfinished_per_user=max_jobs,
    )


# jobs


async def test_full_job_round_trips_with_its_token_and_utc_datetimes(store: Store) -> None:
    job = make_job(state=JobState.QUEUED, estimate=0.07)
    job.request_id = "req-1"
    job.status_url = "https://queue.fal.run/x/requests/req-1/status"
    job.notes = ["downscaled to 1024×768"]
    job.result_files = ["result-1.jpg"]
    job.nsfw_flags = [False]
    job.submitted_at = T0 + timedelta(seconds=3)
    job.delivered_message_ids = [123456789012345678]
    job.origin = job.origin.model_copy(update={"message_id": 987654321098765432})
    await store.create(job)

    loaded = await store.get(job.id)

    assert loaded is not None
    assert loaded.origin.interaction_token.get_secret_value() == TOKEN
    assert loaded.model_dump() == job.model_dump()
    assert loaded.created_at == T0 and loaded.created_at.tzinfo is not None
    assert loaded.submitted_at is not None and loaded.submitted_at.utcoffset() == timedelta(0)


async def test_the_token_is_not_in_reprs(store: Store) -> None:
    job = make_job()
    await store.create(job)
    assert TOKEN not in repr(await store.get(job.id))
    assert TOKEN not in repr(store)
    assert PASSWORD not in repr(store)  # the DSN's password (PostgreSQL)


async def test_get_unknown_job_is_none(store: Store) -> None:
    assert await store.get("0" * 32) is None


async def test_create_refuses_a_duplicate_id(store: Store, store_db: StoreDb) -> None:
    job = make_job()
    await store.create(job)
    with pytest.raises(store_db.duplicate_error):
        await store.create(job)


async def test_save_stamps_updated_at_and_is_visible_to_a_second_connection(
    store: Store, store_db: StoreDb, clock: Clock
) -> None:
    job = make_job()
    await store.create(job)
    clock.now = T0 + timedelta(minutes=5)
    job.state = JobState.RUNNING
    job.request_id = "req-9"

    returned = await store.save(job)

    assert returned is job and job.updated_at == clock.now
    async with await store_db.open() as other:
        seen = await other.get(job.id)
        assert seen is not None and seen.state is JobState.RUNNING and seen.updated_at == clock.now
        assert seen.request_id == "req-9" and seen.version == job.version == 1


async def test_a_job_that_was_never_created_cannot_be_saved(store: Store) -> None:
    with pytest.raises(StaleJobError):
        await store.save(make_job(state=JobState.WAITING))
    assert await store.list_unfinished() == []


async def test_a_late_writer_cannot_overwrite_a_newer_state(store: Store) -> None:
    job = make_job(state=JobState.RUNNING)
    await store.create(job)
    runner_copy, cancel_copy = await store.get(job.id), await store.get(job.id)
    assert runner_copy is not None and cancel_copy is not None
    cancel_copy.state = JobState.CANCELLED
    await store.save(cancel_copy)

    runner_copy.state = JobState.FETCHED
    with pytest.raises(StaleJobError):
        await store.save(runner_copy)

    seen = await store.get(job.id)
    assert seen is not None and seen.state is JobState.CANCELLED and runner_copy.version == 0
    seen.state = JobState.FAILED  # a writer that re-read may write
    await store.save(seen)


async def test_create_with_a_cap_counts_jobs_still_being_checked(store: Store) -> None:
    assert await store.create(make_job(state=JobState.ACCEPTED), max_unfinished_per_user=2)
    assert await store.create(make_job(state=JobState.WAITING), max_unfinished_per_user=2)
    third = make_job(state=JobState.ACCEPTED)
    assert not await store.create(third, max_unfinished_per_user=2)
    assert await store.get(third.id) is None
    assert await store.create(make_job(user=11), max_unfinished_per_user=2)


async def test_tokens_are_forgotten_once_expired_or_finished(store: Store, store_db: StoreDb, clock: Clock) -> None:
    live, finished, expired = make_job(state=JobState.RUNNING), make_job(state=JobState.RUNNING), make_job()
    expired.origin = expired.origin.model_copy(update={"token_expires_at": T0 - timedelta(seconds=1)})
    for job in (live, finished, expired):
        await store.create(job)
    finished.state = JobState.DONE
    await store.save(finished)
    tokens = [j.origin.interaction_token.get_secret_value() for j in await store.list_unfinished()]
    assert tokens == [TOKEN, ""]  # written only where it can still be used
    assert (await store.get(finished.id)).origin.interaction_token.get_secret_value() == ""  # type: ignore[union-attr]

    clock.now = T0 + timedelta(minutes=16)
    assert TOKEN in await store_db.text()
    assert await store.forget_expired_tokens() == 1
    assert TOKEN not in await store_db.text()
    reloaded = await store.get(live.id)
    assert reloaded is not None and reloaded.origin.interaction_token.get_secret_value() == ""


async def test_list_unfinished_is_oldest_first_and_skips_finished(store: Store) -> None:
    late = make_job(state=JobState.WAITING, created_at=T0 + timedelta(minutes=2))
    early = make_job(state=JobState.RUNNING, created_at=T0)
    middle = make_job(state=JobState.ACCEPTED, created_at=T0 + timedelta(minutes=1))
    finished = [
        make_job(state=JobState(s), created_at=T0 - timedelta(hours=1)) for s in ("done", "failed", "cancelled")
    ]
    for job in [late, early, middle, *finished]:
        await store.create(job)

    assert [j.id for j in await store.list_unfinished()] == [early.id, middle.id, late.id]


async def test_the_waiting_line_holds_waiting_jobs_and_counts_the_rest_at_fal_by_member(store: Store) -> None:
    second = make_job(1, state=JobState.WAITING, created_at=T0 + timedelta(minutes=1))
    first = make_job(2, state=JobState.WAITING, created_at=T0)
    at_fal = [
        make_job(1, state=JobState.QUEUED),
        make_job(1, state=JobState.RUNNING),
        make_job(3, state=JobState.SUBMITTING),
    ]
    others = [
        make_job(4, state=JobState.FETCHED),
        make_job(4, state=JobState.DONE),
        make_job(4, state=JobState.ACCEPTED),
    ]
    for job in [second, first, *at_fal, *others]:
        await store.create(job)

    waiting, active = await store.waiting_line()
    assert [j.id for j in waiting] == [first.id, second.id]
    assert active == {1: 2, 3: 1}


async def test_counts(store: Store) -> None:
    for user, state in [
        (1, JobState.ACCEPTED),
        (1, JobState.QUEUED),
        (1, JobState.DONE),
        (2, JobState.SUBMITTING),
        (2, JobState.RUNNING),
        (2, JobState.FETCHED),
    ]:
        await store.create(make_job(user, state=state))

    assert await store.count_unfinished(1) == 2
    assert await store.count_unfinished(2) == 3
    assert await store.count_unfinished(3) == 0


async def test_prune_removes_only_old_finished_jobs(store: Store, clock: Clock) -> None:
    clock.now = T0 - timedelta(days=40)
    old_done = await created(store, make_job(state=JobState.DONE, created_at=clock.now))
    old_failed = await created(store, make_job(state=JobState.FAILED, created_at=clock.now))
    old_running = await created(store, make_job(state=JobState.RUNNING, created_at=clock.now))
    clock.now = T0
    new_done = await created(store, make_job(state=JobState.DONE))

    pruned = await store.prune(T0 - timedelta(days=30))

    assert sorted(pruned) == sorted([old_done.id, old_failed.id])
    assert await store.get(old_done.id) is None
    assert await store.get(old_running.id) is not None
    assert await store.get(new_done.id) is not None
    assert await store.prune(T0 - timedelta(days=30)) == []


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.spend(user_id=1, since=datetime(2026, 1, 1))


# migrations


async def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_fresh_file_is_migrated_and_reopening_changes_nothing(db_path: Path) -> None:
    async with await JobStore.open(db_path) as store:
        job = make_job()
        await store.create(job)
    assert await user_version(db_path) == len(MIGRATIONS)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async with await JobStore.open(db_path) as store:
        assert await store.get(job.id) is not None
    assert await user_version(db_path) == len(MIGRATIONS)


async def test_a_failing_migration_leaves_the_previous_schema(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with await JobStore.open(db_path):
        pass
    broken = "CREATE TABLE half_done (a INTEGER); CREATE TABLE half_done (a INTEGER);"
    monkeypatch.setattr("bot.store_schema.MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError):
        await JobStore.open(db_path)
    assert await user_version(db_path) == len(MIGRATIONS)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    async with await JobStore.open(db_path):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError):
        await JobStore.open(db_path)


async def pg_schema_version(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT MAX(version) FROM fluxpaint_schema"))
    finally:
        await conn.close()


async def test_a_fresh_postgresql_database_is_migrated_once_by_two_processes_at_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(StoreDb("postgresql", dsn=pg_url).open() for _ in range(2)))
    job = make_job()
    await stores[0].create(job)
    assert await stores[1].get(job.id) is not None
    for store in stores:
        await store.close()
    assert await pg_schema_version(pg_url) == len(PG_MIGRATIONS)
    async with await StoreDb("postgresql", dsn=pg_url).open() as again:
        assert await again.get(job.id) is not None
    assert await pg_schema_version(pg_url) == len(PG_MIGRATIONS)


async def test_a_failing_postgresql_migration_leaves_the_previous_schema(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await StoreDb("postgresql", dsn=pg_url).open():
        pass
    broken = "CREATE TABLE half_done (a INTEGER); CREATE TABLE half_done (a INTEGER);"
    monkeypatch.setattr("bot.store_pg_schema.PG_MIGRATIONS", (*PG_MIGRATIONS, broken))
    with pytest.raises(asyncpg.DuplicateTableError):
        await StoreDb("postgresql", dsn=pg_url).open()
    assert await pg_schema_version(pg_url) == len(PG_MIGRATIONS)
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()


async def test_a_newer_postgresql_schema_is_refused(pg_url: str) -> None:
    async with await StoreDb("postgresql", dsn=pg_url).open():
        pass
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO fluxpaint_schema (version) VALUES ($1)", len(PG_MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError):
        await StoreDb("postgresql", dsn=pg_url).open()


# money


async def test_spend_counts_in_flight_estimates_and_actual_costs(store: Store) -> None:
    for job in [
        make_job(state=JobState.WAITING, estimate=0.10),
        make_job(state=JobState.RUNNING, estimate=0.20),
        make_job(state=JobState.DONE, estimate=0.50, cost=0.30),
        make_job(state=JobState.FAILED, estimate=1.00),  # refused or never sent: nothing committed
        make_job(state=JobState.FAILED, estimate=0.40, cost=0.40),  # maybe billed
        make_job(state=JobState.CANCELLED, estimate=2.00),
        make_job(state=JobState.ACCEPTED, estimate=3.00),  # not reserved yet
        make_job(user=99, state=JobState.DONE, cost=5.00),
        make_job(guild=2, state=JobState.DONE, cost=7.00),
    ]:
        await store.create(job)

    assert await store.spend(user_id=10, since=DAY) == pytest.approx(0.10 + 0.20 + 0.30 + 0.40 + 7.00)
    assert await store.spend(user_id=10, guild_id=1, since=DAY) == pytest.approx(1.00)
    assert await store.spend(guild_id=1, since=MONTH) == pytest.approx(6.00)
    assert await store.spend(user_id=10, since=T0 + timedelta(seconds=1)) == 0.0


async def test_twenty_concurrent_reserves_against_a_budget_for_five(store: Store) -> None:
    jobs = [make_job(estimate=0.2) for _ in range(20)]
    for job in jobs:
        await store.create(job)

    results = await asyncio.gather(*(reserve(store, job, user_daily=1.0) for job in jobs))

    assert results.count(None) == 5
    assert results.count("user_budget") == 15
    assert len([j for j in await store.list_unfinished() if j.state is JobState.WAITING]) == 5
    assert await store.spend(user_id=10, since=DAY) == pytest.approx(1.0)
    refused = [job for job, result in zip(jobs, results, strict=True) if result is not None]
    assert all(job.state is JobState.ACCEPTED for job in refused)


async def test_reserve_sets_waiting_durably(store: Store, store_db: StoreDb, clock: Clock) -> None:
    job = make_job(estimate=0.1)
    await store.create(job)
    clock.now = T0 + timedelta(seconds=30)
    assert await reserve(store, job) is None
    assert job.state is JobState.WAITING and job.updated_at == clock.now
    async with await store_db.open() as other:
        seen = await other.get(job.id)
        assert seen is not None and seen.state is JobState.WAITING


async def test_max_unfinished_per_user(store: Store) -> None:
    jobs = [make_job() for _ in range(4)]
    other_user = make_job(user=11)
    for job in [*jobs, other_user]:
        await store.create(job)

    results = await asyncio.gather(*(reserve(store, job, max_jobs=2) for job in jobs))

    assert sorted(results, key=str) == [None, None, "user_limit", "user_limit"]
    assert await reserve(store, other_user, max_jobs=2) is None


async def test_jobs_being_validated_do_not_count_towards_the_limit(store: Store) -> None:
    await store.create(make_job(state=JobState.ACCEPTED))
    job = make_job()
    await store.create(job)
    assert await reserve(store, job, max_jobs=1) is None


async def test_finished_jobs_free_the_limit(store: Store) -> None:
    await store.create(make_job(state=JobState.DONE))
    job = make_job()
    await store.create(job)
    assert await reserve(store, job, max_jobs=1) is None


async def test_a_budget_that_fits_exactly_passes(store: Store) -> None:
    await store.create(make_job(state=JobState.DONE, cost=0.1))
    await store.create(make_job(state=JobState.DONE, cost=0.2))
    job = make_job(estimate=0.3)
    await store.create(job)
    assert await reserve(store, job, user_daily=0.6) is None  # 0.1 + 0.2 + 0.3 > 0.6 in floats


async def test_guild_budget(store: Store) -> None:
    await store.create(make_job(user=20, state=JobState.DONE, cost=4.5, created_at=MONTH + timedelta(days=1)))
    await store.create(make_job(user=21, state=JobState.DONE, cost=9.0, created_at=MONTH - timedelta(days=1)))
    fits, too_much = make_job(estimate=0.5), make_job(estimate=0.01)
    dm = make_job(guild=None, estimate=3.0)
    for job in (fits, too_much, dm):
        await store.create(job)

    assert await reserve(store, fits, guild_monthly=5.0) is None
    assert await reserve(store, too_much, guild_monthly=5.0) == "guild_budget"
    assert await reserve(store, dm, guild_monthly=5.0) is None  # no guild, no guild budget


async def test_user_budget_is_checked_before_guild_budget(store: Store) -> None:
    job = make_job(estimate=2.0)
    await store.create(job)
    assert await reserve(store, job, user_daily=1.0, guild_monthly=1.0) == "user_budget"


async def test_yesterdays_jobs_do_not_count_against_today(store: Store) -> None:
    await store.create(make_job(state=JobState.DONE, cost=0.9, created_at=DAY - timedelta(microseconds=1)))
    await store.create(make_job(state=JobState.DONE, cost=0.3, created_at=DAY))
    job = make_job(estimate=0.7)
    await store.create(job)
    assert await reserve(store, job, user_daily=1.0) is None
    late = make_job(estimate=0.01)
    await store.create(late)
    assert await reserve(store, late, user_daily=1.0) == "user_budget"


async def test_reserving_a_job_twice_does_not_count_it_twice(store: Store) -> None:
    job = make_job(estimate=0.6)
    await store.create(job)
    assert await reserve(store, job, user_daily=1.0, max_jobs=1) is None
    assert await reserve(store, job, user_daily=1.0, max_jobs=1) is None


async def test_usage_report(store: Store) -> None:
    big = make_job(20, state=JobState.DONE, cost=0.6)
    big.result_files = ["result-1.jpg", "result-2.jpg"]
    small = make_job(21, state=JobState.DONE, cost=0.1)
    small.result_files = ["result-1.jpg"]
    for job in [
        big,
        small,
        make_job(21, state=JobState.RUNNING, estimate=0.05),
        make_job(21, state=JobState.FAILED, estimate=9.0),  # refused: not in the report
        make_job(22, guild=2, state=JobState.DONE, cost=5.0),
        make_job(20, state=JobState.DONE, cost=1.0, created_at=T0 - timedelta(days=40)),
    ]:
        await store.create(job)

    rows = await store.usage(guild_id=1, since=T0 - timedelta(days=30))

    assert [(r.user_id, r.jobs, r.images) for r in rows] == [(20, 1, 2), (21, 2, 1)]
    assert [r.spent_usd for r in rows] == pytest.approx([0.6, 0.15])
    everywhere = await store.usage(guild_id=None, since=T0 - timedelta(days=30))
    assert [r.user_id for r in everywhere] == [22, 20, 21]
    assert await store.usage(guild_id=1, since=T0 - timedelta(days=30), until=T0) == []


# guild admin state


async def test_guild_defaults(store: Store) -> None:
    settings = await store.guild_settings(1)
    assert settings == GuildSettings(guild_id=1)
    assert settings.user_daily(2.5) == 2.5 and settings.guild_monthly(None) is None
    assert await store.bans(1) == [] and await store.admin_log(1) == []


async def test_admin_state_survives_reopen_and_is_logged(store_db: StoreDb, clock: Clock) -> None:
    async with await store_db.open(clock) as store:
        await store.set_paused(1, True, by=500)
        await store.set_paused(1, True, by=500)  # no change, no entry
        await store.set_budgets(1, user_daily_usd=2.0, by=500)
        await store.set_budgets(1, guild_monthly_usd=None, by=501)  # no limit, whatever the config says
        assert await store.ban(1, 77, by=500, reason="spam") is True
        assert await store.ban(1, 77, by=500, reason="again") is False
        assert await store.ban(1, 78, by=500, reason=None) is True
        assert await store.unban(1, 78, by=501) is True
        assert await store.unban(1, 78, by=501) is False
        await store.ban(2, 78, by=600, reason=None)

    async with await store_db.open(clock) as store:
        settings = await store.guild_settings(1)
        assert settings.paused
        assert settings.user_daily(5.0) == 2.0
        assert settings.guild_monthly(100.0) is None
        assert (await store.member_facts(1, 77)).banned and not (await store.member_facts(1, 78)).banned
        assert (await store.member_facts(2, 78)).banned
        assert await store.bans(1) == [77]
        entries = await store.admin_log(1)
        assert [(e.action, e.actor_id, e.detail) for e in entries] == [
            ("unban", 501, "<@78>"),
            ("ban", 500, "<@78>"),
            ("ban", 500, "<@77>: spam"),
            ("budget", 501, "server monthly: default → no limit"),
            ("budget", 500, "member daily: default → 2.00 USD"),
            ("pause", 500, None),
        ]
        assert all(e.at == T0 and e.guild_id == 1 for e in entries)
        assert len(await store.admin_log(1, limit=2)) == 2


async def test_budgets_go_back_to_default_and_zero_stops_spending(store: Store) -> None:
    await store.set_budgets(1, user_daily_usd=0.0, guild_monthly_usd=50, by=5)
    settings = await store.guild_settings(1)
    assert settings.user_daily(3.0) == 0.0 and settings.guild_monthly(None) == 50.0

    await store.set_budgets(1, user_daily_usd=DEFAULT, guild_monthly_usd=DEFAULT, by=5)
    await store.set_budgets(1, user_daily_usd=DEFAULT, by=5)  # already default: no entry
    await store.set_paused(1, False, by=5)  # already running: no entry

    settings = await store.guild_settings(1)
    assert settings.user_daily(3.0) == 3.0 and settings.guild_monthly(None) is None
    assert [e.detail for e in await store.admin_log(1)] == [
        "member daily: 0.00 USD → default; server monthly: 50.00 USD → default",
        "member daily: default → 0.00 USD; server monthly: default → 50.00 USD",
    ]


@pytest.mark.parametrize("amount", [-1.0, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
async def test_bad_budgets_are_refused(store: Store, amount: float) -> None:
    with pytest.raises(ValueError):
        await store.set_budgets(1, user_daily_usd=amount, by=5)
    assert await store.admin_log(1) == []


async def test_resume_is_logged(store: Store) -> None:
    await store.set_paused(1, True, by=5)
    await store.set_paused(1, False, by=6)
    assert [(e.action, e.actor_id) for e in await store.admin_log(1)] == [("resume", 6), ("pause", 5)]
    assert not (await store.guild_settings(1)).paused


async def test_cancelled_writers_leave_the_store_usable(store: Store) -> None:
    jobs = [make_job(estimate=0.1) for _ in range(10)]
    for job in jobs:
        await store.create(job)
    tasks = [asyncio.create_task(reserve(store, job, user_daily=1.0)) for job in jobs]
    for _ in range(3):
        await asyncio.sleep(0)  # let some of them get into their transaction
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    late = make_job(user=11, estimate=0.1)
    await store.create(late)
    assert await reserve(store, late) is None
    waiting = {job.id for job in await store.list_unfinished() if job.state is JobState.WAITING}
    assert late.id in waiting
    assert {job.id for job, task in zip(jobs, tasks, strict=True) if not task.cancelled()} <= waiting


async def test_a_member_daily_budget_counts_only_the_spend_in_its_server(store: Store) -> None:
    elsewhere = make_job(guild=2, state=JobState.DONE, cost=0.9)
    await store.create(elsewhere)
    here = make_job(guild=1, estimate=0.5)
    await store.create(here)
    assert await reserve(store, here, user_daily=1.0) is None  # the $0.90 was spent in another server
    another = make_job(guild=1, estimate=0.6)
    await store.create(another)
    assert await reserve(store, another, user_daily=1.0) == "user_budget"


async def test_a_save_that_fails_leaves_the_job_matching_its_row(store: Any, store_db: StoreDb) -> None:
    job = make_job(state=JobState.QUEUED)
    await store.create(job)
    # the write itself fails (as a full disk would), after the version was bumped for it
    if store_db.kind == "sqlite":
        await store._db.execute(
            "CREATE TEMP TRIGGER fail_running BEFORE UPDATE ON jobs WHEN NEW.state = 'running' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    else:
        await store._pool.execute(
            "CREATE FUNCTION fail_running() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk I/O error'; END $$; "
            "CREATE TRIGGER fail_running BEFORE UPDATE ON jobs FOR EACH ROW WHEN (NEW.state = 'running') "
            "EXECUTE FUNCTION fail_running()"
        )
    job.state = JobState.RUNNING
    with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError)):
        await store.save(job)
    assert job.version == 0  # still the row's version: the next save (a FAILED) goes through
    job.state = JobState.FAILED
    await store.save(job)
    assert (await store.get(job.id)).state is JobState.FAILED  # type: ignore[union-attr]


async def test_jobs_are_counted_by_state_for_the_metrics(store: Store) -> None:
    for state in (JobState.WAITING, JobState.WAITING, JobState.RUNNING, JobState.DONE):
        await store.create(make_job(state=state))
    counts = await store.count_by_state()
    assert counts == {s.value: 0 for s in JobState} | {"waiting": 2, "running": 1, "done": 1}


async def test_catalog_entries_round_trip_and_names_are_unique_per_guild(store: Store) -> None:
    data = '{"name":"pixel-art","url":"https://huggingface.co/x/pixel.safetensors","scale":0.8}'
    assert await store.add_catalog_entry(1, "lora", "pixel-art", data, by=5)
    assert not await store.add_catalog_entry(1, "lora", "pixel-art", data, by=6)
    assert await store.add_catalog_entry(2, "lora", "pixel-art", data, by=6)
    assert await store.remove_catalog_entry(2, "lora", "pixel-art", by=6)
    assert not await store.remove_catalog_entry(2, "lora", "pixel-art", by=6)
    assert [e.action for e in await store.admin_log(1)] == ["lora add"]
    assert [e.action for e in await store.admin_log(2)] == ["lora remove", "lora add"]
    assert await store.catalog_entries(2) == ([], [])


async def test_recent_jobs_are_the_members_own_in_this_server_newest_first(store: Store) -> None:
    jobs = [make_job(created_at=T0 + timedelta(minutes=m)) for m in range(3)]
    for job in [*jobs, make_job(guild=2), make_job(user=11), make_job(guild=None)]:
        await store.create(job)
    recent = await store.recent_jobs(user_id=10, guild_id=1, limit=2)
    assert [j.id for j in recent] == [jobs[2].id, jobs[1].id]
    assert len(await store.recent_jobs(user_id=10, guild_id=None)) == 1  # DMs are a "server" of their own


# several processes on one PostgreSQL (SPEC 13): two stores, each with its own pool, as two processes have


def rules(max_at_fal: int, max_jobs: int = 100) -> LineRules:
    return LineRules(max_at_fal=max_at_fal, max_unfinished_per_user=max_jobs, day_start=DAY, month_start=MONTH)


def asks(jobs: list[Job], *, user_daily: float | None = None) -> list[ClaimRequest]:
    return [ClaimRequest(job.id, user_daily, None) for job in jobs]


@pytest.fixture
async def two(pg_url: str, clock: Clock) -> AsyncIterator[tuple[Any, Any]]:
    """Two processes' stores on one PostgreSQL database, on one clock (leases run out when the test says)."""
    a = await StoreDb("postgresql", dsn=pg_url).open(clock, lease_s=30)
    b = await StoreDb("postgresql", dsn=pg_url).open(clock, lease_s=30)
    yield a, b
    await a.close()
    await b.close()


async def owners(store: Any) -> dict[str, str | None]:
    return {row["id"]: row["owner"] for row in await store._pool.fetch("SELECT id, owner FROM jobs")}


async def test_skip_locked_claims_never_hand_one_job_to_two_owners(two: tuple[Any, Any]) -> None:
    a, b = two
    jobs = [make_job(user=u % 7, state=JobState.WAITING) for u in range(40)]
    for job in jobs:
        await a.create(job)

    async def claim_all(store: Any, order: list[Job]) -> list[str]:
        claimed: list[str] = []
        for start in range(0, len(order), 4):  # many small claims, interleaving with the other store's
            result = await store.claim_waiting(asks(order[start : start + 8]), rules(max_at_fal=100))
            claimed += [job.id for job in result.claimed]
        return claimed

    by_a, by_b = await asyncio.gather(claim_all(a, jobs), claim_all(b, jobs[::-1]))

    assert not set(by_a) & set(by_b) and len(by_a) == len(set(by_a)) and len(by_b) == len(set(by_b))
    assert sorted(by_a + by_b) == sorted(job.id for job in jobs)
    stored = await owners(a)
    assert {stored[i] for i in by_a} == {a.owner} and {stored[i] for i in by_b} == {b.owner}


async def test_the_fal_cap_holds_across_two_processes(two: tuple[Any, Any]) -> None:
    a, b = two
    at_fal = make_job(user=1, state=JobState.RUNNING)
    waiting = [make_job(user=u, state=JobState.WAITING) for u in range(20)]
    for job in [at_fal, *waiting]:
        await a.create(job)

    results = await asyncio.gather(
        *(store.claim_waiting(asks(waiting[i::2]), rules(max_at_fal=4)) for i, store in enumerate([a, b, a, b]))
    )

    claimed = [job for result in results for job in result.claimed]
    assert len(claimed) == 3  # the job already at fal holds the fourth slot
    snapshot = await b.line_snapshot()
    assert sum(snapshot.active.values()) == 4 and len(snapshot.waiting) == 17
    assert {job.id for job in snapshot.waiting}.isdisjoint(job.id for job in claimed)
    assert (await b.claim_waiting(asks(waiting), rules(max_at_fal=4))).claimed == []

    at_fal.state = JobState.DONE  # a slot frees: one more, and only one
    await a.save(at_fal)
    again = await asyncio.gather(*(s.claim_waiting(asks(waiting), rules(max_at_fal=4)) for s in (a, b)))
    assert sum(len(result.claimed) for result in again) == 1


async def test_a_lease_that_runs_out_is_taken_over_and_the_old_owner_learns_it(
    two: tuple[Any, Any], clock: Clock
) -> None:
    a, b = two
    job = make_job(state=JobState.QUEUED)
    await a.create(job)
    assert [j.id for j in (await a.claim_orphans()).jobs] == [job.id]  # unowned: taken at once

    clock.now = T0 + timedelta(seconds=20)
    orphans = await b.claim_orphans()
    assert orphans.jobs == [] and orphans.next_expiry == T0 + timedelta(seconds=30)
    assert await a.renew([job.id]) == set()  # renewed until T0 + 50 s

    clock.now = T0 + timedelta(seconds=45)
    assert (await b.claim_orphans()).jobs == []
    clock.now = T0 + timedelta(seconds=50)  # a stopped renewing: its lease ran out
    taken = await b.claim_orphans()
    assert [(j.id, j.state, j.request_id) for j in taken.jobs] == [(job.id, JobState.QUEUED, job.request_id)]
    assert (await owners(a))[job.id] == b.owner
    assert await a.renew([job.id]) == {job.id}  # a learns it lost the job, and stops carrying it
    assert (await a.claim_orphans()).jobs == []


async def test_jobs_being_checked_are_renewed_and_taken_over_only_once_their_process_is_gone(
    two: tuple[Any, Any], clock: Clock
) -> None:
    a, b = two
    checking = make_job(state=JobState.ACCEPTED)
    await a.create(checking)
    clock.now = T0 + timedelta(seconds=25)
    await a.renew([])  # the lease loop renews the intakes it runs without being told their ids
    clock.now = T0 + timedelta(seconds=40)
    assert (await b.claim_orphans()).jobs == []
    clock.now = T0 + timedelta(seconds=56)
    (taken,) = (await b.claim_orphans()).jobs
    assert taken.id == checking.id and taken.state is JobState.ACCEPTED


async def test_a_process_that_stops_hands_its_jobs_over_but_one_on_the_wire_keeps_its_lease(
    two: tuple[Any, Any], clock: Clock
) -> None:
    a, b = two
    queued, submitting, back_in_line = (
        make_job(state=s, created_at=T0 + timedelta(seconds=n))
        for n, s in enumerate((JobState.QUEUED, JobState.SUBMITTING, JobState.WAITING))
    )
    for job in (queued, submitting, back_in_line):
        await a.create(job)
    await a.claim_orphans()

    await a.release([queued.id, submitting.id, back_in_line.id], hand_over=True)

    stored = await owners(a)
    assert stored[queued.id] is None and stored[back_in_line.id] is None and stored[submitting.id] == a.owner
    assert [j.id for j in (await b.claim_orphans()).jobs] == [queued.id, back_in_line.id]
    clock.now = T0 + timedelta(seconds=20)
    assert await b.renew([queued.id]) == set()  # b carries the job it took; the one in the line needs no task
    clock.now = T0 + timedelta(seconds=31)  # only once a's lease ran out: then "maybe sent", never re-sent
    assert [j.id for j in (await b.claim_orphans()).jobs] == [submitting.id]


async def test_a_job_its_owner_no_longer_carries_lapses_and_is_taken_over_fenced(
    two: tuple[Any, Any], clock: Clock
) -> None:
    a, b = two
    stuck = make_job(state=JobState.QUEUED)
    await a.create(stuck)
    (held,) = (await a.claim_orphans()).jobs
    clock.now = T0 + timedelta(seconds=20)
    assert await a.renew([]) == set()  # its runner stopped: the lease is not extended
    clock.now = T0 + timedelta(seconds=31)
    (taken,) = (await b.claim_orphans()).jobs
    assert taken.id == stuck.id and taken.version == held.version + 1
    with pytest.raises(StaleJobError):  # the former owner, back from a stall, cannot write over the new owner
        await a.save(held)
    assert (await b.save(taken)).version == held.version + 2


async def test_a_job_back_in_line_frees_its_slot_and_stays_its_process_s(two: tuple[Any, Any]) -> None:
    a, b = two
    job = make_job()
    await a.create(job)
    assert await reserve(a, job) is None
    assert len((await a.claim_waiting(asks([job]), rules(max_at_fal=1))).claimed) == 1
    assert sum((await b.line_snapshot()).active.values()) == 1  # being started: it holds the only slot
    other = make_job(user=11, state=JobState.WAITING)
    await b.create(other)
    assert (await b.claim_waiting(asks([other]), rules(max_at_fal=1))).claimed == []

    await a.release([job.id])  # fal did not take it: back in line

    seen_by_b, seen_by_a = await b.line_snapshot(), await a.line_snapshot()
    assert [j.id for j in seen_by_b.waiting] == [job.id, other.id] and sum(seen_by_b.active.values()) == 0
    assert seen_by_b.mine == set() and seen_by_b.claimable == {other.id}  # a's to show and to start
    assert seen_by_a.mine == {job.id} and seen_by_a.claimable == {job.id, other.id}
    assert (await b.claim_waiting(asks([job]), rules(max_at_fal=1))).claimed == []


async def test_budgets_are_exact_when_two_processes_reserve_for_one_member_at_once(two: tuple[Any, Any]) -> None:
    a, b = two
    jobs = [make_job(estimate=0.2) for _ in range(20)]
    for job in jobs:
        await a.create(job)

    results = await asyncio.gather(*(reserve((a, b)[i % 2], job, user_daily=1.0) for i, job in enumerate(jobs)))

    assert results.count(None) == 5 and results.count("user_budget") == 15
    assert await a.spend(user_id=10, since=DAY) == pytest.approx(1.0)
    waiting = {job.id: i % 2 for i, job in enumerate(jobs) if job.state is JobState.WAITING}
    stored = await owners(a)
    assert all(stored[job_id] == (a, b)[n].owner for job_id, n in waiting.items())  # the process that took it


async def test_a_claim_checks_the_budget_in_force_and_the_member_cap(two: tuple[Any, Any]) -> None:
    a, b = two
    jobs = [make_job(estimate=0.3, state=JobState.WAITING) for _ in range(3)]
    other = make_job(user=11, estimate=0.3, state=JobState.WAITING)
    for job in [*jobs, other]:
        await a.create(job)

    lowered = await a.claim_waiting(asks([*jobs, other], user_daily=0.5), rules(max_at_fal=10))
    assert [j.id for j in lowered.claimed] == [other.id]  # the member's three in flight are past a lowered budget
    assert lowered.refused == dict.fromkeys((j.id for j in jobs), "user_budget")
    capped = await b.claim_waiting(asks(jobs), rules(max_at_fal=10, max_jobs=2))
    assert capped.claimed == [] and set(capped.refused.values()) == {"user_limit"}
    fine = await b.claim_waiting(asks(jobs, user_daily=1.0), rules(max_at_fal=10))
    assert [j.id for j in fine.claimed] == [j.id for j in jobs]


async def test_a_claim_that_refuses_a_job_leaves_it_out_of_the_line_for_a_while(
    two: tuple[Any, Any], clock: Clock
) -> None:
    a, b = two
    job = make_job(estimate=0.5)
    await a.create(job)
    assert await reserve(a, job) is None
    assert (await a.claim_waiting(asks([job], user_daily=0.1), rules(max_at_fal=4))).refused == {job.id: "user_budget"}
    held = await a.line_snapshot()
    assert held.waiting == [] and [(j.id, why) for j, why in held.refused] == [(job.id, "user_budget")]
    assert (await b.line_snapshot()).refused == []  # shown by its own process only
    clock.now = T0 + timedelta(seconds=61)
    assert [j.id for j in (await a.line_snapshot()).waiting] == [job.id]  # offered again


async def test_a_job_entering_the_line_wakes_the_other_process(two: tuple[Any, Any]) -> None:
    a, b = two
    woken_a, woken_b = asyncio.Event(), asyncio.Event()
    await a.listen(woken_a.set)
    await b.listen(woken_b.set)
    job = make_job()
    await b.create(job)
    assert await reserve(b, job) is None
    await asyncio.wait_for(woken_a.wait(), 10)
    assert not woken_b.is_set()  # its own change does not wake it


async def test_the_dsn_password_is_never_logged(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with await StoreDb("postgresql", dsn=pg_url).open() as store:
        await store.ping()
    assert "PostgreSQL at" in caplog.text and PASSWORD not in caplog.text
    assert "***" in caplog.text

"""A throwaway PostgreSQL cluster for the tests and benchmarks: initdb into a temp dir, a Unix socket there, a fresh
database per test; one cluster per test session (the ``pg_cluster`` fixture), stopped at its end.

Without a server binary (``initdb`` on PATH, under ``/usr/lib/postgresql/*/bin`` or in ``$FLUXPAINT_PG_BIN``) the
PostgreSQL tests skip and say so. As root (CI may be), the server runs as the ``postgres`` user: initdb refuses root.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.models import utcnow
from bot.store import JobStore
from bot.store_pg import PgJobStore

PASSWORD = "pg-test-password"  # trust auth ignores it; it is there so tests can check it is never shown
NO_SERVER = (
    "no PostgreSQL server binary (initdb) found: install postgresql (Debian: apt-get install postgresql) "
    "or point FLUXPAINT_PG_BIN at its bin directory"
)


def server_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    candidates = [os.environ.get("FLUXPAINT_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    found = shutil.which("initdb")
    candidates.append(str(Path(found).parent) if found else "")
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def _major(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


class PgCluster:
    """One PostgreSQL server in a temp dir, listening only on a Unix socket there; ``dsn(name)`` for a database."""

    user = "fluxpaint"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="fppg-"))  # short: a socket path must fit in 107 bytes
        self.data = self.root / "data"
        self._as: list[str] = []
        self._names = itertools.count(1)
        self.started = False

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> PgCluster:
        if os.geteuid() == 0:  # initdb refuses root: the server runs as an ordinary user that owns the dir
            runas = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.root, user=runas)
            self._as = ["runuser", "-u", runas, "--"]
        initdb, pg_ctl = str(self.bin_dir / "initdb"), str(self.bin_dir / "pg_ctl")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        # durability off: a throwaway cluster; the store's own guarantees do not depend on it
        options = (
            f"-k {self.root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{PASSWORD}@/{database}?host={self.root}"

    def _sql(self, statement: str) -> None:
        psql = str(self.bin_dir / "psql")
        args = [psql, "-h", str(self.root), "-U", self.user, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]
        subprocess.run([*args, statement], check=True, capture_output=True, timeout=60)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its DSN."""
        name = f"{prefix}{os.getpid()}_{next(self._names)}"
        self._sql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def cluster() -> Iterator[PgCluster]:
    """A started cluster, stopped and removed on exit (for benchmarks and scripts).

    Raises:
        RuntimeError: no server binary on this machine.
    """
    bin_dir = server_bin()
    if bin_dir is None:
        raise RuntimeError(NO_SERVER)
    pg = PgCluster(bin_dir)
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One cluster for the whole session; tests that need it skip where no server binary exists."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip(NO_SERVER)
    pg = PgCluster(bin_dir)
    try:
        yield pg.start()
    finally:
        pg.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database of its own for one test; dropped afterwards."""
    dsn = pg_cluster.create_database()
    yield dsn
    pg_cluster.drop_database(dsn)


@dataclass
class StoreDb:
    """One test's database for the job store, on either backend; ``open`` it as often as a test needs (each
    PostgreSQL store has its own pool, as a second process would)."""

    kind: str  # "sqlite" or "postgresql"
    path: Path | None = None
    dsn: str | None = None

    async def open(self, clock: Callable[[], datetime] = utcnow, *, lease_s: float = 30.0) -> Any:
        if self.kind == "sqlite":
            assert self.path is not None
            return await JobStore.open(self.path, clock=clock)
        assert self.dsn is not None
        return await PgJobStore.open(self.dsn, clock=clock, lease_s=lease_s, max_size=4)

    @property
    def duplicate_error(self) -> type[Exception]:
        return sqlite3.IntegrityError if self.kind == "sqlite" else asyncpg.UniqueViolationError

    async def text(self) -> str:
        """Everything the database holds about jobs, as text: a secret written anywhere shows up here (SQLite: its
        files, WAL included; PostgreSQL: the rows, since old row versions are not readable through SQL)."""
        if self.kind == "sqlite":
            assert self.path is not None
            return b"".join(p.read_bytes() for p in self.path.parent.glob(self.path.name + "*")).decode("latin-1")
        conn = await asyncpg.connect(self.dsn)
        try:
            return str(await conn.fetchval("SELECT string_agg(data::text, '') FROM jobs"))
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> StoreDb:
    """The same test against both stores: a SQLite file, or a fresh PostgreSQL database (skipped without a server)."""
    if request.param == "sqlite":
        return StoreDb("sqlite", path=tmp_path / "data" / "fluxpaint.sqlite3")
    return StoreDb("postgresql", dsn=request.getfixturevalue("pg_url"))

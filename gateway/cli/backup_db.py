"""The database half of `backup` and `restore`: a consistent copy of a store that keeps serving.

SQLite: the online backup API (sqlite3.Connection.backup) from the live WAL database, in one step, so the
copy is one committed state even while intake and workers write; a file copy could catch the database
file and its WAL at different moments. PostgreSQL: `pg_dump --format=custom` on a snapshot exported by a
REPEATABLE READ transaction that also counts the rows, so the manifest's counts are the dump's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import db
from gateway.core.schema import metadata

SQLITE_FILE = "gateway.db"
PG_FILE = "database.pgdump"
REVISION_TABLE = "alembic_version"


class BackupError(Exception):
    """A problem the administrator can fix: the message says what was wrong and what to do."""


@dataclass(frozen=True)
class DatabaseCopy:
    file: str  # its name in the backup folder
    kind: str  # "sqlite" or "postgresql"
    revision: str  # the migration the copy is at
    rows: dict[str, int]  # table -> row count, in the copy


def known_revisions() -> set[str]:
    """The migrations this version of the code has: a backup at another one was made by a newer version."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def table_names() -> list[str]:
    return [table.name for table in metadata.sorted_tables]


def private_file(path: Path) -> Path:
    """An empty file only its owner can read, for the copy to be written into: the copy's metadata (references,
    teams, staff accounts) is not sealed, whatever the umask of the shell or timer that runs the backup."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[-1])


def backup_sqlite(source: Path, folder: Path) -> DatabaseCopy:
    if not source.is_file():
        raise BackupError(f"{source}: no database there; check [paths] data_dir, or run `referral-gateway serve` once")
    target = private_file(folder / SQLITE_FILE)
    live = sqlite3.connect(source, timeout=30)
    copy = sqlite3.connect(target)
    try:
        live.execute("PRAGMA busy_timeout=30000")
        # pages=-1: the whole database in one step under one read snapshot. In steps, a write by the gateway
        # between two steps would restart the copy, and under steady intake it might never finish.
        live.backup(copy, pages=-1)
        # The copy inherits WAL mode; as one self-contained file it needs no -wal/-shm beside it.
        copy.execute("PRAGMA journal_mode=DELETE")
        problem = copy.execute("PRAGMA integrity_check").fetchone()[0]
        if problem != "ok":
            raise BackupError(
                f"the copy of {source} fails SQLite's integrity check ({problem}); the backup is not usable"
            )
        # The names are our schema's own tables, never input: nothing to inject.
        rows = {name: int(copy.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]) for name in table_names()}  # noqa: S608
        revision = str(copy.execute(f"SELECT version_num FROM {REVISION_TABLE}").fetchone()[0])  # noqa: S608
    finally:
        copy.close()
        live.close()
    return DatabaseCopy(SQLITE_FILE, "sqlite", revision, rows)


def libpq_env(url: str) -> dict[str, str]:
    """The server as libpq's environment, for pg_dump and pg_restore: a password never appears in argv
    (where `ps` shows it to every user on the machine)."""
    parsed = make_url(url)
    env = dict(os.environ)
    for name, value in (
        ("PGHOST", parsed.host),
        ("PGPORT", parsed.port),
        ("PGUSER", parsed.username),
        ("PGPASSWORD", parsed.password),
        ("PGDATABASE", parsed.database),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed; install PostgreSQL's client tools (Debian: apt install postgresql-client)"
        )
    return found


async def count_rows(conn: AsyncConnection) -> tuple[dict[str, int], str]:
    rows = {
        t.name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
        for t in metadata.sorted_tables
    }
    revision = (await conn.exec_driver_sql(f"SELECT version_num FROM {REVISION_TABLE}")).scalar_one()  # noqa: S608
    return rows, str(revision)


async def backup_postgres(url: str, folder: Path) -> DatabaseCopy:
    pg_dump = _tool("pg_dump")
    target = private_file(folder / PG_FILE)
    engine = db.make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                snapshot = (await conn.exec_driver_sql("SELECT pg_export_snapshot()")).scalar_one()
                rows, revision = await count_rows(conn)
                # pg_dump reads the same snapshot while this transaction stays open: counts and dump agree.
                proc = await asyncio.create_subprocess_exec(
                    pg_dump, "--format=custom", f"--snapshot={snapshot}", "--file", str(target),
                    env=libpq_env(url), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await proc.communicate()
    finally:
        await engine.dispose()
    if proc.returncode != 0:
        raise BackupError(f"pg_dump failed (exit {proc.returncode}): {err.decode(errors='replace').strip()}")
    return DatabaseCopy(PG_FILE, "postgresql", revision, rows)


def restore_sqlite(copy: Path, target: Path) -> None:
    """Into place via a temporary name and a rename: a restore cut short leaves no half database."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        # A WAL left by an older database would be replayed into the restored one at the next open.
        stale.unlink(missing_ok=True)
    partial = target.with_name(target.name + ".restoring")
    shutil.copyfile(copy, partial)
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)


async def postgres_tables(url: str) -> int:
    engine = db.make_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            return int(found.scalar_one())
    finally:
        await engine.dispose()


async def restore_postgres(dump: Path, url: str, force: bool) -> None:
    pg_restore = _tool("pg_restore")
    args = [
        pg_restore,
        "--no-owner",
        "--exit-on-error",
        "--single-transaction",
        "--dbname",
        make_url(url).database or "",
    ]
    if force:
        args += ["--clean", "--if-exists"]  # drops what is there first, in the same transaction
    proc = await asyncio.create_subprocess_exec(
        *args, str(dump), env=libpq_env(url), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackupError(
            f"pg_restore failed (exit {proc.returncode}), nothing was restored: {err.decode(errors='replace').strip()}"
        )

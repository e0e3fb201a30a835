"""Database engine and migrations. SQLite for one instance, PostgreSQL for several; same queries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    # Let SQLAlchemy's "begin" hook issue BEGIN itself (pysqlite's implicit BEGIN would defer
    # the write lock); WAL + synchronous=FULL makes a commit durable before we answer 250.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Take the write lock at BEGIN: a deferred BEGIN that later writes gets "database is locked"
    # instead of waiting, and two workers could read the same unclaimed row.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, busy_timeout: timedelta = timedelta(seconds=10)) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=5, max_overflow=5)
        timeout_ms = int(busy_timeout.total_seconds() * 1000)
        event.listen(
            engine.sync_engine,
            "connect",
            lambda dbapi_connection, _record: _sqlite_pragmas(dbapi_connection, timeout_ms),
        )
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py uses this connection instead of making its own (we are inside a running loop).
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied (idempotent; `serve` calls it at start)."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"

"""Database engine and migrations. SQLite for one instance, PostgreSQL for several; same queries."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

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


_WRITE = "gateway_write"
_BUSY_MS = "gateway_busy_ms"  # this write's own wait for the lock: what is left of its busy_timeout


def _sqlite_begin(conn: Connection, busy_timeout_ms: int) -> None:
    # A write transaction takes the write lock at BEGIN (IMMEDIATE): a deferred BEGIN that later
    # writes gets "database is locked" without waiting, and two workers could read the same
    # unclaimed row. Reads stay deferred, so they never queue for the write lock.
    options = conn.get_execution_options()
    busy = options.get(_BUSY_MS)
    if busy is not None:
        # An intake write has already spent part of its busy_timeout in the gate: SQLite's busy
        # handler gets only the rest (set back at the end, the connection goes back to the pool).
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy)}")
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE) else "BEGIN")
    finally:
        if busy is not None:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={busy_timeout_ms}")


def make_engine(url: str, busy_timeout: timedelta = timedelta(seconds=10)) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: bound values (sealed blobs, a worker's name) never reach an error's text.
        engine = create_async_engine(url, pool_size=5, max_overflow=5, hide_parameters=True)
        timeout_ms = int(busy_timeout.total_seconds() * 1000)
        event.listen(
            engine.sync_engine,
            "connect",
            lambda dbapi_connection, _record: _sqlite_pragmas(dbapi_connection, timeout_ms),
        )
        event.listen(engine.sync_engine, "begin", lambda conn: _sqlite_begin(conn, timeout_ms))
        return engine
    # timeout: connecting to a server that does not answer (a host gone, packets dropped) fails
    # within busy_timeout, so a sender hears 451 rather than waiting on asyncpg's 60 s default.
    engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args={"timeout": busy_timeout.total_seconds()},
    )
    # An INSERT of many rows (a batch's events, outbox rows, deadlines) as one INSERT ... VALUES
    # (...), (...) per 1000 rows (SQLAlchemy's "insertmanyvalues", as its psycopg2 dialect does by
    # default), not asyncpg's executemany: that is one round trip too, but PostgreSQL executes
    # it row by row, and a referral's dozen-odd event rows were most of its statements there.
    engine.sync_engine.dialect.use_insertmanyvalues_wo_returning = True
    return engine


def _alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    # env.py uses this connection instead of making its own (we are inside a running loop).
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied (idempotent; `serve` calls it at start)."""
    async with engine.execution_options(**{_WRITE: True}).begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several instances may start together: one migrates, the others wait here and then
            # find nothing left to do (the lock ends with the transaction).
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7340182)")
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read connection that sees one consistent state across all its statements (reports and
    checks on a live PostgreSQL would otherwise mix rows from before and after other writers'
    commits; SQLite's read transaction is a snapshot already)."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


class WriteGate:
    """One writer at a time inside this process, intake first.

    SQLite has one write lock; left to itself, it makes waiters sleep and retry in growing steps
    with no order, so an SMTP session's commit could wait seconds behind the workers. Queueing
    here instead hands the lock over at once, and an intake commit (a sender waiting for its
    250) goes before queued worker transactions, unless a worker has waited longer than
    `max_defer`: alerts are delayed by a burst of intake, never starved by it.
    """

    def __init__(self, max_defer: timedelta = timedelta(seconds=2)) -> None:
        self._max_defer = max_defer.total_seconds()
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[tuple[float, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, urgent: bool, deadline: float | None = None) -> AsyncIterator[None]:
        """`deadline` (the loop's time): give up waiting then, with TimeoutError."""
        if deadline is None:
            await self._acquire(urgent)
        else:
            async with asyncio.timeout_at(deadline):
                await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._busy and not self._urgent and not self._normal:
            self._busy = True
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if urgent:
            self._urgent.append(waiter)
        else:
            self._normal.append((loop.time(), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the gate was handed to us as we were cancelled: pass it on
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._urgent:
            self._urgent.remove(waiter)
        self._normal = deque(item for item in self._normal if item[1] is not waiter)

    def _release(self) -> None:
        # Waiters cancelled in the same tick are still queued: drop them, never hand them the gate.
        self._urgent = deque(w for w in self._urgent if not w.done())
        self._normal = deque(item for item in self._normal if not item[1].done())
        loop = asyncio.get_running_loop()
        overdue = self._normal and loop.time() - self._normal[0][0] > self._max_defer
        if self._urgent and not overdue:
            self._urgent.popleft().set_result(None)
        elif self._normal:
            self._normal.popleft()[1].set_result(None)
        elif self._urgent:
            self._urgent.popleft().set_result(None)
        else:
            self._busy = False


class Database:
    """The engine plus the one way to write: `write()` (BEGIN IMMEDIATE on SQLite, through the
    gate) and the way to read: `read()` (no write lock)."""

    def __init__(
        self,
        engine: AsyncEngine,
        max_defer: timedelta = timedelta(seconds=2),
        busy_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{_WRITE: True})
        # PostgreSQL has row locks and many writers; the gate is for SQLite's single write lock.
        self._gate = WriteGate(max_defer) if engine.dialect.name == "sqlite" else None
        self.busy_timeout = busy_timeout.total_seconds()

    @asynccontextmanager
    async def write(self, urgent: bool = False, since: float | None = None) -> AsyncIterator[AsyncConnection]:
        """An urgent write (intake: a sender waits for its answer) waits for the lock at most
        busy_timeout from `since` (the loop's time; default now), in the gate and in SQLite's busy
        handler together. Each waiting in full, a worker holding the gate while it waited for
        another process's lock made a sender wait two or three busy_timeouts for its 451."""
        if self._gate is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        if not urgent:
            async with self._gate.hold(False), self._writer.begin() as conn:
                yield conn
            return
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + self.busy_timeout
        async with self._gate.hold(True, deadline):
            left_ms = max(0, int((deadline - loop.time()) * 1000))
            async with self._writer.execution_options(**{_BUSY_MS: left_ms}).begin() as conn:
                yield conn

    def read(self) -> AsyncConnection:
        return self.engine.connect()

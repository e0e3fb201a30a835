"""Alembic migrations build exactly the schema the code uses, and `serve` applies them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, insert, inspect, select, table

from gateway.core import audit, db
from gateway.core.schema import events, messages, metadata

REFERRAL_0005 = ("id", "message_id", "reference", "channel", "state", "received_at", "incomplete")


async def test_migrations_match_the_schema_and_are_idempotent(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        await db.upgrade(engine)
        await db.upgrade(engine)  # a second start applies nothing and fails on nothing
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        await engine.dispose()
    assert diff == []
    assert {"messages", "referrals", "events", "deliveries", "deadlines", "audit_head"} <= tables
    assert version == "0011"


async def test_0006_keeps_the_audit_chain_of_an_existing_database_whole(tmp_path: Path) -> None:
    """A database at 0005 with a referral's events: after 0006 (events copied by batch mode on
    SQLite to drop NOT NULL) the chain still verifies, and staff events join the same chain."""
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    at = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(db._alembic_config(sync), "0005"))
            await conn.execute(
                messages.insert().values(
                    id="m" * 32, channel="email", dedupe_key="d", received_at=at, size=1, envelope=b"e", raw=b"r",
                    attempts=0, next_attempt_at=at, processed_at=at,
                )
            )  # fmt: skip
            # Only the columns 0005 had (later columns, such as 0007's legal_hold, are not there yet).
            await conn.execute(
                insert(table("referrals", *(column(n) for n in REFERRAL_0005))).values(
                    id="r" * 32, message_id="m" * 32, reference="ABCD-EFGH", channel="email", state="received",
                    received_at=at, incomplete=False,
                )
            )  # fmt: skip
            await audit.append(conn, [audit.Event("r" * 32, at, "test", "received", {})])
        await db.upgrade(engine)
        async with engine.begin() as conn:
            await audit.append(conn, [audit.Event(None, at, "user:x", "staff_signed_in", {"how": "code"})])
        async with engine.connect() as conn:
            assert await audit.check_chain(conn) == []
            kinds = (await conn.execute(select(events.c.referral_id, events.c.kind).order_by(events.c.id))).all()
        assert [tuple(k) for k in kinds] == [("r" * 32, "received"), (None, "staff_signed_in")]
    finally:
        await engine.dispose()

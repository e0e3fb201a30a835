"""Alembic migrations build exactly the schema the code uses, and `serve` applies them."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from gateway.core import db
from gateway.core.schema import metadata


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
    assert version == "0006"

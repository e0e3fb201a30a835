"""Queues are table rows claimed with a lease (Postfix's active queue, as rows).

One statement serves both databases: UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING. PostgreSQL skips rows another instance holds; SQLite drops FOR UPDATE and relies on
BEGIN IMMEDIATE, which lets one writer in at a time. A worker that dies keeps its lease until it
runs out; then the row is claimable again, so nothing stays stuck behind a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Row, Table, or_, select, update

from gateway.core.db import Database


class Leasing(Protocol):
    """How a worker claims (a config section: processing, outbox)."""

    @property
    def lease(self) -> timedelta: ...

    @property
    def batch(self) -> int: ...


Ready = ColumnElement[bool]
Order = ColumnElement[datetime]


async def claim(
    db: Database,
    table: Table,
    ready: Ready,
    order_by: Order,
    owner: str,
    now: datetime,
    leasing: Leasing,
    columns: Sequence[ColumnElement[Any]],
) -> list[Row[Any]]:
    """Lease up to `leasing.batch` ready rows to `owner` for `leasing.lease`; returns `columns` of
    them, as they are after the claim, from the claiming statement itself (RETURNING), so no
    SELECT has to follow it (a scalar subquery among them can read another table). Counts an
    attempt per claim, so a row that crashes its worker every time still reaches its attempt
    limit."""
    lease, limit = leasing.lease, leasing.batch
    free = or_(table.c.lease_until.is_(None), table.c.lease_until < now)
    candidates = select(table.c.id).where(ready, free).order_by(order_by).limit(limit).with_for_update(skip_locked=True)
    stmt = (
        update(table)
        .where(table.c.id.in_(candidates.scalar_subquery()))
        .values(lease_owner=owner, lease_until=now + lease, attempts=table.c.attempts + 1)
        .returning(*columns)
    )
    async with db.write() as conn:
        return list(await conn.execute(stmt))


def backoff(attempts: int, first: timedelta, cap: timedelta) -> timedelta:
    """Capped exponential backoff: first, 2x, 4x, ... never more than cap."""
    factor: int = 2 ** min(max(attempts - 1, 0), 20)
    return min(first * factor, cap)

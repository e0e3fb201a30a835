"""Typed records of the rows stages read back, so that what a row holds is spelled out once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.schema import referrals


@dataclass(frozen=True)
class ReferralRecord:
    """A `referrals` row. `content` is sealed (gateway.core.sealed.Sealed.content opens it)."""

    id: str
    message_id: str
    reference: str
    channel: str
    state: str
    received_at: datetime
    team_id: str | None
    route_name: str | None
    urgency: str | None
    incomplete: bool
    due_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    content: bytes | None  # None before it is read, when quarantined unread, and once purged
    legal_hold: bool
    purged_at: datetime | None

    @classmethod
    def of(cls, row: RowMapping) -> ReferralRecord:
        """From a row of `select(referrals)` (its columns by name: other columns are ignored)."""
        return cls(**{name: row[name] for name in _COLUMNS})


_COLUMNS = tuple(column.name for column in referrals.columns)


async def find_referral(conn: AsyncConnection, referral_id: str, *, lock: bool = False) -> ReferralRecord | None:
    """The referral, or None; `lock`: FOR UPDATE (the first lock a writer takes, see core.transitions)."""
    query = select(referrals).where(referrals.c.id == referral_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
    return ReferralRecord.of(row._mapping) if row is not None else None

"""Referrer follow-up: when a referral misses its first acknowledgement deadline, its referrer is
told once that no named worker has it yet, with the reference and the duty phone to call.

Once per referral, also across restarts and several instances: the `referrer_followed_up` event is
the record, read and written in the deadline's own write transaction, which holds the referral row
locked (gateway.track.deadlines), so two instances cannot both find it missing. No personal data:
the notice goes on the channel the referral came by (SMS, or email as for the receipt), and says
nothing of the child. Nobody is told when no receipt went out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core import audit
from gateway.core.records import find_referral
from gateway.core.schema import events
from gateway.track.referrer import Referrers

KIND = "referrer_followed_up"


async def follow_up(
    conn: AsyncConnection, settings: Settings, referrers: Referrers, referral_id: str, now: datetime
) -> list[audit.Event]:
    """Queue the follow-up notice in the caller's transaction (the referral row already locked), or
    nothing: when it is off, was sent before, or there is nobody to tell."""
    if not settings.referrer.follow_up:
        return []
    told = await conn.execute(
        select(events.c.id).where(events.c.referral_id == referral_id, events.c.kind == KIND).limit(1)
    )
    if told.first() is not None:
        return []
    row = await find_referral(conn, referral_id)
    if row is None:
        return []
    team = settings.find_team(row.team_id) if row.team_id else None
    phone = team.phone if team else settings.gateway.duty_phone
    queued = await referrers.tell(conn, row, "follow_up", {"phone": phone}, now, "gateway")
    if not queued:
        return []
    return [audit.Event(referral_id, now, "gateway", KIND, {"phone": "team" if team else "gateway"}), *queued]

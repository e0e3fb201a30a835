"""Enqueue: every outbound message is an outbox row first, sealed, with its `delivery_queued` event.

The outbox worker (gateway.deliver.worker) sends what is here; callers add the rows inside their own
transaction, so a referral's state change and the messages it causes commit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.schema import deliveries
from gateway.core.sealed import Payload, Sealed
from gateway.outbox.compose import Outgoing

Row = dict[str, object]  # a deliveries row as inserted


def outbox_row(out: Outgoing, referral_id: str | None, sealed: Sealed, now: datetime) -> Row:
    """referral_id None: a message about no one referral (the daily digest)."""
    delivery_id = uuid.uuid4().hex
    return {
        "id": delivery_id,
        "referral_id": referral_id,
        "kind": out.kind,
        "channel": out.channel,
        "team_id": out.team_id,
        "recipient_hash": out.recipient_hash,
        "payload": sealed.seal_payload(delivery_id, Payload(out.to, out.message)),
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def queued_events(referral_id: str, rows: Sequence[Row], now: datetime, actor: str) -> list[audit.Event]:
    return [
        audit.Event(
            referral_id,
            now,
            actor,
            "delivery_queued",
            {"delivery": row["id"], "kind": row["kind"], "team": row["team_id"]},
        )
        for row in rows
    ]


async def queue_outgoing(
    conn: AsyncConnection, sealed: Sealed, referral_id: str, outgoing: Sequence[Outgoing], now: datetime, actor: str
) -> list[audit.Event]:
    """Insert outbox rows; returns their `delivery_queued` events for the caller's batch."""
    rows = [outbox_row(out, referral_id, sealed, now) for out in outgoing]
    if rows:
        await conn.execute(deliveries.insert(), rows)
    return queued_events(referral_id, rows, now, actor)

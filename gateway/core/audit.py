"""Append-only, hash-chained events: every state change, with who and when.

Each event's hash covers the previous event's hash, so deleting or editing a row breaks the
chain, which `referral-gateway verify` detects. A staff event (sign-in, a factor change, a session
ended) has no referral (referral_id None) and sits in the same chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.schema import audit_head, events

GENESIS = "0" * 64


@dataclass(frozen=True)
class Event:
    referral_id: str | None  # None for a staff event
    at: datetime
    actor: str
    kind: str
    detail: Mapping[str, object] = field(default_factory=dict)  # never personal data


def event_hash(prev_hash: str, referral_id: str | None, at: datetime, actor: str, kind: str, detail: str) -> str:
    canonical = json.dumps(
        [prev_hash, referral_id, at.astimezone(UTC).isoformat(), actor, kind, detail],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append(conn: AsyncConnection, batch: Sequence[Event]) -> None:
    """Add events to the chain inside the caller's transaction."""
    if not batch:
        return
    # FOR UPDATE locks the head row on PostgreSQL so concurrent writers queue here instead of
    # forking the chain; on SQLite the BEGIN IMMEDIATE write lock already serialises us.
    head = (
        await conn.execute(
            select(audit_head.c.hash, audit_head.c.count.label("n")).where(audit_head.c.id == 1).with_for_update()
        )
    ).one()
    prev, count = head.hash, head.n
    rows = []
    for ev in batch:
        detail = json.dumps(ev.detail, sort_keys=True, separators=(",", ":"))
        digest = event_hash(prev, ev.referral_id, ev.at, ev.actor, ev.kind, detail)
        rows.append(
            {
                "referral_id": ev.referral_id,
                "at": ev.at,
                "actor": ev.actor,
                "kind": ev.kind,
                "detail": detail,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    await conn.execute(events.insert(), rows)
    await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=prev, count=count + len(rows)))


async def check_chain(conn: AsyncConnection) -> list[str]:
    """Problems with the chain, in words; empty when intact."""
    problems: list[str] = []
    prev = GENESIS
    seen = 0
    result = await conn.stream(select(events).order_by(events.c.id))
    async for row in result:
        seen += 1
        if row.prev_hash != prev:
            problems.append(f"event {row.id}: does not follow the event before it (a row was removed or reordered)")
        if event_hash(row.prev_hash, row.referral_id, row.at, row.actor, row.kind, row.detail) != row.hash:
            problems.append(f"event {row.id}: its content does not match its hash (the row was edited)")
        prev = row.hash
    head = (
        await conn.execute(select(audit_head.c.hash, audit_head.c.count.label("n")).where(audit_head.c.id == 1))
    ).one()
    if head.hash != prev or head.n != seen:
        problems.append(
            f"the chain head records {head.n} events ending {head.hash[:12]}…, "
            f"but the table holds {seen} ending {prev[:12]}… (events were removed)"
        )
    return problems

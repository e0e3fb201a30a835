"""Verify the invariants that "no referral silently disappears" rests on.

- every accepted message has a referral, and every referral has events;
- each referral's cached state is the one its events derive;
- each referral is tracked: something will move it on, or it is on the report;
- the audit chain is intact;
- a purged referral (gateway.report.retention) was closed, says so in a `purged` event, and holds
  no sealed content any more; a referral with a `purged` event is marked purged.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.core import audit, lifecycle
from gateway.core.db import snapshot
from gateway.core.lifecycle import State
from gateway.core.schema import deadlines, deliveries, events, messages, referrals


async def verify(engine: AsyncEngine, now: datetime) -> list[str]:
    problems: list[str] = []
    async with snapshot(engine) as conn:
        msgs = {
            m.id: m
            for m in (
                await conn.execute(
                    select(messages.c.id, messages.c.processed_at, func.length(messages.c.raw).label("raw_size"))
                )
            ).all()
        }
        refs = (await conn.execute(select(referrals))).all()
        kinds: dict[str, list[str]] = defaultdict(list)
        for ev in (await conn.execute(select(events.c.referral_id, events.c.kind).order_by(events.c.id))).all():
            if ev.referral_id is not None:  # staff events are checked with the chain below
                kinds[ev.referral_id].append(ev.kind)
        live_alerts: set[str] = set()
        for d in (await conn.execute(select(deliveries.c.referral_id, deliveries.c.kind, deliveries.c.state))).all():
            if d.kind in ("alert", "reminder") and d.state in ("pending", "sent"):
                live_alerts.add(d.referral_id)
        open_deadlines = {
            d.referral_id
            for d in (
                await conn.execute(
                    select(deadlines.c.referral_id).where(deadlines.c.kind == "ack", deadlines.c.cancelled_at.is_(None))
                )
            ).all()
        }
        problems += await audit.check_chain(conn)
    by_message = {r.message_id for r in refs}
    for message_id in msgs:
        if message_id not in by_message:
            problems.append(f"message {message_id}: accepted but has no referral")
    for r in refs:
        label = f"referral {r.reference}"
        if not kinds.get(r.id):
            problems.append(f"{label}: has no events")
            continue
        try:
            derived = lifecycle.derive(kinds[r.id])
        except lifecycle.IllegalTransition as exc:
            problems.append(f"{label}: its events break the lifecycle ({exc})")
            continue
        if derived.value != r.state:
            problems.append(f"{label}: state column says {r.state} but its events say {derived}")
        if r.message_id not in msgs:
            problems.append(f"{label}: its stored message {r.message_id} is missing")
        # Judge by the events: the column may have been damaged (reported just above).
        state = derived
        message = msgs.get(r.message_id)
        if state == State.RECEIVED and message is not None and message.processed_at is not None:
            problems.append(f"{label}: message processed but referral still 'received'")
        if state == State.ROUTED and r.id not in live_alerts:
            problems.append(f"{label}: routed but no alert is queued or sent")
        if state in (State.ROUTED, State.ALERTED) and r.id not in open_deadlines:
            problems.append(f"{label}: waiting for acknowledgement but has no deadline")
        if state == State.ACKNOWLEDGED and r.acknowledged_at is None:
            problems.append(f"{label}: acknowledged but records no one")
        raw_size = message.raw_size if message is not None else 0
        problems += _purge_problems(label, r.purged_at is not None, kinds[r.id], state, r.content, raw_size)
    return problems


def _purge_problems(
    label: str, purged: bool, kinds: list[str], state: State, content: bytes | None, raw_size: int | None
) -> list[str]:
    """A purged referral is whole in its own way: closed, recorded, and empty of content."""
    recorded = "purged" in kinds
    if not purged:
        return [f"{label}: has a 'purged' event but is not marked purged"] if recorded else []
    problems = []
    if not recorded:
        problems.append(f"{label}: its content was removed but no 'purged' event records it")
    # A repeat is closed when found; forwarded, duplicate and reply end a referral's time with us
    # as closing does (gateway.report.retention.ENDED).
    if state not in (State.CLOSED, State.REPEAT, State.FORWARDED, State.DUPLICATE, State.REPLY):
        problems.append(f"{label}: purged but {state}, not closed")
    if content is not None or raw_size:
        problems.append(f"{label}: marked purged but still holds sealed content")
    return problems

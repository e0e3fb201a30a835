"""Track: state changes through the lifecycle, acknowledgements and missed deadlines.

Every change goes through `transition`, which applies the pure state machine, writes the events
and refreshes the cached state in the caller's transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import audit, lifecycle
from gateway.clock import Clock
from gateway.compose import Composer, Outgoing
from gateway.config import Config, Team
from gateway.db import Database
from gateway.enqueue import queue_outgoing
from gateway.lifecycle import State
from gateway.model import Problem, Urgency
from gateway.protect import Protector
from gateway.schema import deadlines, deliveries, messages, referrals
from gateway.sealing import Sealer
from gateway.store import sealed_context

log = logging.getLogger(__name__)


async def transition(conn: AsyncConnection, referral_id: str, batch: Sequence[audit.Event], **values: Any) -> State:
    """Apply events to a referral (raises IllegalTransition, writing nothing, if one is not allowed)."""
    return (await transitions(conn, {referral_id: list(batch)}, {referral_id: values}))[referral_id]


async def transitions(
    conn: AsyncConnection,
    batch: dict[str, list[audit.Event]],
    values: dict[str, dict[str, Any]] | None = None,
) -> dict[str, State]:
    """Apply events to several referrals in the caller's transaction.

    Lock order matters on PostgreSQL: referral rows first, in id order, and the audit chain head
    last, once. Every writer follows it, so two transactions never wait on each other in a cycle.
    """
    ids = sorted(batch)
    rows = await conn.execute(
        select(referrals.c.id, referrals.c.state)
        .where(referrals.c.id.in_(ids))
        .order_by(referrals.c.id)
        .with_for_update()
    )
    states: dict[str, State] = {}
    for row in rows:
        state = State(row.state)
        for ev in batch[row.id]:
            state = lifecycle.apply(state, ev.kind)
        states[row.id] = state
    for referral_id in ids:
        extra = (values or {}).get(referral_id, {})
        await conn.execute(
            update(referrals).where(referrals.c.id == referral_id).values(state=states[referral_id].value, **extra)
        )
    await audit.append(conn, [ev for referral_id in ids for ev in batch[referral_id]])
    return states


@dataclass(frozen=True)
class AckResult:
    reference: str
    team_name: str
    by: str
    at: datetime
    already: bool  # True: someone had acknowledged it before; nothing was changed


class NotFound(Exception):
    pass


class Tracker:
    def __init__(
        self, config: Config, db: Database, sealer: Sealer, composer: Composer, clock: Clock, protector: Protector
    ) -> None:
        self._protector = protector
        self._config = config
        self._s = config.settings
        self._db = db
        self._sealer = sealer
        self._composer = composer
        self._clock = clock

    async def lookup(self, referral_id: str, recipient_hash: str) -> Any:
        """The referral an ack link points at, if that link's recipient was alerted about it."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(referrals).where(referrals.c.id == referral_id))).one_or_none()
            if row is None:
                raise NotFound(referral_id)
            alerted = (
                await conn.execute(
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.referral_id == referral_id,
                        deliveries.c.recipient_hash == recipient_hash,
                        deliveries.c.kind.in_(("alert", "reminder")),
                    )
                    .limit(1)
                )
            ).first()
            if alerted is None:
                raise NotFound(referral_id)
            return row

    async def acknowledge(self, referral_id: str, recipient_hash: str, by: str) -> AckResult:
        """Record that a named person acknowledged; stops the deadline and tells the referrer.
        Idempotent: a second acknowledgement changes nothing and says who was first."""
        now = self._clock.now()
        async with self._db.write() as conn:
            row = (await conn.execute(select(referrals).where(referrals.c.id == referral_id).with_for_update())).one()
            team = self._s.find_team(row.team_id) or Team(
                id=row.team_id, name=row.team_id, email="unknown@invalid.example", phone=""
            )  # a team renamed in config since routing: acknowledge all the same
            if row.acknowledged_at is not None:
                return AckResult(row.reference, team.name, row.acknowledged_by, row.acknowledged_at, True)
            events = [
                audit.Event(
                    referral_id,
                    now,
                    f"person:{by}",
                    "acknowledged",
                    {"team": team.id, "via": "email link", "recipient": recipient_hash[:12]},
                )
            ]
            await conn.execute(
                update(deadlines)
                .where(
                    deadlines.c.referral_id == referral_id,
                    deadlines.c.fired_at.is_(None),
                    deadlines.c.cancelled_at.is_(None),
                )
                .values(cancelled_at=now)
            )
            referrer = await self._referrer_address(conn, row)
            if referrer:
                notice = self._composer.ack_notice(
                    reference=row.reference, to=referrer, team=team, by=by, at=now, now=now
                )
                content = json.loads(self._sealer.open(row.content, sealed_context("content", referral_id)))
                notice = await self._protector.maybe_protect(content.get("reply_key"), notice)
                events += await queue_outgoing(conn, self._sealer, referral_id, [notice], now, "gateway")
            await transition(conn, referral_id, events, acknowledged_at=now, acknowledged_by=by)
        log.info("track: referral %s acknowledged (team %s)", row.reference, team.id)
        return AckResult(row.reference, team.name, by, now, False)

    async def _referrer_address(self, conn: AsyncConnection, row: Any) -> str | None:
        # The receipt went to the envelope sender; the acknowledgement notice follows it.
        receipt = (
            await conn.execute(
                select(deliveries.c.id).where(deliveries.c.referral_id == row.id, deliveries.c.kind == "receipt")
            )
        ).first()
        if receipt is None:
            return None
        sealed = (await conn.execute(select(messages.c.envelope).where(messages.c.id == row.message_id))).scalar_one()
        envelope = json.loads(self._sealer.open(sealed, sealed_context("envelope", row.message_id)))
        return envelope.get("mail_from") or None

    async def fire_due(self) -> int:
        """Mark missed deadlines: an `overdue` event and a reminder alert to the team.
        The referral stays on the report until acknowledged (escalation rotas come later)."""
        now = self._clock.now()
        fired = 0
        earliest = await self.next_due()
        if earliest is None or earliest > now:
            return 0  # a read, not a write transaction, on every wake-up with nothing due
        async with self._db.write() as conn:
            due = (
                await conn.execute(
                    select(
                        deadlines.c.id,
                        deadlines.c.due_at,
                        referrals.c.id.label("referral_id"),
                        referrals.c.reference,
                        referrals.c.state,
                        referrals.c.team_id,
                        referrals.c.route_name,
                        referrals.c.urgency,
                        referrals.c.received_at,
                        referrals.c.content,
                    )
                    .join(referrals, referrals.c.id == deadlines.c.referral_id)
                    .where(
                        deadlines.c.fired_at.is_(None),
                        deadlines.c.cancelled_at.is_(None),
                        deadlines.c.due_at <= now,
                    )
                    .order_by(deadlines.c.due_at)
                    .limit(100)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            events: list[audit.Event] = []
            for row in due:
                await conn.execute(
                    update(deadlines)
                    .where(deadlines.c.id == row.id, deadlines.c.fired_at.is_(None))
                    .values(fired_at=now)
                )
                detail = {"due_at": row.due_at.isoformat(), "state": row.state}
                team = self._s.find_team(row.team_id) if row.team_id else None
                if row.team_id and team is None:
                    # The team was renamed or removed from config since routing: the referral stays
                    # on the report (it is overdue), and nobody is reminded by a name that is gone.
                    detail["reminder"] = f"team '{row.team_id}' is no longer in the config"
                events.append(audit.Event(row.referral_id, now, "gateway", "overdue", detail))
                if team is not None and row.state in (State.ROUTED, State.ALERTED):
                    events += await queue_outgoing(
                        conn, self._sealer, row.referral_id, [self._reminder(row, team, now)], now, "gateway"
                    )
                log.warning("track: referral %s not acknowledged by its deadline", row.reference)
                fired += 1
            await audit.append(conn, events)  # once, last: the chain head is locked after the rows
        return fired

    def _reminder(self, row: Any, team: Team, now: datetime) -> Outgoing:
        content = json.loads(self._sealer.open(row.content, sealed_context("content", row.referral_id)))
        problems = tuple(Problem(**p) for p in content.get("problems") or ())
        return self._composer.alert(
            kind="reminder",
            referral_id=row.referral_id,
            reference=row.reference,
            team=team,
            route_name=row.route_name,
            urgency=Urgency(row.urgency) if row.urgency else None,
            problems=problems,
            received_at=row.received_at,
            due_at=row.due_at,
            now=now,
        )

    async def next_due(self) -> datetime | None:
        async with self._db.read() as conn:
            return (
                await conn.execute(
                    select(deadlines.c.due_at)
                    .where(and_(deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None)))
                    .order_by(deadlines.c.due_at)
                    .limit(1)
                )
            ).scalar_one_or_none()

"""Track: state changes through the lifecycle, acknowledgements and missed deadlines.

Every change goes through `transition`, which applies the pure state machine, writes the events
and refreshes the cached state in the caller's transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Config
from gateway.config.duty import Team
from gateway.core import audit, lifecycle
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.model import Problem, Urgency
from gateway.core.outcomes import describe
from gateway.core.schema import deadlines, deliveries, messages, referrals
from gateway.core.sealing import Sealer, sealed_context
from gateway.outbox.alerting import Alerter
from gateway.outbox.compose import Composer, Outgoing
from gateway.outbox.dispatch import Dispatcher
from gateway.outbox.enqueue import queue_outgoing
from gateway.outbox.protect import Protector

log = logging.getLogger(__name__)

_RETRY = timedelta(minutes=5)  # a deadline row that failed to fire is tried again after this


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


ALERT_KINDS = ("alert", "reminder")


async def mark_alert_dead(
    conn: AsyncConnection, row: Any, now: datetime, actor: str, reason: str, events: list[audit.Event]
) -> None:
    """An alert (email or SMS) failed for good: the chain's next step is due now, and if no other
    alert for the referral is still on its way, the referral is undeliverable (on the report)."""
    await hasten_next_step(conn, row.referral_id, now)
    other = (
        await conn.execute(
            select(deliveries.c.id)
            .where(
                deliveries.c.referral_id == row.referral_id,
                deliveries.c.id != row.id,
                deliveries.c.kind.in_(ALERT_KINDS),
                deliveries.c.state.in_(("pending", "sent")),
            )
            .limit(1)
        )
    ).first()
    if other is None:
        events.append(
            audit.Event(row.referral_id, now, actor, "undeliverable", {"team": row.team_id, "reason": reason})
        )


async def hasten_next_step(conn: AsyncConnection, referral_id: str, now: datetime) -> None:
    """An alert failed for good: its recipient will not see it, so the chain's next step is due
    now rather than after a wait nobody can end."""
    await conn.execute(
        update(deadlines)
        .where(
            deadlines.c.referral_id == referral_id,
            deadlines.c.kind == "step",
            deadlines.c.fired_at.is_(None),
            deadlines.c.cancelled_at.is_(None),
            deadlines.c.due_at > now,
        )
        .values(due_at=now)
    )


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
        self._dispatcher = Dispatcher(config.settings, Alerter(composer, protector))

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

    async def alert_sent_to(self, recipient_hash: str, reference: str | None) -> tuple[str, str]:
        """(referral id, reference) of the latest alert sent to a recipient, for that reference if
        given; NotFound if none was: an acknowledgement is accepted only from someone alerted."""
        query = (
            select(referrals.c.id, referrals.c.reference)
            .join(deliveries, deliveries.c.referral_id == referrals.c.id)
            .where(
                deliveries.c.recipient_hash == recipient_hash,
                deliveries.c.kind.in_(ALERT_KINDS),
                deliveries.c.state == "sent",  # a pending or dead alert never reached the phone
            )
            .order_by(deliveries.c.created_at.desc(), deliveries.c.id)
            .limit(1)
        )
        if reference is not None:
            query = query.where(referrals.c.reference == reference)
        async with self._db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(reference or "latest")
        return str(row.id), str(row.reference)

    async def acknowledge(self, referral_id: str, recipient_hash: str, by: str, via: str = "email link") -> AckResult:
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
                    {"team": team.id, "via": via, "recipient": recipient_hash[:12]},
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
            # Everyone already alerted stands down: told who has it, on the channel they were alerted on.
            told = await self._alerted(conn, referral_id, exclude=recipient_hash)
            notices = [
                self._composer.acknowledged_by(reference=row.reference, to=to, team=team, by=by, at=now, now=now)
                if channel == "email"
                else self._composer.sms(
                    "ack_told",
                    "ack_told",
                    to=to,
                    referral_id=None,
                    context={"reference": row.reference, "team": team, "by": by, "now": now},
                )
                for channel, to in told
            ]
            events += await queue_outgoing(conn, self._sealer, referral_id, notices, now, "gateway")
            context = {"reference": row.reference, "team": team, "by": by, "at": now, "now": now}
            events += await self.tell_referrer(conn, row, "ack_notice", context, now, "gateway")
            await transition(conn, referral_id, events, acknowledged_at=now, acknowledged_by=by)
        log.info("track: referral %s acknowledged (team %s)", row.reference, team.id)
        return AckResult(row.reference, team.name, by, now, False)

    async def _alerted(self, conn: AsyncConnection, referral_id: str, exclude: str) -> list[tuple[str, str]]:
        """(channel, address) of everyone alerted about a referral, each once, but the person
        `exclude` (the acknowledger's link) belongs to, on any of their addresses."""
        rows = await conn.execute(
            select(deliveries.c.id, deliveries.c.channel, deliveries.c.payload, deliveries.c.recipient_hash).where(
                deliveries.c.referral_id == referral_id, deliveries.c.kind.in_(("alert", "reminder"))
            )
        )
        seen: dict[tuple[str, str], None] = {}
        theirs: set[str] = set()
        for delivery in rows:
            payload = json.loads(self._sealer.open(delivery.payload, sealed_context("delivery", delivery.id)))
            if delivery.recipient_hash == exclude:
                theirs |= self._addresses_of(payload["to"])
            seen[(delivery.channel, payload["to"])] = None
        return [(channel, to) for channel, to in seen if to not in theirs]

    def _addresses_of(self, address: str) -> set[str]:
        """Every address of the person an address belongs to: whoever acknowledged from a text is
        not emailed about their own acknowledgement, nor texted when they used the email link."""
        someone = self._s.person_at(address)
        return {a for a in (someone.email, someone.mobile) if a} if someone else {address}

    async def tell_referrer(
        self, conn: AsyncConnection, row: Any, kind: str, context: dict[str, Any], now: datetime, actor: str
    ) -> list[audit.Event]:
        """Queue a notice to the referrer (ack_notice, outcome_notice) in the caller's transaction,
        on the channel their receipt went by; by email, encrypted to their own key when it is known.
        Nothing if there is nobody to tell (a null sender, automatic mail)."""
        channel, to = await self._referrer_address(conn, row)
        if not to:
            return []
        notice = self._composer.referrer_notice(kind, channel, to, context)
        if channel == "email" and row.content is not None:
            content = json.loads(self._sealer.open(row.content, sealed_context("content", row.id)))
            notice = await self._protector.maybe_protect(content.get("reply_key"), notice)
        return await queue_outgoing(conn, self._sealer, row.id, [notice], now, actor)

    async def _referrer_address(self, conn: AsyncConnection, row: Any) -> tuple[str, str | None]:
        """(channel, address) to tell the referrer on: the number an SMS referral came from, or
        the envelope sender an email referral's receipt went to (the notice follows it)."""
        message = (
            await conn.execute(select(messages.c.channel, messages.c.envelope).where(messages.c.id == row.message_id))
        ).one_or_none()
        if message is not None and message.channel == "sms":
            envelope = json.loads(self._sealer.open(message.envelope, sealed_context("envelope", row.message_id)))
            return "sms", envelope.get("from") or None
        receipt = (
            await conn.execute(
                select(deliveries.c.id).where(deliveries.c.referral_id == row.id, deliveries.c.kind == "receipt")
            )
        ).first()
        if receipt is None or message is None:
            return "email", None
        envelope = json.loads(self._sealer.open(message.envelope, sealed_context("envelope", row.message_id)))
        return "email", envelope.get("mail_from") or envelope.get("referrer_email") or None

    async def fire_due(self) -> int:
        """Fire what has fallen due: a missed acknowledgement deadline (an `overdue` event; the
        referral is late on the report) and escalation steps (alerts to the step's targets, and
        the next step's row). Each row fires once: its `fired_at` is set in the transaction that
        writes what it caused, guarded so that a row acknowledged or fired meanwhile is left."""
        now = self._clock.now()
        earliest = await self.next_due()
        if earliest is None or earliest > now:
            return 0  # a read, not a write transaction, on every wake-up with nothing due
        async with self._db.read() as conn:
            due = (
                await conn.execute(
                    select(
                        deadlines.c.id,
                        deadlines.c.kind,
                        deadlines.c.due_at,
                        deadlines.c.chain,
                        deadlines.c.step,
                        deadlines.c.round,
                        referrals.c.id.label("referral_id"),
                        referrals.c.reference,
                        referrals.c.state,
                        referrals.c.team_id,
                        referrals.c.route_name,
                        referrals.c.urgency,
                        referrals.c.received_at,
                        referrals.c.due_at.label("ack_due_at"),
                        referrals.c.content,
                    )
                    .join(referrals, referrals.c.id == deadlines.c.referral_id)
                    .where(
                        deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None), deadlines.c.due_at <= now
                    )
                    .order_by(deadlines.c.due_at)
                    .limit(100)
                )
            ).all()
        fired = 0
        for row in due:
            # Prepared outside the write transaction (composing and encrypting take time), then
            # written only if the row is still unfired and not cancelled by an acknowledgement.
            try:
                events, outgoing, detail, next_row = await self._prepare_due(row, now)
            except Exception as exc:  # noqa: BLE001
                # One row that cannot be prepared (unreadable content, a broken template) must not
                # stop every other escalation behind it: record why, and try this step again later.
                # The referral stays late on the report meanwhile.
                why = describe(exc)
                log.error("track: escalation for referral %s failed (%s); retrying in %s", row.reference, why, _RETRY)
                detail = {"failed": why}
                events = [audit.Event(row.referral_id, now, "gateway", "escalation_step", {**detail, "retry": True})]
                outgoing = []
                next_row = {"kind": row.kind, "chain": row.chain, "step": row.step, "round": row.round}
                next_row["due_at"] = now + _RETRY
            async with self._db.write() as conn:
                # The referral row first, as every writer takes it (see `transitions`): otherwise an
                # acknowledgement holding it and waiting for this deadline row deadlocks with our
                # insert of the next step, whose foreign key needs a lock on the referral row.
                await conn.execute(select(referrals.c.id).where(referrals.c.id == row.referral_id).with_for_update())
                done = await conn.execute(
                    update(deadlines)
                    .where(deadlines.c.id == row.id, deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None))
                    .values(fired_at=now, detail=json.dumps(detail) if detail is not None else None)
                )
                if done.rowcount != 1:
                    continue  # acknowledged, or fired by another instance, since we read it
                if next_row is not None:
                    await conn.execute(deadlines.insert(), [{"referral_id": row.referral_id, **next_row}])
                events += await queue_outgoing(conn, self._sealer, row.referral_id, outgoing, now, "gateway")
                await audit.append(conn, events)
            fired += 1
        return fired

    async def _prepare_due(
        self, row: Any, now: datetime
    ) -> tuple[list[audit.Event], list[Outgoing], Any, dict[str, Any] | None]:
        team = self._s.find_team(row.team_id) if row.team_id else None
        if row.kind == "ack":
            log.warning("track: referral %s not acknowledged by its deadline", row.reference)
            detail = {"due_at": row.due_at.isoformat(), "state": row.state}
            return [audit.Event(row.referral_id, now, "gateway", "overdue", detail)], [], None, None
        if team is None or row.state not in (State.ROUTED, State.ALERTED, State.UNDELIVERABLE):
            # The team was renamed or removed from config since routing: the referral stays on
            # the report (it is late), and nobody is alerted by a name that is gone.
            why = f"team '{row.team_id}' is no longer in the config" if team is None else f"state {row.state}"
            event = audit.Event(row.referral_id, now, "gateway", "escalation_step", {"stopped": why})
            return [event], [], {"stopped": why}, None
        content = json.loads(self._sealer.open(row.content, sealed_context("content", row.referral_id)))
        dispatched = await self._dispatcher.step(
            referral_id=row.referral_id,
            reference=row.reference,
            team=team,
            route_name=row.route_name,
            urgency=Urgency(row.urgency) if row.urgency else None,
            problems=tuple(Problem(**p) for p in content.get("problems") or ()),
            received_at=row.received_at,
            due_at=row.ack_due_at or row.due_at,
            chain_id=row.chain,
            position=(row.step or 0, row.round or 0),
            now=now,
        )
        events = [audit.Event(row.referral_id, now, "gateway", kind, detail) for kind, detail in dispatched.events]
        log.warning("track: referral %s escalated (steps %s)", row.reference, [f["step"] for f in dispatched.fired])
        return events, dispatched.outgoing, dispatched.fired, dispatched.next_step

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

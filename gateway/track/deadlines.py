"""Deadlines: fire what has fallen due, once. A missed acknowledgement deadline is an `overdue`
event (the referral is late on the report) and, the first time, a follow-up to the referrer
(gateway.track.follow_up); an escalation step sends its alerts and writes the next step's row; a
hand-over (gateway.route.handover) alerts the out-of-hours team at office close and brings the
acknowledgement deadline forward to theirs. One loop (gateway.app) wakes for the earliest due row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.config.duty import Team
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.metrics import Counters
from gateway.core.model import Urgency
from gateway.core.outcomes import describe
from gateway.core.schema import deadlines, referrals
from gateway.core.sealed import Sealed
from gateway.core.transitions import cancel_deadlines, steps_forward
from gateway.outbox.compose import AlertFacts, Outgoing
from gateway.outbox.dispatch import Detail, Dispatcher
from gateway.outbox.enqueue import queue_outgoing
from gateway.route import handover
from gateway.track.follow_up import follow_up
from gateway.track.referrer import Referrers

log = logging.getLogger(__name__)

_RETRY = timedelta(minutes=5)  # a deadline row that failed to fire is tried again after this


@dataclass(frozen=True)
class Due:
    """A deadline row that has fallen due, with what firing it needs from its referral."""

    id: int
    kind: str  # ack | step | handover
    due_at: datetime
    chain: str | None
    step: int | None
    round: int | None
    referral_id: str
    reference: str
    state: str
    team_id: str | None
    route_name: str | None
    urgency: str | None
    received_at: datetime
    ack_due_at: datetime | None
    content: bytes | None


@dataclass
class Firing:
    """What firing one row writes, prepared before the write transaction."""

    events: list[audit.Event] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    detail: list[Detail] | Detail | None = None  # kept on the row: what it did, or why it did not
    next_row: dict[str, object] | None = None  # the deadlines row to write next (the next step, or a retry)
    new_due: datetime | None = None  # a hand-over: the acknowledgement deadline moves (earlier) to this


class Deadlines:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        sealed: Sealed,
        clock: Clock,
        dispatcher: Dispatcher,
        counters: Counters | None = None,
        referrers: Referrers | None = None,
    ) -> None:
        self._referrers = referrers  # None: nobody is told of a missed deadline (no follow-up)
        self._counters = counters or Counters()  # a gateway passes its own, served on /metrics
        self._s = settings
        self._db = db
        self._sealed = sealed
        self._clock = clock
        self._dispatcher = dispatcher

    async def fire_due(self) -> int:
        """Fire what has fallen due. Each row fires once: its `fired_at` is set in the transaction
        that writes what it caused, guarded so that a row acknowledged or fired meanwhile is left."""
        now = self._clock.now()
        earliest = await self.next_due()
        if earliest is None or earliest > now:
            return 0  # a read, not a write transaction, on every wake-up with nothing due
        fired = 0
        for row in await self._due(now):
            # Prepared outside the write transaction (composing and encrypting take time), then
            # written only if the row is still unfired and not cancelled by an acknowledgement.
            try:
                firing = await self._prepare(row, now)
            except Exception as exc:  # noqa: BLE001
                # One row that cannot be prepared (unreadable content, a broken template) must not
                # stop every other escalation behind it: record why, and try this step again later.
                # The referral stays late on the report meanwhile.
                why = describe(exc)
                log.error("track: escalation for referral %s failed (%s); retrying in %s", row.reference, why, _RETRY)
                detail: Detail = {"failed": why}
                event = audit.Event(row.referral_id, now, "gateway", "escalation_step", {**detail, "retry": True})
                again = {"referral_id": row.referral_id, "kind": row.kind, "due_at": now + _RETRY}
                again |= {"chain": row.chain, "step": row.step, "round": row.round}
                firing = Firing([event], [], detail, again)
            if await self._write(row, firing, now):
                fired += 1
                if row.kind != "ack" and isinstance(firing.detail, list) and firing.detail:
                    # Counted once written: a step prepared but beaten to it by an ack is not.
                    self._counters.escalations_fired.labels(team=row.team_id or "").inc()
        return fired

    async def _due(self, now: datetime) -> list[Due]:
        async with self._db.read() as conn:
            rows = (
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
        return [Due(**row._mapping) for row in rows]

    async def _write(self, row: Due, firing: Firing, now: datetime) -> bool:
        async with self._db.write() as conn:
            # The referral row first, as every writer takes it (see core.transitions): otherwise an
            # acknowledgement holding it and waiting for this deadline row deadlocks with our
            # insert of the next step, whose foreign key needs a lock on the referral row.
            await conn.execute(select(referrals.c.id).where(referrals.c.id == row.referral_id).with_for_update())
            detail = json.dumps(firing.detail) if firing.detail is not None else None
            done = await conn.execute(
                update(deadlines)
                .where(deadlines.c.id == row.id, deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None))
                .values(fired_at=now, detail=detail)
            )
            if done.rowcount != 1:
                return False  # acknowledged, or fired by another instance, since we read it
            if firing.next_row is not None:
                await conn.execute(deadlines.insert(), [firing.next_row])
            if firing.new_due is not None:
                await self._move_deadline(conn, row.referral_id, firing.new_due, now)
            events = firing.events
            if row.kind == "ack" and self._referrers is not None:
                events += await follow_up(conn, self._s, self._referrers, row.referral_id, now)
            events += await queue_outgoing(conn, self._sealed, row.referral_id, firing.outgoing, now, "gateway")
            await audit.append(conn, events)
        return True

    async def _prepare(self, row: Due, now: datetime) -> Firing:
        team = self._s.find_team(row.team_id) if row.team_id else None
        if row.kind == "ack":
            log.warning("track: referral %s not acknowledged by its deadline", row.reference)
            detail = {"due_at": row.due_at.isoformat(), "state": row.state}
            return Firing([audit.Event(row.referral_id, now, "gateway", "overdue", detail)])
        if row.kind == "handover":
            return await self._hand_over(row, team, now)
        if team is None or row.state not in (State.ROUTED, State.ALERTED, State.UNDELIVERABLE):
            # The team was renamed or removed from config since routing: the referral stays on
            # the report (it is late), and nobody is alerted by a name that is gone.
            why = f"team '{row.team_id}' is no longer in the config" if team is None else f"state {row.state}"
            event = audit.Event(row.referral_id, now, "gateway", "escalation_step", {"stopped": why})
            return Firing([event], [], {"stopped": why})
        assert row.content is not None  # routed: processing sealed the content with the route
        content = self._sealed.content(row.referral_id, row.content)
        dispatched = await self._dispatcher.step(
            referral_id=row.referral_id,
            reference=row.reference,
            team=team,
            route_name=row.route_name or "",
            urgency=Urgency(row.urgency) if row.urgency else None,
            problems=content.referral.problems,
            received_at=row.received_at,
            due_at=row.ack_due_at or row.due_at,
            chain_id=row.chain,
            position=(row.step or 0, row.round or 0),
            now=now,
        )
        events = [audit.Event(row.referral_id, now, "gateway", kind, detail) for kind, detail in dispatched.events]
        log.warning("track: referral %s escalated (steps %s)", row.reference, [f["step"] for f in dispatched.fired])
        following = dispatched.next_step.row(row.referral_id) if dispatched.next_step else None
        return Firing(events, dispatched.outgoing, dispatched.fired, following)

    async def _hand_over(self, row: Due, team: Team | None, now: datetime) -> Firing:
        ooh = handover.out_of_hours_team(self._s, row.route_name)
        if team is None or ooh is None or row.state not in (State.ROUTED, State.ALERTED, State.UNDELIVERABLE):
            # Config changed since routing (no team, or no out-of-hours team on the route now): the
            # referral stays with its team and its deadline, on the report when late.
            why = f"team '{row.team_id}' is no longer in the config" if team is None else "no out-of-hours team"
            why = why if row.state in (State.ROUTED, State.ALERTED, State.UNDELIVERABLE) else f"state {row.state}"
            event = audit.Event(row.referral_id, now, "gateway", "handed_over", {"stopped": why})
            return Firing([event], [], {"stopped": why})
        alert = AlertFacts(
            row.referral_id,
            row.reference,
            team,
            row.route_name or "",
            Urgency(row.urgency) if row.urgency else None,
            (),
            row.received_at,
            row.ack_due_at or now,
            now,
        )
        out, due = await self._dispatcher.hand_over(alert=alert, out_of_hours=ooh, urgency=alert.urgency)
        events = [audit.Event(row.referral_id, now, "gateway", kind, detail) for kind, detail in out.events]
        log.warning("track: referral %s handed to team %s at office close", row.reference, ooh.id)
        moved = due if row.ack_due_at is None or due < row.ack_due_at else None
        return Firing(events, out.outgoing, out.events[0][1], None, moved)

    async def _move_deadline(self, conn: AsyncConnection, referral_id: str, due: datetime, now: datetime) -> None:
        """The acknowledgement deadline comes forward: the unfired ack row is replaced by one at
        `due` (a deadline already missed stays missed, and is not moved), and escalation steps due
        after it come forward to it: a step that waits for the deadline, or for working time in an
        office now closed, would otherwise leave a referral the out-of-hours team missed unchased
        until the office reopens."""
        await steps_forward(conn, referral_id, due)
        if await cancel_deadlines(conn, referral_id, now, kind="ack"):
            row = {"referral_id": referral_id, "kind": "ack", "due_at": due, "chain": None, "step": None, "round": None}
            await conn.execute(deadlines.insert(), [row])
            # A column that mirrors the deadline (the report, the dashboard), not a state: no transition.
            await conn.execute(update(referrals).where(referrals.c.id == referral_id).values(due_at=due))

    async def next_due(self) -> datetime | None:
        async with self._db.read() as conn:
            due: datetime | None = (
                await conn.execute(
                    select(deadlines.c.due_at)
                    .where(and_(deadlines.c.fired_at.is_(None), deadlines.c.cancelled_at.is_(None)))
                    .order_by(deadlines.c.due_at)
                    .limit(1)
                )
            ).scalar_one_or_none()
        return due

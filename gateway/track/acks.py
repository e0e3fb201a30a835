"""Acknowledgements: who may acknowledge a referral (someone it was alerted to), and what an
acknowledgement does: it stops every deadline and unfired escalation step, tells everyone already
alerted who has it, tells the referrer, and moves the referral to `acknowledged`, all in one
transaction. A second acknowledgement changes nothing and says who was first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Config
from gateway.config.duty import Team
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.records import ReferralRecord, find_referral
from gateway.core.schema import ALERT_KINDS, deliveries, events, referrals
from gateway.core.sealed import Sealed
from gateway.core.transitions import cancel_deadlines, transition
from gateway.outbox.compose import Composer
from gateway.outbox.enqueue import queue_outgoing
from gateway.track.referrer import Referrers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AckResult:
    reference: str
    team_name: str
    by: str
    at: datetime
    already: bool  # True: someone had acknowledged it before; nothing was changed


class NotFound(Exception):
    pass


def since_rerouted(referral_id: ColumnElement[str] | str) -> ColumnElement[bool]:
    """An alert sent since the referral's latest re-route, if it had one: after "not ours, another
    team" (gateway.track.answers) the first team's links and texts no longer acknowledge it. (Not
    "an alert of the referral's team": a hand-over's alerts are the out-of-hours team's.)"""
    rerouted = (
        select(func.max(events.c.at))
        .where(events.c.referral_id == referral_id, events.c.kind == "rerouted")
        .scalar_subquery()
    )
    return or_(rerouted.is_(None), deliveries.c.created_at >= rerouted)


class Tracker:
    def __init__(
        self, config: Config, db: Database, sealed: Sealed, composer: Composer, clock: Clock, referrers: Referrers
    ) -> None:
        self._s = config.settings
        self._db = db
        self._sealed = sealed
        self._composer = composer
        self._clock = clock
        self.referrers = referrers

    async def lookup(self, referral_id: str, recipient_hash: str) -> ReferralRecord:
        """The referral an ack link points at, if that link's recipient was alerted about it."""
        async with self._db.read() as conn:
            row = await find_referral(conn, referral_id)
            if row is None:
                raise NotFound(referral_id)
            alerted = (
                await conn.execute(
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.referral_id == referral_id,
                        deliveries.c.recipient_hash == recipient_hash,
                        deliveries.c.kind.in_(ALERT_KINDS),
                        since_rerouted(referral_id),
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
                since_rerouted(deliveries.c.referral_id),
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
            row = await find_referral(conn, referral_id, lock=True)
            if row is None:
                raise NotFound(referral_id)
            team = self._s.find_team(row.team_id or "") or Team(
                id=row.team_id or "unknown", name=row.team_id or "unknown", email="unknown@invalid.example", phone=""
            )  # a team renamed in config since routing: acknowledge all the same
            if row.acknowledged_at is not None:
                return AckResult(row.reference, team.name, row.acknowledged_by or "", row.acknowledged_at, True)
            events = [
                audit.Event(
                    referral_id,
                    now,
                    f"person:{by}",
                    "acknowledged",
                    {"team": team.id, "via": via, "recipient": recipient_hash[:12]},
                )
            ]
            await cancel_deadlines(conn, referral_id, now)
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
                    now=now,
                    context={"reference": row.reference, "team": team, "by": by},
                )
                for channel, to in told
            ]
            events += await queue_outgoing(conn, self._sealed, referral_id, notices, now, "gateway")
            context = {"team": team, "by": by, "at": now}
            events += await self.referrers.tell(conn, row, "ack_notice", context, now, "gateway")
            await transition(conn, referral_id, events, acknowledged_at=now, acknowledged_by=by)
        log.info("track: referral %s acknowledged (team %s)", row.reference, team.id)
        return AckResult(row.reference, team.name, by, now, False)

    async def _alerted(self, conn: AsyncConnection, referral_id: str, exclude: str) -> list[tuple[str, str]]:
        """(channel, address) of everyone alerted about a referral, each once, but the person
        `exclude` (the acknowledger's link) belongs to, on any of their addresses."""
        rows = await conn.execute(
            select(deliveries.c.id, deliveries.c.channel, deliveries.c.payload, deliveries.c.recipient_hash).where(
                deliveries.c.referral_id == referral_id, deliveries.c.kind.in_(ALERT_KINDS)
            )
        )
        seen: dict[tuple[str, str], None] = {}
        theirs: set[str] = set()
        for delivery in rows:
            to = self._sealed.payload(delivery.id, delivery.payload).to
            if delivery.recipient_hash == exclude:
                theirs |= self._addresses_of(to)
            seen[(delivery.channel, to)] = None
        return [(channel, to) for channel, to in seen if to not in theirs]

    def _addresses_of(self, address: str) -> set[str]:
        """Every address of the person an address belongs to: whoever acknowledged from a text is
        not emailed about their own acknowledgement, nor texted when they used the email link."""
        someone = self._s.person_at(address)
        return {a for a in (someone.email, someone.mobile) if a} if someone else {address}

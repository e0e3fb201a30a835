"""Retention: the sealed content of referrals closed long ago is removed; what happened stays.

A referral closed more than `[retention] closed_after` ago (default 90 days; closed = its `closed`
event, or for a repeat of an earlier referral its `repeat` event) loses everything sealed that
belongs to it: its content, its raw message and envelope (b"": the columns are NOT NULL, see
migration 0007), its deliveries' payloads, its decisions' notes, the Twilio webhooks about it and
its rows in the child index (gateway.history.index: so nothing links the purged child).
Kept: the referral row's metadata (reference, team, urgency, times, state), every event and the
audit chain. A `purged` event says what went, with no personal data, and `referrals.purged_at`
says when.

Never purged, because a person may still need the content:
- a referral in any state but closed or repeat (open, or quarantined: quarantine is never closed);
- an undecided one: a delivery of it is dead and no coordinator has recorded a decision
  (it is still on the report, gateway.report.undelivered), or a delivery is still pending;
- one under a legal hold (gateway.report.holds).

Each batch is one write transaction (the referral rows are locked first, as every writer does),
so a purge stopped half-way leaves whole referrals purged or untouched; the next run carries on
from the referrals not yet purged, and a second run over the same data changes nothing.

Removed means gone from the disk, not only from the rows: SQLite leaves the old bytes of an
updated row in the page's free space (proved here: the sealed blob was still in the file), so a
purge turns on `secure_delete` (freed space is zeroed) and then truncates the write-ahead log, which
still holds the pages as they were. PostgreSQL keeps old row versions until VACUUM reclaims them
(autovacuum does, later): the README's retention section says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core import audit
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.schema import (
    additional_info,
    answers,
    decisions,
    deliveries,
    events,
    messages,
    referrals,
    sms_webhooks,
)
from gateway.core.transitions import lock, transitions
from gateway.history import index as child_index
from gateway.report.decisions import covered, referral_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """A referral that the policy says may go, and what of it would be removed."""

    id: str
    reference: str
    message_id: str
    closed_at: datetime
    message: bool  # its raw message and envelope are still stored
    content: bool  # its sealed content is still stored
    deliveries: int  # deliveries with a payload
    notes: int  # decisions with a note
    webhooks: int  # Twilio webhooks about it (their forms and replies)

    def removes(self) -> list[str]:
        """What would be removed, in words (no personal data: these are counts)."""
        parts = ["the referral's content"] if self.content else []
        parts += ["the message as received and its envelope"] if self.message else []
        parts += [f"{self.deliveries} outbound message(s)"] if self.deliveries else []
        parts += [f"{self.notes} decision note(s)"] if self.notes else []
        parts += [f"{self.webhooks} SMS webhook(s)"] if self.webhooks else []
        return parts or ["nothing sealed is left (metadata only)"]

    def detail(self, closed_after: timedelta) -> dict[str, object]:
        """The `purged` event's detail: counts and times only."""
        return {
            "closed_at": self.closed_at.isoformat(),
            "closed_after": as_written(closed_after),
            "content": self.content,
            "message": self.message,
            "deliveries": self.deliveries,
            "decision_notes": self.notes,
            "sms_webhooks": self.webhooks,
        }


def as_written(delta: timedelta) -> str:
    """A period as the config writes it, in the largest whole unit: "90d", "36h"."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def period_in_words(written: str) -> str:
    """A period as a `purged` event recorded it ("90d") in words ("90 days")."""
    units = {"d": "day", "h": "hour", "m": "minute", "s": "second"}
    number, unit = written[:-1], units.get(written[-1:], "")
    if not number.isdigit() or not unit:
        return written
    return f"{number} {unit}{'' if number == '1' else 's'}"


def _webhooks_of(reference: str, provider_ids: Sequence[str]) -> ColumnElement[bool]:
    """The Twilio webhooks about one referral: status callbacks of its SMS (by their SID) and
    inbound texts whose recorded outcome names its reference (the SMS referral itself, an ACK)."""
    return or_(
        and_(sms_webhooks.c.kind == "status", sms_webhooks.c.message_sid.in_(list(provider_ids))),
        and_(sms_webhooks.c.kind == "inbound", sms_webhooks.c.outcome.contains(reference, autoescape=True)),
    )


# The states a referral's time with us ends in, and the events that end it: closed; a repeat; and
# the structured answers' ends (forwarded to a neighbour, a duplicate, a reply threaded onto
# another referral, whose content that referral keeps as additional information).
ENDED = (State.CLOSED, State.REPEAT, State.FORWARDED, State.DUPLICATE, State.REPLY)
ENDING_EVENTS = ("closed", "repeat", "forwarded", "duplicate", "reply")


async def due(conn: AsyncConnection, settings: Settings, now: datetime, limit: int | None = None) -> list[Candidate]:
    """The referrals the policy lets go now, oldest closure first, with what each still holds."""
    # A repeat (gateway.pipeline.repeats) is closed the moment it is found to be one: its raw
    # message is a copy of content its earlier referral keeps, so it goes on the same clock.
    closed = (
        select(events.c.referral_id, func.max(events.c.at).label("closed_at"))
        .where(events.c.kind.in_(ENDING_EVENTS))
        .group_by(events.c.referral_id)
        .subquery()
    )
    in_flight = select(deliveries.c.referral_id).where(
        deliveries.c.state == "pending", deliveries.c.referral_id.is_not(None)
    )
    query = (
        select(referrals.c.id, referrals.c.reference, referrals.c.message_id, closed.c.closed_at)
        .join(closed, closed.c.referral_id == referrals.c.id)
        .where(
            referrals.c.state.in_([state.value for state in ENDED]),
            referrals.c.legal_hold.is_(False),
            referrals.c.purged_at.is_(None),
            closed.c.closed_at <= now - settings.retention.closed_after,
            referrals.c.id.not_in(in_flight),
        )
        .order_by(closed.c.closed_at, referrals.c.id)
    )
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    dead = {
        d.referral_id
        for d in await conn.execute(
            select(deliveries.c.referral_id).where(deliveries.c.state == "dead", deliveries.c.referral_id.in_(ids))
        )
    }
    decided = await covered(conn, sorted(dead)) if dead else set()
    # A dead delivery nobody has decided on keeps the referral on the report: it stays whole.
    rows = [r for r in rows if r.id not in dead or referral_key(r.id) in decided]
    if limit is not None:
        rows = rows[:limit]
    return [await _holding(conn, r.id, r.reference, r.message_id, r.closed_at) for r in rows]


async def _holding(conn: AsyncConnection, referral_id: str, reference: str, message_id: str, at: datetime) -> Candidate:
    sealed = (
        await conn.execute(
            select(func.length(messages.c.raw).label("raw"), referrals.c.content.is_not(None).label("content"))
            .select_from(referrals.join(messages, messages.c.id == referrals.c.message_id))
            .where(referrals.c.id == referral_id)
        )
    ).one()
    outbound = (
        await conn.execute(
            select(deliveries.c.provider_id, deliveries.c.payload.is_not(None).label("has_payload")).where(
                deliveries.c.referral_id == referral_id
            )
        )
    ).all()
    notes = (
        await conn.execute(
            select(func.count()).where(decisions.c.referral_id == referral_id, decisions.c.note.is_not(None))
        )
    ).scalar_one()
    webhooks = (
        await conn.execute(
            select(func.count()).where(
                _webhooks_of(reference, [d.provider_id for d in outbound if d.provider_id]),
                or_(sms_webhooks.c.payload.is_not(None), sms_webhooks.c.reply.is_not(None)),
            )
        )
    ).scalar_one()
    return Candidate(
        id=referral_id,
        reference=reference,
        message_id=message_id,
        closed_at=at,
        message=bool(sealed.raw),
        content=bool(sealed.content),
        deliveries=sum(1 for d in outbound if d.has_payload),
        notes=int(notes),
        webhooks=int(webhooks),
    )


async def _remove(conn: AsyncConnection, item: Candidate) -> None:
    """Empty every sealed column that belongs to one referral (its row is already locked)."""
    await conn.execute(update(messages).where(messages.c.id == item.message_id).values(raw=b"", envelope=b""))
    provider_ids = [
        str(p)
        for p in (
            await conn.execute(
                select(deliveries.c.provider_id).where(
                    deliveries.c.referral_id == item.id, deliveries.c.provider_id.is_not(None)
                )
            )
        ).scalars()
    ]
    await conn.execute(update(deliveries).where(deliveries.c.referral_id == item.id).values(payload=None))
    await conn.execute(update(decisions).where(decisions.c.referral_id == item.id).values(note=None))
    # The child index goes with the content: nothing may link a purged child to a later referral.
    await child_index.remove(conn, [item.id])
    # Structured answers' reasons, and more information threaded onto it (issue 15).
    await conn.execute(update(answers).where(answers.c.referral_id == item.id).values(reason=None))
    await conn.execute(update(additional_info).where(additional_info.c.referral_id == item.id).values(content=None))
    await conn.execute(
        update(sms_webhooks).where(_webhooks_of(item.reference, provider_ids)).values(payload=None, reply=None)
    )


async def purge_batch(db: Database, settings: Settings, now: datetime, actor: str) -> list[Candidate]:
    """Purge up to one batch in one write transaction; returns what was purged (empty: done)."""
    retention = settings.retention
    async with db.write() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("PRAGMA secure_delete=ON")  # for this connection: zero what is freed
        found = await due(conn, settings, now, retention.batch)
        if not found:
            return []
        # Lock the rows first (every writer's order), then ask again: on PostgreSQL another
        # instance may have purged, closed or held one of them between our read and the lock.
        await lock(conn, [c.id for c in found])
        still = {c.id for c in await due(conn, settings, now)}
        found = [c for c in found if c.id in still]
        for item in found:
            await _remove(conn, item)
        await transitions(
            conn,
            {c.id: [audit.Event(c.id, now, actor, "purged", c.detail(retention.closed_after))] for c in found},
            {c.id: {"content": None, "purged_at": now} for c in found},
        )
    for item in found:
        log.info("retention: purged referral %s (closed %s)", item.reference, item.closed_at.date().isoformat())
    if found:
        await _truncate_wal(db)
    return found


async def _truncate_wal(db: Database) -> None:
    """Copy the write-ahead log into the database and empty it: until then it holds the purged
    pages as they were. With readers still open SQLite copies what it can; the next purge (or
    SQLite's own checkpoints) finishes the job."""
    if db.engine.dialect.name != "sqlite":
        return
    async with db.engine.connect() as conn:
        outside = await conn.execution_options(isolation_level="AUTOCOMMIT")  # a checkpoint runs outside BEGIN
        busy = (await outside.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).first()
    if busy is not None and busy[0]:
        log.warning("retention: the write-ahead log could not be emptied yet (readers open); it will be later")


async def purge(db: Database, settings: Settings, now: datetime, actor: str) -> list[Candidate]:
    """Purge everything the policy lets go now, batch by batch (each committed on its own)."""
    done: list[Candidate] = []
    # An empty batch ends the run. On PostgreSQL it can also mean another instance took the whole
    # batch between our read and our lock: that instance carries on, and the next run here finds the rest.
    while batch := await purge_batch(db, settings, now, actor):
        done += batch
    return done


async def dry_run(db: Database, settings: Settings, now: datetime) -> list[Candidate]:
    """What `purge` would remove now; changes nothing."""
    async with db.read() as conn:
        return await due(conn, settings, now)

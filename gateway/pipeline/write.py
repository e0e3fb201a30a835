"""Writing what processing decided: a batch of prepared referrals in one transaction, or one
message's failure (retried later, or quarantined for a person).

Every write is guarded by the message's lease: a worker whose lease ran out writes nothing, and the
worker that took the message over owns its outcome. Referral states change only through
gateway.core.transitions.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core import audit
from gateway.core.db import Database
from gateway.core.outcomes import Quarantine
from gateway.core.schema import additional_info, deadlines, deliveries, messages
from gateway.core.sealed import Sealed
from gateway.core.transitions import transition, transitions
from gateway.outbox.compose import Composer, Outgoing, QuarantineFacts
from gateway.outbox.enqueue import Row, outbox_row, queue_outgoing, queued_events
from gateway.pipeline import repeats
from gateway.pipeline.concern import ConcernWriter
from gateway.pipeline.sender import Sender, sender_of
from gateway.pipeline.work import Claimed, Prepared
from gateway.route import handover

log = logging.getLogger(__name__)

# What a sender is told failed when the fault was ours (the technical reason is for the report).
FAULT = "the gateway could not process it, because of a fault on our side, not in what you sent"


class LeaseLost(Exception):
    """Another worker took this message over (our lease ran out); it owns the work now."""


class BatchWriter:
    def __init__(
        self, settings: Settings, db: Database, sealed: Sealed, composer: Composer, owner: str, concerns: ConcernWriter
    ) -> None:
        self._s = settings
        self._concerns = concerns
        self._db = db
        self._sealed = sealed
        self._composer = composer
        self._owner = owner
        self._actor = f"worker:{owner}"

    def _hand_over_at(self, prep: Prepared) -> datetime | None:
        """When the referral goes to the out-of-hours team at office close, if its team does that."""
        routed = prep.routed
        team = self._s.find_team(routed.team_id) if routed else None
        if routed is None or team is None:
            return None
        return handover.hand_over_at(self._s, team, routed.route_name, routed.urgency, prep.message.received_at)

    async def write(self, batch: list[Prepared], now: datetime) -> None:
        try:
            async with self._db.write() as conn:
                written = await self._write_many(conn, batch, now)
        except LeaseLost:
            # Rare: a lease ran out mid-batch. Write each alone; a lost one is someone else's now.
            for prep in batch:
                try:
                    async with self._db.write() as conn:
                        await self._write_many(conn, [prep], now)
                except LeaseLost:
                    log.warning("processing: lease lost for referral %s; another worker has it", prep.message.reference)
            return
        for prep in written:
            if prep.repeat_of is not None:
                log.info(
                    "processing: referral %s is a repeat of %s; not routed",
                    prep.message.reference,
                    prep.repeat_of.reference,
                )
            elif prep.routed is not None:
                log.info(
                    "processing: referral %s routed to team %s%s",
                    prep.message.reference,
                    prep.routed.team_id,
                    " (incomplete)" if prep.routed.incomplete else "",
                )

    async def _write_many(self, conn: AsyncConnection, batch: list[Prepared], now: datetime) -> list[Prepared]:
        """Everything a batch produced, in one transaction and a handful of statements; returns
        what was written (a message that lost its signed content to another is processed again)."""
        # First: a message whose signed content another referral took meanwhile writes nothing and
        # is processed again (gateway.pipeline.repeats says why this order).
        lost = await repeats.claim(conn, batch, now)
        if lost:
            await repeats.release(conn, lost, self._owner, now)
            for prep in batch:
                if prep.message.message_id in lost:
                    log.info(
                        "processing: referral %s: its signed content was just taken; again", prep.message.reference
                    )
            batch = [prep for prep in batch if prep.message.message_id not in lost]
            if not batch:
                return []
        done = await conn.execute(
            update(messages)
            .where(
                messages.c.id.in_([prep.message.message_id for prep in batch]),
                messages.c.lease_owner == self._owner,  # only if the lease is still ours
                messages.c.processed_at.is_(None),
            )
            .values(processed_at=now, lease_owner=None, lease_until=None, last_error=None)
        )
        if done.rowcount != len(batch):
            raise LeaseLost()
        events: dict[str, list[audit.Event]] = {}
        outbox: list[Row] = []
        due: list[dict[str, object]] = []
        info: list[dict[str, object]] = []  # additional information threaded on (replies)
        columns: dict[str, dict[str, object]] = {}
        for prep in batch:
            referral_id = prep.message.referral_id
            rows = [outbox_row(out, referral_id, self._sealed, now) for out in prep.outgoing]
            outbox += rows
            events[referral_id] = [*prep.events, *queued_events(referral_id, rows, now, self._actor)]
            if prep.reply is not None:
                # A reply threaded onto a waiting referral (gateway.pipeline.replies): the item
                # and the team's notice belong to that referral, and the timelines name each other.
                reply = prep.reply
                info.append(
                    {
                        "id": reply.item_id,
                        "referral_id": reply.referral_id,
                        "message_id": prep.message.message_id,
                        "received_at": prep.message.received_at,
                        "content": reply.content,
                    }
                )
                told = [outbox_row(out, reply.referral_id, self._sealed, now) for out in reply.outgoing]
                outbox += told
                detail = {"item": reply.item_id, "reply": prep.message.reference, "message": prep.message.message_id}
                again = [audit.Event(reply.referral_id, now, self._actor, "information_received", detail)]
                again += queued_events(reply.referral_id, told, now, self._actor)
                events[reply.referral_id] = [*events.get(reply.referral_id, []), *again]
                continue
            if prep.routed is None:
                # A repeat: no deadline, nothing to route; the earlier referral's timeline says it
                # came again (locked with the rest, in id order, by transitions below).
                original, again = repeats.events(prep, now, self._actor)
                events[original] = [*events.get(original, []), *again]
                continue
            columns[referral_id] = prep.routed.columns()
            # Every row with the same keys: an executemany insert takes its columns from the first
            # row, and an 'ack' row has no chain or step (they would be dropped from the rest).
            no_step: dict[str, object] = {"chain": None, "step": None, "round": None}
            due.append({"referral_id": referral_id, "kind": "ack", "due_at": prep.routed.due_at} | no_step)
            if prep.next_step is not None:
                due.append(prep.next_step.row(referral_id))
            if (close := self._hand_over_at(prep)) is not None:
                due.append({"referral_id": referral_id, "kind": "handover", "due_at": close} | no_step)
        # The child index rows with the content they index (one transaction: never one without the
        # other), then any cumulative concern they complete, with its alerts.
        raised, alerts = await self._concerns.write(conn, batch, now, self._actor)
        for referral_id, more in raised.items():
            rows = [outbox_row(out, rid, self._sealed, now) for rid, out in alerts if rid == referral_id]
            outbox += rows
            queued = queued_events(referral_id, rows, now, self._actor)
            events[referral_id] = [*events.get(referral_id, []), *more, *queued]
        if outbox:
            await conn.execute(deliveries.insert(), outbox)
        if due:
            await conn.execute(deadlines.insert(), due)
        if info:
            await conn.execute(additional_info.insert(), info)
        # Last: it locks the referral rows and then the audit chain head (the lock order).
        await transitions(conn, events, columns)
        return batch

    async def fail(
        self,
        message: Claimed,
        now: datetime,
        stage: str,
        reason: str,
        final: bool,
        outcome: Quarantine | None = None,
    ) -> None:
        """A message that failed at `stage`: quarantined when `final` (the sender told, if there is
        one to tell, and the triage team alerted), else retried after processing.retry."""
        # Read before the write transaction: a damaged row's error must not abort that transaction.
        sender = await self._sender(message, outcome) if final else None
        async with self._db.write() as conn:
            owned = messages.c.lease_owner == self._owner
            values: dict[str, object] = {
                "lease_owner": None,
                "lease_until": None,
                "last_error": f"{stage}: {reason}"[:200],
            }
            if final:
                values["processed_at"] = now
            else:
                values["next_attempt_at"] = now + self._s.processing.retry
            done = await conn.execute(
                update(messages)
                .where(messages.c.id == message.message_id, owned, messages.c.processed_at.is_(None))
                .values(**values)
            )
            if done.rowcount != 1:
                return  # our lease ran out and another worker has the message: its outcome stands
            if sender is not None:
                await self._quarantine(conn, message, now, stage, reason, fault=outcome is None, sender=sender)
                return
            detail = {"stage": stage, "reason": reason, "attempt": message.attempts}
            await audit.append(conn, [audit.Event(message.referral_id, now, self._actor, "processing_failed", detail)])
        log.warning("processing: referral %s failed at stage %s (%s); will retry", message.reference, stage, reason)

    async def _sender(self, message: Claimed, outcome: Quarantine | None) -> Sender:
        if outcome is not None and outcome.notify:
            return Sender(outcome.notify, outcome.in_reply_to)  # the stage that quarantined knew
        return await sender_of(self._db, self._sealed, message)

    async def _quarantine(
        self,
        conn: AsyncConnection,
        message: Claimed,
        now: datetime,
        stage: str,
        reason: str,
        *,
        fault: bool,
        sender: Sender,
    ) -> None:
        """Quarantined, and in the same transaction (so exactly once, and never one without the
        other) the notice to the sender and the alert to triage queued in the outbox. A fault of
        ours (a crash after its retries) tells every kind of quarantine apart from none: a person
        must look, and a sender who is told nothing assumes the referral is being acted on."""
        told = sender.to is not None
        detail = {"stage": stage, "reason": reason, "sender": "told" if told else sender.why_not}
        events = [audit.Event(message.referral_id, now, self._actor, "quarantined", detail)]
        outgoing: list[Outgoing] = []
        if sender.to is not None:
            # What failed and how to send correctly: the referral is held, not acted on, and they may
            # need to phone. Nothing of its content is echoed; a fault's technical reason is ours.
            outgoing.append(
                self._composer.quarantine_notice(
                    reference=message.reference,
                    to=sender.to,
                    reason=FAULT if fault else reason,
                    received_at=message.received_at,
                    now=now,
                    in_reply_to=sender.in_reply_to,
                    fault=fault,
                )
            )
        facts = QuarantineFacts(
            message.referral_id, message.reference, message.received_at, stage, reason, told, sender.why_not
        )
        outgoing.append(self._composer.quarantine_alert(quarantine=facts, now=now))
        events += await queue_outgoing(conn, self._sealed, message.referral_id, outgoing, now, self._actor)
        await transition(conn, message.referral_id, events)
        log.error("processing: referral %s quarantined at stage %s: %s", message.reference, stage, reason)

"""The processing driver: open -> parse -> route -> queue alert and receipt, from the stored copy.

Each claimed message is prepared in memory (pure stages), then a whole batch is written in one
transaction: referral content, events, outbox rows, deadline, and the message marked processed.
Either all of that is committed or none of it, so a crash at any point only means the message is
claimed again when its lease runs out and processed from scratch; nothing is twinned.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Config
from gateway.core import audit
from gateway.core.clock import LONDON, Clock
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.model import Channel, Referral
from gateway.core.outcomes import Quarantine, describe
from gateway.core.queue import claim
from gateway.core.schema import deadlines, deliveries, messages, referrals
from gateway.core.sealing import Sealer, sealed_context
from gateway.intake.sms_replies import read_sms_referral
from gateway.open.identity import Identity
from gateway.open.mime import read_outer
from gateway.open.opener import Opener
from gateway.outbox.alerting import Alerter, Content
from gateway.outbox.compose import Composer, Outgoing
from gateway.outbox.dispatch import Dispatcher
from gateway.outbox.enqueue import outbox_row, queue_outgoing, queued_events
from gateway.outbox.protect import Protector
from gateway.parse.referral import parse_email, parse_json
from gateway.route.rules import Facts

log = logging.getLogger(__name__)
PREPARE_TIMEOUT = 120.0  # seconds; a timed-out message is retried, then quarantined


class LeaseLost(Exception):
    """Another worker took this message over (our lease ran out); it owns the work now."""


@dataclass
class Prepared:
    message_id: str
    referral_id: str
    reference: str
    values: dict[str, Any]
    events: list[audit.Event] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    due_at: datetime | None = None
    next_step: dict[str, Any] | None = None  # the escalation chain's next step row


class Processor:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealer: Sealer,
        composer: Composer,
        clock: Clock,
        owner: str,
        identity: Identity,
        protector: Protector,
    ) -> None:
        self._opener = Opener(config.settings, identity, protector)
        self._protector = protector
        self._config = config
        self._s = config.settings
        self._db = db
        self._sealer = sealer
        self._composer = composer
        self._dispatcher = Dispatcher(config.settings, Alerter(composer, protector))
        self._clock = clock
        self._owner = owner

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many messages were claimed."""
        now = self._clock.now()
        ids = await claim(
            self._db,
            messages,
            and_(messages.c.processed_at.is_(None), messages.c.next_attempt_at <= now),
            messages.c.received_at,
            self._owner,
            now,
            self._s.processing.lease,
            self._s.processing.batch,
        )
        if not ids:
            return 0
        ids = await self._quarantine_exhausted(ids, now)
        if not ids:
            return 1
        rows, unloadable = await self._load(ids)
        for bad in unloadable:
            final = bad.attempts >= self._s.processing.max_attempts
            await self._fail(bad, now, "load", "the stored message cannot be read from the database", final)
        # Concurrently: gpg and openssl run in threads and subprocesses (bounded by their own
        # semaphores), so one message's decryption overlaps another's parsing.
        results = await asyncio.gather(*(self._prepare_or_fail(row, now) for row in rows))
        prepared = [prep for prep in results if prep is not None]
        if prepared:
            await self._write(prepared, now)
        return len(ids)

    async def _prepare_or_fail(self, row: Any, now: datetime) -> Prepared | None:
        stages = ["open"]  # the stage reached, for the report if it fails
        try:
            # A bound per message: one pathological message (gpg grinding through thousands of
            # bogus key packets) must not hold up the referrals claimed with it.
            return await asyncio.wait_for(self._prepare(row, now, stages), PREPARE_TIMEOUT)
        except Quarantine as outcome:
            await self._fail(row, now, outcome.stage, outcome.reason, final=True, outcome=outcome)
        except Exception as exc:  # noqa: BLE001
            # Mailman's shunt: a bug in any stage must not lose the message; it is retried,
            # then quarantined for a person to see.
            final = row.attempts >= self._s.processing.max_attempts
            await self._fail(row, now, stages[-1], describe(exc), final=final)
        return None

    async def _quarantine_exhausted(self, ids: list[str], now: datetime) -> list[str]:
        """Claims count attempts, so a message that crashed its worker (or failed its batch's
        write) max_attempts times is quarantined here without being opened again; it cannot hold
        up the queue behind it."""
        limit = self._s.processing.max_attempts
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(
                        messages.c.id,
                        messages.c.attempts,
                        referrals.c.id.label("referral_id"),
                        referrals.c.reference,
                        referrals.c.received_at,
                    )
                    .join(referrals, referrals.c.message_id == messages.c.id)
                    .where(messages.c.id.in_(ids), messages.c.attempts > limit)
                )
            ).all()
        for row in rows:
            await self._fail(row, now, "process", f"gave up after {limit} attempts that did not finish", final=True)
        exhausted = {row.id for row in rows}
        return [message_id for message_id in ids if message_id not in exhausted]

    async def _load(self, ids: list[str]) -> tuple[list[Any], list[Any]]:
        """The claimed rows; any that cannot even be read come back apart (id columns only), so
        one damaged row cannot block its batch forever."""
        columns = [
            messages.c.id,
            messages.c.attempts,
            messages.c.channel,
            referrals.c.id.label("referral_id"),
            referrals.c.reference,
            referrals.c.received_at,
        ]
        query = select(*columns, messages.c.raw, messages.c.envelope).join(
            referrals, referrals.c.message_id == messages.c.id
        )
        async with self._db.read() as conn:
            try:
                return list((await conn.execute(query.where(messages.c.id.in_(ids)))).all()), []
            except DBAPIError:
                pass
        rows, bad = [], []
        for message_id in ids:
            # A fresh connection per row: after an error PostgreSQL refuses the rest of a transaction.
            async with self._db.read() as conn:
                try:
                    rows.append((await conn.execute(query.where(messages.c.id == message_id))).one())
                    continue
                except DBAPIError:
                    pass
            async with self._db.read() as conn:
                bad.append(
                    (
                        await conn.execute(
                            select(*columns)
                            .join(referrals, referrals.c.message_id == messages.c.id)
                            .where(messages.c.id == message_id)
                        )
                    ).one()
                )
        return rows, bad

    async def _prepare(self, row: Any, now: datetime, stages: list[str]) -> Prepared:
        raw = self._sealer.open(row.raw, sealed_context("raw", row.id))
        envelope = json.loads(self._sealer.open(row.envelope, sealed_context("envelope", row.id)))
        if row.channel == Channel.SMS.value:
            stages.append("parse")
            referral, partner = read_sms_referral(self._s, raw, envelope)
            stages.append("route")
            return await self._routed(row, now, referral, partner, {}, Content(referral, ()), "sms")
        if row.channel == Channel.WEB.value:
            # The web form stores the referral.json document it built; the reply page gave the
            # reference, and a receipt goes to the email address the referrer gave, if any.
            stages.append("parse")
            referral = parse_json(raw, now.astimezone(LONDON).date())
            stages.append("route")
            prep = await self._routed(
                row, now, referral, referral.referrer.organisation, {}, Content(referral, ()), "web form"
            )
            if envelope.get("referrer_email"):
                prep.outgoing.append(
                    self._composer.receipt(
                        reference=row.reference,
                        to=envelope["referrer_email"],
                        received_at=row.received_at,
                        now=now,
                        in_reply_to=None,
                    )
                )
            return prep
        outer = read_outer(raw)
        reply_to = envelope.get("mail_from") or ""
        opened, security = await self._opener.open(raw, reply_to, outer)
        stages.append("parse")
        today = now.astimezone(LONDON).date()
        referral, source = parse_email(opened.text, opened.referral_json, today)
        stages.append("route")
        organisation: str | None = security.get("partner") or referral.referrer.organisation
        content = Content(referral, opened.attachments)
        prep = await self._routed(row, now, referral, organisation, security, content, source)
        actor = f"worker:{self._owner}"
        if reply_to and not outer.automatic:
            receipt = self._composer.receipt(
                reference=row.reference,
                to=reply_to,
                received_at=row.received_at,
                now=now,
                in_reply_to=outer.message_id,
            )
            prep.outgoing.append(await self._protector.maybe_protect(security.get("reply_key"), receipt))
        else:
            # RFC 3834: no receipt to a null sender or to automatic mail, or we could loop.
            prep.events.append(
                audit.Event(
                    row.referral_id,
                    now,
                    actor,
                    "receipt_skipped",
                    {"why": "automatic message" if reply_to else "null sender"},
                )
            )
        return prep

    async def _routed(
        self,
        row: Any,
        now: datetime,
        referral: Referral,
        organisation: str | None,
        security: dict[str, Any],
        content: Content,
        source: str,
    ) -> Prepared:
        """Route, fire the chain's first step, and gather what to write, for any channel."""
        facts = Facts(at=row.received_at, channel=row.channel, organisation=organisation)
        dispatched = await self._dispatcher.first(
            referral=referral,
            referral_id=row.referral_id,
            reference=row.reference,
            received_at=row.received_at,
            now=now,
            facts=facts,
            security=security,
            content=content,
        )
        assert dispatched.decision is not None
        team, route_name = dispatched.team, dispatched.decision.route.name
        prep = Prepared(
            row.id,
            row.referral_id,
            row.reference,
            {
                "content": self._sealer.seal(
                    json.dumps(referral.to_json() | {"reply_key": security.get("reply_key")}).encode(),
                    sealed_context("content", row.referral_id),
                ),
                "team_id": team.id,
                "route_name": route_name,
                "urgency": referral.urgency.value if referral.urgency else None,
                "incomplete": referral.incomplete,
                "due_at": dispatched.due_at,
                "state": State.ROUTED.value,
            },
            due_at=dispatched.due_at,
            next_step=dispatched.next_step,
        )
        actor = f"worker:{self._owner}"
        prep.events.append(
            audit.Event(
                row.referral_id,
                now,
                actor,
                "parsed",
                {
                    "source": source,
                    "incomplete": referral.incomplete,
                    "problem_fields": [p.field for p in referral.problems],
                    "attachments": len(content.attachments),
                    **security,
                },
            )
        )
        for kind, detail in dispatched.events:
            if kind == "routed" and dispatched.encryption_failed:
                detail = {**detail, "encryption_failed": dispatched.encryption_failed}
            prep.events.append(audit.Event(row.referral_id, now, actor, kind, detail))
        prep.outgoing += dispatched.outgoing
        return prep

    async def _write(self, batch: list[Prepared], now: datetime) -> None:
        try:
            async with self._db.write() as conn:
                await self._write_many(conn, batch, now)
        except LeaseLost:
            # Rare: a lease ran out mid-batch. Write each alone; a lost one is someone else's now.
            for prep in batch:
                try:
                    async with self._db.write() as conn:
                        await self._write_many(conn, [prep], now)
                except LeaseLost:
                    log.warning("processing: lease lost for referral %s; another worker has it", prep.reference)
            return
        for prep in batch:
            log.info(
                "processing: referral %s routed to team %s%s",
                prep.reference,
                prep.values["team_id"],
                " (incomplete)" if prep.values["incomplete"] else "",
            )

    async def _write_many(self, conn: AsyncConnection, batch: list[Prepared], now: datetime) -> None:
        """Everything a batch produced, in one transaction and a handful of statements."""
        done = await conn.execute(
            update(messages)
            .where(
                messages.c.id.in_([prep.message_id for prep in batch]),
                messages.c.lease_owner == self._owner,  # only if the lease is still ours
                messages.c.processed_at.is_(None),
            )
            .values(processed_at=now, lease_owner=None, lease_until=None, last_error=None)
        )
        if done.rowcount != len(batch):
            raise LeaseLost()
        columns = list(batch[0].values)
        await conn.execute(
            update(referrals)
            .where(referrals.c.id == bindparam("b_id"))
            .values({column: bindparam(f"b_{column}") for column in columns}),
            [{"b_id": prep.referral_id, **{f"b_{c}": prep.values[c] for c in columns}} for prep in batch],
        )
        events: list[audit.Event] = []
        outbox_rows: list[dict[str, Any]] = []
        for prep in batch:
            rows = [outbox_row(out, prep.referral_id, self._sealer, now) for out in prep.outgoing]
            outbox_rows += rows
            events += prep.events + queued_events(prep.referral_id, rows, now, f"worker:{self._owner}")
        if outbox_rows:
            await conn.execute(deliveries.insert(), outbox_rows)
        due = [{"referral_id": p.referral_id, "kind": "ack", "due_at": p.due_at} for p in batch if p.due_at]
        due += [{"referral_id": p.referral_id, **p.next_step} for p in batch if p.next_step]
        if due:
            # Every row with the same keys: an executemany insert takes its columns from the first
            # row, and an 'ack' row has no chain or step (they would be dropped from the rest).
            keys = ("referral_id", "kind", "due_at", "chain", "step", "round")
            await conn.execute(deadlines.insert(), [{key: row.get(key) for key in keys} for row in due])
        await audit.append(conn, events)

    async def _fail(
        self, row: Any, now: datetime, stage: str, reason: str, final: bool, outcome: Quarantine | None = None
    ) -> None:
        actor = f"worker:{self._owner}"
        async with self._db.write() as conn:
            owned = messages.c.lease_owner == self._owner
            if final:
                done = await conn.execute(
                    update(messages)
                    .where(messages.c.id == row.id, owned, messages.c.processed_at.is_(None))
                    .values(
                        processed_at=now,
                        lease_owner=None,
                        lease_until=None,
                        last_error=f"{stage}: {reason}"[:200],
                    )
                )
                if done.rowcount != 1:
                    return  # our lease ran out and another worker has the message: its outcome stands
                await conn.execute(
                    update(referrals).where(referrals.c.id == row.referral_id).values(state=State.QUARANTINED.value)
                )
                events = [audit.Event(row.referral_id, now, actor, "quarantined", {"stage": stage, "reason": reason})]
                if outcome is not None and outcome.notify:
                    # Tell the sender what failed and how to send correctly: their referral is held,
                    # not acted on, and they may need to phone. Nothing of its content is echoed.
                    notice = self._composer.quarantine_notice(
                        reference=row.reference,
                        to=outcome.notify,
                        reason=reason,
                        received_at=row.received_at,
                        now=now,
                        in_reply_to=outcome.in_reply_to,
                    )
                    events += await queue_outgoing(conn, self._sealer, row.referral_id, [notice], now, actor)
                await audit.append(conn, events)
                log.error("processing: referral %s quarantined at stage %s: %s", row.reference, stage, reason)
            else:
                done = await conn.execute(
                    update(messages)
                    .where(messages.c.id == row.id, owned, messages.c.processed_at.is_(None))
                    .values(
                        next_attempt_at=now + self._s.processing.retry,
                        lease_owner=None,
                        lease_until=None,
                        last_error=f"{stage}: {reason}"[:200],
                    )
                )
                if done.rowcount != 1:
                    return
                await audit.append(
                    conn,
                    [
                        audit.Event(
                            row.referral_id,
                            now,
                            actor,
                            "processing_failed",
                            {"stage": stage, "reason": reason, "attempt": row.attempts},
                        )
                    ],
                )
                log.warning(
                    "processing: referral %s failed at stage %s (%s); will retry",
                    row.reference,
                    stage,
                    reason,
                )

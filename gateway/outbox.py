"""The outbox worker: claim pending deliveries with a lease, send outside any transaction, then
record the outcome in a new transaction.

At-least-once: if we crash after sending and before marking sent, the lease runs out and the
message is sent again (receivers see the same X-Referral-Reference; the README says so). After the
last try a delivery is dead; a dead alert makes its referral undeliverable, on the report until a
person acts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update

from gateway import audit
from gateway.clock import Clock
from gateway.config import Config
from gateway.db import Database
from gateway.deliver import Transport
from gateway.outcomes import PermanentFailure, TemporaryFailure, describe
from gateway.queue import backoff, claim
from gateway.schema import deliveries, referrals
from gateway.sealing import Sealer
from gateway.store import sealed_context
from gateway.track import transition

log = logging.getLogger(__name__)

_ALERT_KINDS = ("alert", "reminder")


class Outbox:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealer: Sealer,
        transport: Transport,
        clock: Clock,
        owner: str,
    ) -> None:
        self._s = config.settings
        self._db = db
        self._sealer = sealer
        self._transport = transport
        self._clock = clock
        self._owner = owner

    async def run_once(self) -> int:
        now = self._clock.now()
        ids = await claim(
            self._db,
            deliveries,
            and_(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now),
            deliveries.c.next_attempt_at,
            self._owner,
            now,
            self._s.outbox.lease,
            self._s.outbox.batch,
        )
        if not ids:
            return 0
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(deliveries, referrals.c.reference)
                    .join(referrals, referrals.c.id == deliveries.c.referral_id)
                    .where(deliveries.c.id.in_(ids))
                )
            ).all()
        await asyncio.gather(*(self._deliver(row) for row in rows))
        return len(ids)

    async def _deliver(self, row: Any) -> None:
        try:
            payload = json.loads(self._sealer.open(row.payload, sealed_context("delivery", row.id)))
            await self._transport.send(self._s.mail.from_address, payload["to"], payload["message"].encode("ascii"))
        except PermanentFailure as exc:
            await self._failed(row, str(exc), final=True)
        except TemporaryFailure as exc:
            await self._failed(row, str(exc), final=row.attempts >= self._s.outbox.max_attempts)
        except Exception as exc:  # noqa: BLE001
            # A bug in one delivery must not stop the others;
            # it is retried like a temporary failure and ends dead (on the report) if it persists.
            await self._failed(row, describe(exc), final=row.attempts >= self._s.outbox.max_attempts)
        else:
            await self._sent(row)

    async def _sent(self, row: Any) -> None:
        now = self._clock.now()
        actor = f"outbox:{self._owner}"
        async with self._db.write() as conn:
            done = await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row.id, deliveries.c.state == "pending")
                .values(state="sent", sent_at=now, lease_owner=None, lease_until=None, last_error=None)
            )
            if done.rowcount != 1:
                return  # another worker recorded it first (its lease had run out)
            events = [
                audit.Event(
                    row.referral_id,
                    now,
                    actor,
                    "delivery_sent",
                    {"delivery": row.id, "kind": row.kind, "attempt": row.attempts},
                )
            ]
            if row.kind in _ALERT_KINDS:
                events.append(
                    audit.Event(row.referral_id, now, actor, "alerted", {"team": row.team_id, "channel": row.channel})
                )
            await transition(conn, row.referral_id, events)
        log.info("outbox: %s for referral %s sent (attempt %d)", row.kind, row.reference, row.attempts)

    async def _failed(self, row: Any, reason: str, final: bool) -> None:
        now = self._clock.now()
        actor = f"outbox:{self._owner}"
        async with self._db.write() as conn:
            if final:
                values: dict[str, Any] = {"state": "dead"}
                kind = "delivery_dead"
            else:
                delay = backoff(row.attempts, self._s.outbox.first_retry, self._s.outbox.max_retry)
                values = {"next_attempt_at": now + delay}
                kind = "delivery_failed"
            done = await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row.id, deliveries.c.state == "pending")
                .values(lease_owner=None, lease_until=None, last_error=reason[:200], **values)
            )
            if done.rowcount != 1:
                return
            events = [
                audit.Event(
                    row.referral_id,
                    now,
                    actor,
                    kind,
                    {"delivery": row.id, "kind": row.kind, "attempt": row.attempts, "reason": reason},
                )
            ]
            if final and row.kind == "alert" and not await self._another_alert_alive(conn, row, now):
                events.append(
                    audit.Event(row.referral_id, now, actor, "undeliverable", {"team": row.team_id, "reason": reason})
                )
            await transition(conn, row.referral_id, events)
        if final:
            log.error(
                "outbox: %s for referral %s failed for good after %d attempts: %s",
                row.kind,
                row.reference,
                row.attempts,
                reason,
            )
        else:
            log.warning(
                "outbox: %s for referral %s failed (attempt %d): %s; retrying",
                row.kind,
                row.reference,
                row.attempts,
                reason,
            )

    async def _another_alert_alive(self, conn: Any, row: Any, now: datetime) -> bool:
        other = (
            await conn.execute(
                select(deliveries.c.id)
                .where(
                    deliveries.c.referral_id == row.referral_id,
                    deliveries.c.id != row.id,
                    deliveries.c.kind.in_(_ALERT_KINDS),
                    deliveries.c.state.in_(("pending", "sent")),
                )
                .limit(1)
            )
        ).first()
        return other is not None

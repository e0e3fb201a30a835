"""SMS delivery status: Twilio's status callbacks and, when none came in time, a fetch by SID.

`delivered` is recorded; `undelivered` and `failed` make the delivery fail as a refused email
does: it is tried again with backoff (dead after the last try), and an alert's failure brings the
escalation chain's next step forward, since its recipient will not see it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Settings
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.outcomes import TemporaryFailure
from gateway.core.queue import backoff
from gateway.core.schema import ALERT_KINDS, deliveries, sms_webhooks
from gateway.core.sealed import Sealed
from gateway.core.transitions import alert_dead, hasten_next_step, transitions
from gateway.deliver.twilio import FINAL, TwilioTransport

# One logger tree for the SMS channel across its stages (intake, delivery status), so that an
# operator can turn it up or down as one: "gateway.sms".
log = logging.getLogger("gateway.sms.status")

# Statuses Twilio reports before the final one, in the order they happen.
_ORDER = {"accepted": 0, "queued": 1, "sending": 2, "sent": 3, "receiving": 3, "received": 4}


async def apply_status(
    conn: AsyncConnection, settings: Settings, sid: str, status: str, error_code: str | None, now: datetime, actor: str
) -> str:
    """Record a status for the delivery with this SID; returns what was done (no personal data)."""
    row = (
        await conn.execute(select(deliveries).where(deliveries.c.provider_id == sid).with_for_update())
    ).one_or_none()
    if row is None:
        return NO_DELIVERY
    current = row.provider_status or "queued"
    if current == status:
        return f"already {status}"
    if current in FINAL or (status not in FINAL and _ORDER.get(status, 0) < _ORDER.get(current, 0)):
        return f"{status} ignored: the message is already {current}"  # callbacks can arrive out of order
    values: dict[str, object] = {"provider_status": status}
    events: list[audit.Event] = []
    detail: dict[str, object] = {"delivery": row.id, "kind": row.kind, "channel": "sms", "status": status}
    outcome = f"status {status}"
    if status == "delivered":
        events.append(audit.Event(row.referral_id, now, actor, "delivery_confirmed", detail))
    elif status in FINAL and row.state == "sent":
        reason = f"the network reported the SMS {status}" + (f" (error {error_code})" if error_code else "")
        final = row.attempts >= settings.outbox.max_attempts
        if final:
            values |= {"state": "dead", "last_error": reason}
            events.append(audit.Event(row.referral_id, now, actor, "delivery_dead", detail | {"reason": reason}))
            if row.kind in ALERT_KINDS:
                events += await alert_dead(conn, row.referral_id, row.id, row.team_id, now, actor, reason)
        else:
            delay = backoff(row.attempts, settings.outbox.first_retry, settings.outbox.max_retry)
            # Sent again later under a new SID; this one's late callbacks then find nothing.
            values |= {"state": "pending", "next_attempt_at": now + delay, "last_error": reason, "provider_id": None}
            events.append(audit.Event(row.referral_id, now, actor, "delivery_failed", detail | {"reason": reason}))
            if row.kind in ALERT_KINDS:
                await hasten_next_step(conn, row.referral_id, now)
        outcome = f"status {status}: " + ("dead" if final else "will retry")
    await conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
    if events:
        await transitions(conn, {row.referral_id: events})
    return outcome


NO_DELIVERY = "no delivery has this message SID"


async def apply_early_statuses(
    conn: AsyncConnection, settings: Settings, sealed: Sealed, sid: str, now: datetime
) -> None:
    """Statuses that arrived before the outbox had recorded the SID (Twilio can call back before
    our send's batch commits): stored then as waiting, applied now, in order."""
    rows = (
        await conn.execute(
            select(sms_webhooks.c.id, sms_webhooks.c.status, sms_webhooks.c.payload)
            .where(
                sms_webhooks.c.kind == "status",
                sms_webhooks.c.message_sid == sid,
                sms_webhooks.c.outcome == NO_DELIVERY,
            )
            .order_by(sms_webhooks.c.id)
        )
    ).all()
    for row in rows:
        if row.payload is None:  # purged with its referral (gateway.report.retention): nothing to apply
            continue
        form = dict(sealed.webhook("status", sid, row.status, row.payload))
        outcome = await apply_status(conn, settings, sid, row.status, form.get("ErrorCode"), now, "sms:callback")
        await conn.execute(update(sms_webhooks).where(sms_webhooks.c.id == row.id).values(outcome=outcome[:200]))


class SmsReconciler:
    """Finds SMS with no final status `status_timeout` after sending and asks Twilio for it."""

    def __init__(self, settings: Settings, db: Database, transport: TwilioTransport, clock: Clock) -> None:
        self._s = settings
        self._db = db
        self._transport = transport
        self._clock = clock

    async def run_once(self) -> int:
        now = self._clock.now()
        waited = self._s.sms.status_timeout
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(deliveries.c.id, deliveries.c.provider_id)
                    .where(
                        deliveries.c.channel == "sms",
                        deliveries.c.state == "sent",
                        deliveries.c.provider_id.is_not(None),
                        or_(deliveries.c.provider_status.is_(None), deliveries.c.provider_status.not_in(FINAL)),
                        and_(deliveries.c.sent_at <= now - waited, deliveries.c.next_attempt_at <= now),
                    )
                    .limit(50)
                )
            ).all()
        for row in rows:
            try:
                found = await self._transport.fetch(str(row.provider_id))
            except TemporaryFailure as exc:
                log.warning("sms: could not look up delivery %s (%s); will try again", row.id, exc)
                found = None
            except Exception as exc:  # noqa: BLE001
                # Twilio no longer knows the SID (404) or refused: the delivery stays sent and
                # unconfirmed, and is looked at again after another wait.
                log.warning("sms: lookup of delivery %s failed (%s)", row.id, type(exc).__name__)
                found = None
            async with self._db.write() as conn:
                if found is not None and found.status in FINAL:
                    outcome = await apply_status(
                        conn, self._s, str(row.provider_id), found.status, found.error_code, now, "sms:reconcile"
                    )
                    log.info("sms: delivery %s reconciled: %s", row.id, outcome)
                else:
                    # Not final yet: look again after another wait, not on every pass.
                    values: dict[str, object] = {"next_attempt_at": now + waited}
                    if found is not None:
                        values["provider_status"] = found.status
                    await conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
        return len(rows)

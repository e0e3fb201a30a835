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
from typing import Any

from sqlalchemy import and_, select, update

from gateway.config import Config
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.outcomes import PermanentFailure, TemporaryFailure, describe
from gateway.core.queue import backoff, claim
from gateway.core.schema import deliveries, referrals
from gateway.core.sealing import Sealer
from gateway.deliver.sms_status import apply_early_statuses
from gateway.deliver.transports import MaildirTransport, Transport
from gateway.intake.store import sealed_context
from gateway.track.acks import ALERT_KINDS, mark_alert_dead, transitions

log = logging.getLogger(__name__)

Outcome = tuple[Any, str | None, bool, str | None]  # (row, failure reason, final, provider's message id)


class Outbox:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealer: Sealer,
        transport: Transport,
        clock: Clock,
        owner: str,
        sms_transport: Transport | None = None,
    ) -> None:
        self._s = config.settings
        self._db = db
        self._sealer = sealer
        self._transport = transport
        # SMS until a provider is configured: a spool per number under var/sms/, written like the
        # maildir (fsync, then rename), where a developer or a test reads what would be sent.
        self._sms: Transport = sms_transport or MaildirTransport(config.data_dir / "sms")
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
        outcomes = await asyncio.gather(*(self._deliver(row) for row in rows))
        await self._record(outcomes)
        return len(ids)

    async def _deliver(self, row: Any) -> Outcome:
        """Send one; returns (row, None, False, provider id) when sent, else (row, reason, final, None)."""
        final_try = row.attempts >= self._s.outbox.max_attempts
        try:
            payload = json.loads(self._sealer.open(row.payload, sealed_context("delivery", row.id)))
            transport = self._sms if row.channel == "sms" else self._transport
            sent = await transport.send(self._s.mail.from_address, payload["to"], payload["message"].encode("utf-8"))
        except PermanentFailure as exc:
            return row, str(exc), True, None
        except TemporaryFailure as exc:
            return row, str(exc), final_try, None
        except Exception as exc:  # noqa: BLE001
            # A bug in one delivery must not stop the others; it is retried like a temporary
            # failure and ends dead (on the report) if it persists.
            return row, describe(exc), final_try, None
        return row, None, False, sent

    async def _record(self, outcomes: list[Outcome]) -> None:
        """All outcomes of a claimed batch in one transaction (one fsync, not one per email)."""
        now = self._clock.now()
        actor = f"outbox:{self._owner}"
        by_referral: dict[str, list[audit.Event]] = {}
        early: list[str] = []  # SIDs whose status callbacks may have come before we recorded them
        async with self._db.write() as conn:
            for row, reason, final, provider_id in outcomes:
                if reason is None:
                    values: dict[str, Any] = {"state": "sent", "sent_at": now, "last_error": None}
                    if provider_id is not None:
                        values |= {"provider_id": provider_id, "provider_status": "queued"}
                    kind = "delivery_sent"
                elif final:
                    values = {"state": "dead", "last_error": reason[:200]}
                    kind = "delivery_dead"
                else:
                    delay = backoff(row.attempts, self._s.outbox.first_retry, self._s.outbox.max_retry)
                    values = {"next_attempt_at": now + delay, "last_error": reason[:200]}
                    kind = "delivery_failed"
                guard = [deliveries.c.id == row.id, deliveries.c.state == "pending"]
                if reason is not None:
                    # A failure is ours to record only while the lease is ours: another worker
                    # may have taken the row over and be sending it right now. A success is a
                    # fact whoever holds the lease.
                    guard.append(deliveries.c.lease_owner == self._owner)
                done = await conn.execute(
                    update(deliveries).where(*guard).values(lease_owner=None, lease_until=None, **values)
                )
                if done.rowcount != 1:
                    continue  # another worker recorded it first (our lease had run out)
                if provider_id is not None and reason is None:
                    early.append(provider_id)
                detail: dict[str, Any] = {"delivery": row.id, "kind": row.kind, "attempt": row.attempts}
                events = by_referral.setdefault(row.referral_id, [])
                events.append(
                    audit.Event(row.referral_id, now, actor, kind, detail | ({"reason": reason} if reason else {}))
                )
                if reason is None and row.kind in ALERT_KINDS:
                    events.append(
                        audit.Event(
                            row.referral_id, now, actor, "alerted", {"team": row.team_id, "channel": row.channel}
                        )
                    )
                if final and row.kind in ALERT_KINDS:
                    await mark_alert_dead(conn, row, now, actor, reason or "", events)
                self._log(row, reason, final)
            if by_referral:
                await transitions(conn, by_referral)
            for sid in early:  # after the sends are on the record, so the audit reads in order
                await apply_early_statuses(conn, self._s, self._sealer, sid, now)

    @staticmethod
    def _log(row: Any, reason: str | None, final: bool) -> None:
        if reason is None:
            log.info("outbox: %s for referral %s sent (attempt %d)", row.kind, row.reference, row.attempts)
        elif final:
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

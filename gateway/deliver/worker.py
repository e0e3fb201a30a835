"""The outbox worker: claim pending deliveries with a lease, send outside any transaction, then
record the outcome in a new transaction.

At-least-once: if we crash after sending and before marking sent, the lease runs out and the
message is sent again (receivers see the same X-Referral-Reference; the README says so). After the
last try a delivery is dead; a dead alert makes its referral undeliverable, on the report until a
person acts (gateway.core.transitions.alert_dead).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Config
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.outcomes import PermanentFailure, TemporaryFailure, describe
from gateway.core.queue import backoff, claim
from gateway.core.schema import ALERT_KINDS, deliveries, referrals
from gateway.core.sealed import Sealed
from gateway.core.transitions import alert_dead, transitions
from gateway.deliver.sms_status import apply_early_statuses
from gateway.deliver.transports import MaildirTransport, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """A delivery row this worker holds the lease on."""

    id: str
    referral_id: str | None  # None: not about one referral (the daily digest)
    reference: str | None
    kind: str
    channel: str
    team_id: str | None
    attempts: int
    payload: bytes


@dataclass(frozen=True)
class Outcome:
    """What one try came to: sent (with the provider's id for an SMS), or failed, for now or for good."""

    delivery: Claimed
    failure: str | None = None  # our words for why, never the relay's (it can quote addresses)
    final: bool = False
    provider_id: str | None = None


class Outbox:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealed: Sealed,
        transport: Transport,
        clock: Clock,
        owner: str,
        sms_transport: Transport | None = None,
    ) -> None:
        self._s = config.settings
        self._db = db
        self._sealed = sealed
        self._transport = transport
        # SMS until a provider is configured: a spool per number under var/sms/, written like the
        # maildir (fsync, then rename), where a developer or a test reads what would be sent.
        self._sms: Transport = sms_transport or MaildirTransport(config.data_dir / "sms")
        self._clock = clock
        self._owner = owner
        self._send_bound = self._s.outbox.lease.total_seconds() / 2

    async def run_once(self) -> int:
        now = self._clock.now()
        d = deliveries.c
        ready = and_(d.state == "pending", d.next_attempt_at <= now)
        # Read by the claim itself (RETURNING), not a SELECT after it; the reference from a scalar
        # subquery, so a digest (about no referral: None) is claimed and sent all the same.
        reference = select(referrals.c.reference).where(referrals.c.id == d.referral_id).scalar_subquery()
        columns = (
            d.id,
            d.referral_id,
            reference.label("reference"),
            d.kind,
            d.channel,
            d.team_id,
            d.attempts,
            d.payload,
        )
        rows = await claim(self._db, deliveries, ready, d.next_attempt_at, self._owner, now, self._s.outbox, columns)
        if not rows:
            return 0
        claimed = [Claimed(**row._mapping) for row in rows]
        outcomes = await asyncio.gather(*(self._deliver(delivery) for delivery in claimed))
        await self._record(outcomes)
        return len(rows)

    async def _deliver(self, delivery: Claimed) -> Outcome:
        final_try = delivery.attempts >= self._s.outbox.max_attempts
        try:
            payload = self._sealed.payload(delivery.id, delivery.payload)
            transport = self._sms if delivery.channel == "sms" else self._transport
            # Every send of the batch must end, and its outcome be recorded, while the lease is
            # ours: a relay answering each step just inside its own timeout could otherwise hold a
            # send past the lease, and another instance would claim the row and send it again.
            async with asyncio.timeout(self._send_bound):
                sent = await transport.send(self._s.mail.from_address, payload.to, payload.message)
        except TimeoutError:
            reason = f"sending took longer than half the outbox lease ({self._send_bound:.0f}s)"
            return Outcome(delivery, reason, final=final_try)
        except PermanentFailure as exc:
            return Outcome(delivery, str(exc), final=True)
        except TemporaryFailure as exc:
            return Outcome(delivery, str(exc), final=final_try)
        except Exception as exc:  # noqa: BLE001
            # A bug in one delivery must not stop the others; it is retried like a temporary
            # failure and ends dead (on the report) if it persists.
            return Outcome(delivery, describe(exc), final=final_try)
        return Outcome(delivery, provider_id=sent)

    async def _record(self, outcomes: list[Outcome]) -> None:
        """All outcomes of a claimed batch in one transaction (one fsync, not one per email)."""
        now = self._clock.now()
        actor = f"outbox:{self._owner}"
        by_referral: dict[str, list[audit.Event]] = {}
        loose: list[audit.Event] = []  # deliveries about no referral: on the chain, no state to change
        early: list[str] = []  # SIDs whose status callbacks may have come before we recorded them
        values: dict[str, dict[str, object]] = {}  # referral columns that change with an outcome
        async with self._db.write() as conn:
            recorded = await self._mark(conn, outcomes, now)
            for outcome in outcomes:
                delivery = outcome.delivery
                if delivery.id not in recorded:
                    continue  # another worker recorded it first (our lease had run out)
                if outcome.provider_id is not None and outcome.failure is None:
                    early.append(outcome.provider_id)
                if delivery.referral_id is None:
                    loose.append(self._event(outcome, now, actor))
                    self._log(outcome)
                    continue
                events = by_referral.setdefault(delivery.referral_id, [])
                events.append(self._event(outcome, now, actor))
                if outcome.failure is None and delivery.kind in ALERT_KINDS:
                    detail = {"team": delivery.team_id, "channel": delivery.channel}
                    events.append(audit.Event(delivery.referral_id, now, actor, "alerted", detail))
                if outcome.final and delivery.kind in ALERT_KINDS:
                    reason = outcome.failure or ""
                    events += await alert_dead(
                        conn, delivery.referral_id, delivery.id, delivery.team_id, now, actor, reason
                    )
                if delivery.kind == "forward" and (outcome.failure is None or outcome.final):
                    # A forward to a neighbouring authority (gateway.track.answers): delivered, our
                    # part ends; dead, the referral is ours again, back in the duty queue.
                    kind = "forwarded" if outcome.failure is None else "forward_dead"
                    events.append(audit.Event(delivery.referral_id, now, actor, kind, {"delivery": delivery.id}))
                    if kind == "forward_dead":
                        values[delivery.referral_id] = {"acknowledged_at": None, "acknowledged_by": None}
                self._log(outcome)
            if by_referral:
                await transitions(conn, by_referral, values)
            await audit.append(conn, loose)
            for sid in early:  # after the sends are on the record, so the audit reads in order
                await apply_early_statuses(conn, self._s, self._sealed, sid, now)

    async def _mark(self, conn: AsyncConnection, outcomes: list[Outcome], now: datetime) -> set[str]:
        """Each delivery row's new values, guarded; returns the ids actually changed. Rows whose
        change is the same (every email sent: state, sent_at) share one UPDATE ... WHERE id IN
        (...) RETURNING id, not one statement each: a batch of sends is a statement or two."""
        same: dict[tuple[tuple[tuple[str, object], ...], bool], list[str]] = {}
        for outcome in outcomes:
            values, owned = self._change(outcome, now)
            same.setdefault((tuple(sorted(values.items())), owned), []).append(outcome.delivery.id)
        recorded: set[str] = set()
        for (change, owned), ids in same.items():
            guard = [deliveries.c.id.in_(sorted(ids)), deliveries.c.state == "pending"]
            if owned:
                # A failure is ours to record only while the lease is ours: another worker may
                # have taken the row over and be sending it right now. A success is a fact
                # whoever holds the lease.
                guard.append(deliveries.c.lease_owner == self._owner)
            done = await conn.execute(
                update(deliveries)
                .where(*guard)
                .values(lease_owner=None, lease_until=None, **dict(change))
                .returning(deliveries.c.id)
            )
            recorded.update(row.id for row in done)
        return recorded

    def _change(self, outcome: Outcome, now: datetime) -> tuple[dict[str, object], bool]:
        """(the delivery row's new values, whether it is ours to record only while we hold the lease)."""
        delivery = outcome.delivery
        values: dict[str, object]
        if outcome.failure is None:
            values = {"state": "sent", "sent_at": now, "last_error": None}
            if outcome.provider_id is not None:
                values |= {"provider_id": outcome.provider_id, "provider_status": "queued"}
        elif outcome.final:
            values = {"state": "dead", "last_error": outcome.failure[:200]}
        else:
            delay = backoff(delivery.attempts, self._s.outbox.first_retry, self._s.outbox.max_retry)
            values = {"next_attempt_at": now + delay, "last_error": outcome.failure[:200]}
        return values, outcome.failure is not None

    @staticmethod
    def _event(outcome: Outcome, now: datetime, actor: str) -> audit.Event:
        d = outcome.delivery
        kind = "delivery_sent" if outcome.failure is None else "delivery_dead" if outcome.final else "delivery_failed"
        detail: dict[str, object] = {"delivery": d.id, "kind": d.kind, "attempt": d.attempts}
        if outcome.failure:
            detail["reason"] = outcome.failure
        return audit.Event(d.referral_id, now, actor, kind, detail)

    @staticmethod
    def _log(outcome: Outcome) -> None:
        d = outcome.delivery
        what = f"{d.kind} for referral {d.reference}" if d.reference else d.kind  # a digest is about none
        if outcome.failure is None:
            log.info("outbox: %s sent (attempt %d)", what, d.attempts)
        elif outcome.final:
            log.error(
                "outbox: %s failed for good after %d attempts: %s",
                what,
                d.attempts,
                outcome.failure,
            )
        else:
            log.warning(
                "outbox: %s failed (attempt %d): %s; retrying",
                what,
                d.attempts,
                outcome.failure,
            )

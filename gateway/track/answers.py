"""Structured answers (issue 15): a duty worker's answer to a referral, other than acknowledging it.

How each maps onto the lifecycle (gateway.core.lifecycle, DESIGN.md):

- **Not ours, another of our teams** (`rerouted`: back to ROUTED): routed to that team as if it had
  just arrived there. The old team's deadlines and escalation steps are cancelled, the new team is
  alerted through its escalation chain (gateway.outbox.dispatch, the first step's alerts and the
  next step's row), its acknowledgement deadline runs from now, and any earlier acknowledgement is
  cleared: somebody in the new team must acknowledge it. The referrer is told which team has it.
- **Not ours, a neighbouring authority** (`forwarding`: FORWARDING, then `forwarded`: FORWARDED):
  a forward to the neighbour's referral address from [[neighbours]]. With a key it carries the
  content encrypted to it; without one, only a notice with no personal data (a referral is waiting,
  the reference, our duty phone). Our deadlines stop, but our responsibility ends only when the
  outbox has delivered the forward (gateway.deliver.worker writes `forwarded`); a forward that fails
  for good makes the referral UNDELIVERABLE, back in our team's queue and on the report. The
  referrer is told where it went.
- **More information needed** (`information_requested`: the state stays ACKNOWLEDGED): only once
  somebody named has it (its deadlines are already stopped). The referrer is asked: the reason,
  which may hold personal data, only in mail encrypted to their own key; otherwise the reference,
  "the duty team needs more information" and the duty phone. The referral shows as waiting until
  an email reply quoting the reference is threaded back onto it (gateway.pipeline.replies).
- **Duplicate of REF** (`duplicate`: DUPLICATE, terminal): the other referral must exist, be one the
  user may see, and be live; both timelines name each other, this one's deadlines stop, and its
  referrer is told it has been joined to one already being dealt with (never which one: that would
  tell them another referral exists).

Every answer needs a reason. The reason is free text that may name the child, so it is sealed in
the `answers` table and shown only on the signed-in referral page; the audit events carry the
answer's id, kind and target, never the reason. Bad input raises AnswerError with what to do, and
writes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.config import Config
from gateway.config.neighbours import find_neighbour
from gateway.core import audit
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.records import ReferralRecord, find_referral
from gateway.core.reference import InvalidReference, normalise_reference
from gateway.core.schema import answers, deadlines, referrals
from gateway.core.sealed import RoutedAtIntake, Sealed
from gateway.core.sealing import sealed_context
from gateway.core.transitions import cancel_deadlines, lock, transition, transitions
from gateway.outbox.compose import AlertContent, Composer
from gateway.outbox.dispatch import Dispatched, Dispatcher
from gateway.outbox.enqueue import queue_outgoing
from gateway.outbox.protect import Protector
from gateway.route.rules import Facts
from gateway.track.answer_mail import AnswerMail
from gateway.track.referrer import Referrers

log = logging.getLogger(__name__)

ANSWERABLE = frozenset({State.ROUTED, State.ALERTED, State.UNDELIVERABLE, State.ACKNOWLEDGED})
KINDS = {
    "not_ours_team": "not ours: another team",
    "not_ours_authority": "not ours: another authority",
    "more_info": "more information needed",
    "duplicate": "duplicate",
}
MAX_REASON = 2000  # characters: a reason, not a case note


class AnswerError(Exception):
    """Bad input or a referral that moved on: the message says what to do; nothing was written.
    `field`: the form field at fault ("reason", "destination", "of"), or "" for the referral."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


def answer_reason_context(answer_id: str) -> str:
    return sealed_context("answer_reason", answer_id)


def _reason(text: str) -> str:
    reason = text.strip()
    if not reason:
        raise AnswerError("Give a reason: say why, so the next person to read the referral knows", "reason")
    if len(reason) > MAX_REASON:
        raise AnswerError(f"The reason is {len(reason)} characters; keep it under {MAX_REASON}", "reason")
    return reason


@dataclass(frozen=True)
class Answered:
    reference: str
    kind: str
    target: str  # in words: the team, the authority, the other reference, or the referrer's channel


class Answers:
    def __init__(
        self,
        config: Config,
        db: Database,
        sealed: Sealed,
        composer: Composer,
        protector: Protector,
        dispatcher: Dispatcher,
        referrers: Referrers,
        clock: Clock,
    ) -> None:
        self._s = config.settings
        self._db = db
        self._sealed = sealed
        self._composer = composer
        self._protector = protector
        self._dispatcher = dispatcher
        self._referrers = referrers
        self._clock = clock
        self._mail = AnswerMail(config.settings, sealed, composer, protector)

    # --- shared --------------------------------------------------------------------------------

    async def _locked(self, conn: AsyncConnection, referral_id: str, allowed: frozenset[State]) -> ReferralRecord:
        row = await find_referral(conn, referral_id, lock=True)
        if row is None:
            raise AnswerError("This referral does not exist")
        if row.state not in allowed:
            raise AnswerError(f"This referral cannot be answered now: it is {row.state}. Look again.")
        return row

    async def _record(
        self,
        conn: AsyncConnection,
        row: ReferralRecord,
        kind: str,
        user_id: str,
        reason: str,
        now: datetime,
        **more: str,
    ) -> str:
        answer_id = uuid.uuid4().hex
        sealed = self._sealed.sealer.seal(reason.encode(), answer_reason_context(answer_id))
        await conn.execute(
            answers.insert(),
            [
                {
                    "id": answer_id,
                    "referral_id": row.id,
                    "kind": kind,
                    "answered_by": user_id,
                    "answered_at": now,
                    "target": more.get("target"),
                    "delivery_id": more.get("delivery_id"),
                    "reason": sealed,
                }
            ],
        )
        return answer_id

    @staticmethod
    async def _stop_deadlines(conn: AsyncConnection, referral_id: str, now: datetime) -> None:
        await cancel_deadlines(conn, referral_id, now)

    async def _read(self, referral_id: str, allowed: frozenset[State]) -> ReferralRecord:
        async with self._db.read() as conn:
            row = await find_referral(conn, referral_id)
        if row is None or row.state not in allowed or row.content is None:
            raise AnswerError(f"This referral cannot be answered now: it is {row.state if row else 'gone'}.")
        return row

    # --- not ours: another team ----------------------------------------------------------------

    async def to_team(self, user_id: str, referral_id: str, team_id: str, reason_text: str) -> Answered:
        reason = _reason(reason_text)
        team = self._s.find_team(team_id)
        if team is None:
            raise AnswerError("Choose the team it should go to from the list", "destination")
        row = await self._read(referral_id, ANSWERABLE)
        if team.id == row.team_id:
            raise AnswerError(f"It is already with {team.name}: choose another team", "destination")
        now = self._clock.now()
        assert row.content is not None
        content = self._sealed.content(row.id, row.content)
        route_name = row.route_name if any(r.name == row.route_name for r in self._s.routes) else None
        route_name = route_name or next((r.name for r in self._s.routes if r.default), self._s.routes[-1].name)
        # Prepared before the write (encrypting alerts takes time), as the deadline tracker does.
        dispatched = await self._dispatcher.first(
            referral=content.referral,
            referral_id=row.id,
            reference=row.reference,
            received_at=now,  # the new team's deadline runs from now, when it is given the referral
            now=now,
            facts=Facts(at=now, channel=row.channel, organisation=None),
            security=None,
            content=AlertContent(content.referral, ()),
            at_intake=RoutedAtIntake(route_name, team.id, True, f"answered not ours by a duty worker: to {team.id}"),
        )
        actor = f"user:{user_id}"
        async with self._db.write() as conn:
            locked = await self._locked(conn, referral_id, ANSWERABLE)
            if locked.team_id != row.team_id:
                raise AnswerError("This referral changed meanwhile: look again.")
            answer_id = await self._record(conn, row, "not_ours_team", user_id, reason, now, target=team.id)
            await self._stop_deadlines(conn, row.id, now)
            await self._new_deadlines(conn, row.id, dispatched)
            batch = self._rerouted_events(row, dispatched, now, actor, answer_id)
            batch += await queue_outgoing(conn, self._sealed, row.id, dispatched.outgoing, now, "gateway")
            told = {"to_name": team.name, "to_phone": team.phone}
            batch += await self._referrers.tell(conn, row, "not_ours_notice", told, now, "gateway")
            await transition(
                conn,
                row.id,
                batch,
                team_id=team.id,
                route_name=route_name,
                due_at=dispatched.due_at,
                acknowledged_at=None,
                acknowledged_by=None,
            )
        log.info("answers: referral %s re-routed from team %s to team %s", row.reference, row.team_id, team.id)
        return Answered(row.reference, "not_ours_team", team.name)

    @staticmethod
    async def _new_deadlines(conn: AsyncConnection, referral_id: str, dispatched: Dispatched) -> None:
        due: list[dict[str, object]] = [
            {"referral_id": referral_id, "kind": "ack", "due_at": dispatched.due_at}
            | {"chain": None, "step": None, "round": None}
        ]
        if dispatched.next_step is not None:
            due.append(dispatched.next_step.row(referral_id))
        await conn.execute(deadlines.insert(), due)

    @staticmethod
    def _rerouted_events(
        row: ReferralRecord, dispatched: Dispatched, now: datetime, actor: str, answer_id: str
    ) -> list[audit.Event]:
        events: list[audit.Event] = []
        for kind, detail in dispatched.events:
            if kind == "routed":
                # The person's answer is the move; the gateway's alerts and steps follow from it.
                extra = {"from_team": row.team_id, "answer": answer_id}
                if dispatched.encryption_failed:
                    extra["encryption_failed"] = ", ".join(dispatched.encryption_failed)
                events.append(audit.Event(row.id, now, actor, "rerouted", {**detail, **extra}))
            else:
                events.append(audit.Event(row.id, now, "gateway", kind, detail))
        return events

    # --- not ours: another authority -----------------------------------------------------------

    async def to_neighbour(self, user_id: str, by: str, referral_id: str, name: str, reason_text: str) -> Answered:
        reason = _reason(reason_text)
        neighbour = find_neighbour(self._s.neighbours, name)
        if neighbour is None:
            raise AnswerError(
                "Choose the authority it should go to from the list of neighbouring authorities", "destination"
            )
        row = await self._read(referral_id, ANSWERABLE)
        now = self._clock.now()
        forward, encrypted = await self._mail.forward(row, neighbour, by, reason, now)
        actor = f"user:{user_id}"
        async with self._db.write() as conn:
            await self._locked(conn, referral_id, ANSWERABLE)
            batch = await queue_outgoing(conn, self._sealed, row.id, [forward], now, actor)
            delivery_id = str(batch[0].detail["delivery"])
            answer_id = await self._record(
                conn, row, "not_ours_authority", user_id, reason, now, target=neighbour.name, delivery_id=delivery_id
            )
            await self._stop_deadlines(conn, row.id, now)
            detail = {"neighbour": neighbour.name, "delivery": delivery_id, "encrypted": encrypted, "answer": answer_id}
            batch.insert(0, audit.Event(row.id, now, actor, "forwarding", detail))
            told = {"to_name": neighbour.name, "to_phone": neighbour.phone}
            batch += await self._referrers.tell(conn, row, "not_ours_notice", told, now, "gateway")
            await transition(conn, row.id, batch)
        log.info("answers: referral %s forwarded to a neighbouring authority (encrypted: %s)", row.reference, encrypted)
        return Answered(row.reference, "not_ours_authority", neighbour.name)

    # --- more information needed ---------------------------------------------------------------

    async def more_information(self, user_id: str, referral_id: str, reason_text: str) -> Answered:
        reason = _reason(reason_text)
        acknowledged = frozenset({State.ACKNOWLEDGED})
        try:
            row = await self._read(referral_id, acknowledged)
        except AnswerError:
            raise AnswerError("Acknowledge the referral before you ask the referrer for more information") from None
        now = self._clock.now()
        async with self._db.read() as conn:
            channel, to = await self._referrers.address_of(conn, row)
        if not to:
            raise AnswerError(
                "The gateway has no address for this referrer (no receipt went to them): phone them instead"
            )
        request, encrypted = await self._mail.request(row, channel, to, reason, now)
        actor = f"user:{user_id}"
        async with self._db.write() as conn:
            await self._locked(conn, referral_id, acknowledged)
            answer_id = await self._record(conn, row, "more_info", user_id, reason, now, target=channel)
            batch = [
                audit.Event(
                    row.id,
                    now,
                    actor,
                    "information_requested",
                    {"answer": answer_id, "by": channel, "encrypted": encrypted},
                )
            ]
            batch += await queue_outgoing(conn, self._sealed, row.id, [request], now, actor)
            await transition(conn, row.id, batch)
        log.info("answers: more information requested for referral %s (encrypted: %s)", row.reference, encrypted)
        return Answered(row.reference, "more_info", channel)

    # --- duplicate of REF ----------------------------------------------------------------------

    async def duplicate(
        self, user_id: str, referral_id: str, typed: str, reason_text: str, may_see: Callable[[str | None], bool]
    ) -> Answered:
        """`may_see(team_id)`: whether the user may see a referral of that team (the web page's
        rule): a reference they may not see is refused as if it did not exist."""
        reason = _reason(reason_text)
        try:
            reference = normalise_reference(typed)
        except InvalidReference as exc:
            raise AnswerError(f"Give the reference of the referral this one duplicates. {exc}", "of") from None
        async with self._db.read() as conn:
            other = (
                await conn.execute(
                    select(referrals.c.id, referrals.c.team_id).where(referrals.c.reference == reference)
                )
            ).first()
        if other is None or not may_see(other.team_id):
            raise AnswerError(f"There is no referral {reference} that you may see: check the reference", "of")
        if other.id == referral_id:
            raise AnswerError("A referral cannot be a duplicate of itself: give the other referral's reference", "of")
        now = self._clock.now()
        actor = f"user:{user_id}"
        async with self._db.write() as conn:
            # Both rows locked at once, in id order (gateway.core.transitions: the lock order).
            await lock(conn, [referral_id, other.id])
            row = await self._locked(conn, referral_id, ANSWERABLE)
            original = await find_referral(conn, other.id)
            assert original is not None
            if original.state in (State.DUPLICATE, State.REPEAT, State.REPLY):
                raise AnswerError(
                    f"{reference} is itself {original.state}: give the reference of the referral being dealt with",
                    "of",
                )
            answer_id = await self._record(conn, row, "duplicate", user_id, reason, now, target=original.id)
            await self._stop_deadlines(conn, row.id, now)
            mine = [
                audit.Event(
                    row.id, now, actor, "duplicate", {"of": reference, "original": original.id, "answer": answer_id}
                )
            ]
            mine += await self._referrers.tell(conn, row, "duplicate_notice", {}, now, "gateway")
            theirs = [
                audit.Event(
                    original.id, now, actor, "duplicate_linked", {"duplicate": row.reference, "referral": row.id}
                )
            ]
            await transitions(conn, {row.id: mine, original.id: theirs})
        log.info("answers: referral %s closed as a duplicate of %s", row.reference, reference)
        return Answered(row.reference, "duplicate", reference)

"""Coordinators' decisions: the recorded act that takes an item off the report.

DESIGN.md: "Nothing leaves the report by itself: only acknowledgement, closure or a coordinator's
recorded decision ends a referral's time on it." A decision says who (a user id), when (the
injected clock) and what (a code from WHAT), with an optional note. The note is free text and may
name a child or a family, so it is sealed at rest and never logged.

A decision on a referral is written in one transaction with its audit event (kind "decision",
actor "user:<id>", no personal data in the detail), through track.transition so the referral row
is locked in the usual order. A text held over its SMS rate limit has no referral and so no audit
event: its decision row is the record.

A decision covers what was wrong when it was taken. If a delivery of that referral dies, or the
referral becomes undeliverable or quarantined, after the decision, the referral is back on the
report (a new failure is news nobody has decided on yet).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.db import Database
from gateway.core.schema import decisions, events, referrals, sms_webhooks, users
from gateway.core.sealed import Sealed
from gateway.core.transitions import transition
from gateway.staff.users import Role, User

log = logging.getLogger(__name__)

# What a coordinator did about an item: code -> words shown. Codes are stored; keep them stable.
WHAT: dict[str, str] = {
    "phoned_team": "Contacted the team by phone",
    "resent": "Re-sent manually",
    "passed_on": "Passed to another area",
    "false_alarm": "False alarm or duplicate",
    "other": "Other (say what in the note)",
}
NOTE_REQUIRED = frozenset({"other"})
MAX_NOTE = 2000
# Events after a decision that put the referral back on the report.
REOPENING = ("delivery_dead", "undeliverable", "quarantined")
_REFERRAL = "referral:"
_SMS = "sms:"


class DecisionError(Exception):
    """A decision that cannot be recorded; the message is for the coordinator, and names no person."""


class AlreadyDecided(DecisionError):
    pass


def referral_key(referral_id: str) -> str:
    return _REFERRAL + referral_id


def sms_key(message_sid: str) -> str:
    return _SMS + message_sid


@dataclass(frozen=True)
class Decision:
    id: str
    item_key: str
    referral_id: str | None
    decided_by: str
    decided_at: datetime
    what: str
    reference: str  # the referral's reference, or "SMS" and the end of a held text's SID


@dataclass(frozen=True)
class Shown:
    """A decision as the report page lists it (the note opened)."""

    reference: str
    decided_by: str  # the user's display name
    decided_at: datetime
    what: str  # the words from WHAT
    note: str


def check(what: str, note: str) -> str:
    """The note, tidied; raises DecisionError when the choice or the note will not do."""
    if what not in WHAT:
        raise DecisionError("Choose what was done about this item")
    note = note.replace("\r\n", "\n").strip()
    if len(note) > MAX_NOTE:
        raise DecisionError(f"The note must be {MAX_NOTE} characters or fewer")
    if what in NOTE_REQUIRED and not note:
        raise DecisionError("Say in the note what was done")
    return note


async def covered(conn: AsyncConnection, referral_ids: Iterable[str] = ()) -> set[str]:
    """Item keys that a decision currently takes off the report."""
    latest = (
        await conn.execute(
            select(decisions.c.item_key, func.max(decisions.c.decided_at).label("at")).group_by(decisions.c.item_key)
        )
    ).all()
    if not latest:
        return set()
    decided = {row.item_key: row.at for row in latest}
    ids = [key.removeprefix(_REFERRAL) for key in decided if key.startswith(_REFERRAL)]
    wanted = set(referral_ids)
    if wanted:
        ids = [i for i in ids if i in wanted]
    reopened = {
        row.referral_id: row.at
        for row in (
            await conn.execute(
                select(events.c.referral_id, func.max(events.c.at).label("at"))
                .where(events.c.kind.in_(REOPENING), events.c.referral_id.in_(ids))
                .group_by(events.c.referral_id)
            )
        ).all()
    }
    out: set[str] = set()
    for key, at in decided.items():
        again = reopened.get(key.removeprefix(_REFERRAL)) if key.startswith(_REFERRAL) else None
        if again is None or _utc(again) <= _utc(at):
            out.add(key)
    return out


def _utc(when: datetime | str) -> datetime:
    # Defensive: MAX() keeps the column's type, but a driver may hand back text or a naive time.
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


async def record(
    db: Database, sealed: Sealed, user: User, item_key: str, what: str, note: str, now: datetime
) -> Decision:
    """Record a coordinator's decision on one report item, with its audit event, in one transaction."""
    if user.role is not Role.COORDINATOR or not user.active:
        raise PermissionError("only a coordinator records decisions")
    note = check(what, note)
    decision_id = uuid.uuid4().hex
    async with db.write() as conn:
        referral_id, reference = await _item(conn, item_key)
        if item_key in await covered(conn, [referral_id] if referral_id else []):
            raise AlreadyDecided("A decision on this item has been recorded already")
        await conn.execute(
            decisions.insert().values(
                id=decision_id,
                item_key=item_key,
                referral_id=referral_id,
                decided_by=user.id,
                decided_at=now,
                what=what,
                note=sealed.seal_note(decision_id, note) if note else None,
            )
        )
        if referral_id is not None:
            event = audit.Event(
                referral_id, now, f"user:{user.id}", "decision", {"decision": decision_id, "what": what}
            )
            await transition(conn, referral_id, [event])
    log.info("decision %s (%s) on %s by user %s", decision_id, what, item_key.split(":")[0], user.id)
    return Decision(decision_id, item_key, referral_id, user.id, now, what, reference)


def _held_reference(message_sid: str) -> str:
    return f"SMS {message_sid[-8:]}"  # as gateway.report.undelivered shows it


async def _item(conn: AsyncConnection, item_key: str) -> tuple[str | None, str]:
    """The referral id (None for a held text) and reference of an item; DecisionError if none."""
    if item_key.startswith(_REFERRAL):
        found = (
            await conn.execute(
                # Locked first (track's lock order: referral rows, then the audit head), so two
                # coordinators deciding at once on PostgreSQL queue here and the second sees the first.
                select(referrals.c.id, referrals.c.reference)
                .where(referrals.c.id == item_key.removeprefix(_REFERRAL))
                .with_for_update()
            )
        ).first()
        if found is not None:
            return str(found.id), str(found.reference)
    elif item_key.startswith(_SMS):
        held = (
            await conn.execute(
                select(sms_webhooks.c.id).where(
                    sms_webhooks.c.kind == "inbound", sms_webhooks.c.message_sid == item_key.removeprefix(_SMS)
                )
            )
        ).first()
        if held is not None:
            return None, _held_reference(item_key.removeprefix(_SMS))
    raise DecisionError("This item is not on the report any more: reload the report")


async def recent(db: Database, sealed: Sealed, since: datetime, limit: int = 50) -> list[Shown]:
    """Decisions taken since `since`, newest first, with their notes opened."""
    async with db.read() as conn:
        rows = (
            await conn.execute(
                select(decisions, referrals.c.reference, users.c.display_name)
                .outerjoin(referrals, referrals.c.id == decisions.c.referral_id)
                .join(users, users.c.id == decisions.c.decided_by)
                .where(decisions.c.decided_at >= since)
                .order_by(decisions.c.decided_at.desc(), decisions.c.id)
                .limit(limit)
            )
        ).all()
    out = []
    for r in rows:
        reference = r.reference or _held_reference(r.item_key.removeprefix(_SMS))
        note = sealed.note(r.id, r.note) if r.note is not None else ""
        out.append(Shown(reference, r.display_name, r.decided_at, WHAT.get(r.what, r.what), note))
    return out

"""What the staff dashboard shows, read from the store: the queues, one referral, its timeline,
earlier referrals about the same child, and the closure with its outcome.

The web pages (gateway.web.dashboard) only render what these functions return. Who may see what is
decided here, in `may_see`, and every function that returns content takes the user.

Earlier referrals about the same child are looked up in the child index (gateway.history.index:
keyed hashes of the NHS number, name + date of birth, and date of birth + postcode; no identifier
is stored in clear, DESIGN.md, Security rules), and only the referrals it names are opened, to show
them and to confirm the match. Until `referral-gateway reindex` has built the index for the current
key (after the upgrade that added it, or a replaced index key), every older referral is opened and
compared instead, as before the index: slower, but no earlier referral is missed meanwhile.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from gateway.config import Settings
from gateway.core import audit
from gateway.core.clock import LONDON
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.model import Child, Referral
from gateway.core.records import ReferralRecord, find_referral
from gateway.core.schema import events, messages, referrals
from gateway.core.sealed import Sealed
from gateway.history import concern
from gateway.history import index as child_index
from gateway.history.keys import KINDS, WHY, Hasher, identifiers
from gateway.open.attachments import read_attachments
from gateway.open.identity import Identity
from gateway.open.mime import Attachment
from gateway.report.plain_words import state_words, urgency_words
from gateway.report.retention import period_in_words
from gateway.report.timeline import step_text
from gateway.report.undelivered import human
from gateway.staff.users import Role, User

log = logging.getLogger(__name__)

OPEN_STATES = (State.ROUTED, State.ALERTED, State.UNDELIVERABLE)
ACKNOWLEDGEABLE = frozenset(OPEN_STATES)
_URGENCY_RANK = {"immediate": 0, "urgent": 1, "standard": 2}
REFERRAL_ID = re.compile(r"[0-9a-f]{32}")


def may_see(user: User, team_id: str | None, triage: str | None = None) -> bool:
    """Coordinators see every referral (also those not routed yet); duty workers those of their
    teams, and, when `triage` names one of their teams, a referral routed to no team (quarantined):
    the triage team is alerted to look at it, so its link must open for them; administrators none."""
    if user.role is Role.COORDINATOR:
        return True
    if team_id is None:
        return triage is not None and user.may_see_team(triage)
    return user.may_see_team(team_id)


# --- the queues -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    id: str
    reference: str
    urgency: str | None
    state: str
    incomplete: bool
    received_at: datetime
    due_at: datetime | None
    left: timedelta | None  # negative: late
    step: str  # the escalation chain's latest step, "" before any

    @property
    def late(self) -> bool:
        return self.left is not None and self.left <= timedelta(0)

    @property
    def time_left(self) -> str:
        if self.left is None:
            return "no deadline"
        # Under a minute, human() says "00m": "late by 00m" read as "not late" to a duty worker.
        if abs(self.left) < timedelta(minutes=1):
            return "late by less than a minute" if self.late else "less than a minute left"
        return f"late by {human(-self.left)}" if self.late else f"{human(self.left)} left"

    @property
    def urgency_words(self) -> str:
        return urgency_words(self.urgency)

    @property
    def state_words(self) -> str:
        return state_words(self.state)


@dataclass
class TeamQueue:
    team_id: str
    team_name: str
    rows: list[QueueRow] = field(default_factory=list)


def urgency_order(row: QueueRow) -> tuple[bool, datetime, int, datetime, str]:
    """Most urgent first: the earliest deadline (the latest first of the late ones), then the
    urgency, then the oldest; a referral without a deadline after those with one."""
    return (
        row.due_at is None,
        row.due_at or row.received_at,
        _URGENCY_RANK.get(row.urgency or "", 3),
        row.received_at,
        row.reference,
    )


async def queues(db: Database, settings: Settings, user: User, now: datetime) -> list[TeamQueue]:
    """The open referrals (routed, alerted or undeliverable: not acknowledged) of every team the
    user may see, each team's most urgent first; teams in config order, then any no longer in it."""
    if user.role is Role.ADMIN:
        return []
    query = select(
        referrals.c.id,
        referrals.c.reference,
        referrals.c.urgency,
        referrals.c.state,
        referrals.c.incomplete,
        referrals.c.received_at,
        referrals.c.due_at,
        referrals.c.team_id,
    ).where(referrals.c.state.in_([s.value for s in OPEN_STATES]), referrals.c.acknowledged_at.is_(None))
    if user.role is Role.DUTY:
        query = query.where(referrals.c.team_id.in_(user.teams))
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
        steps = (
            await conn.execute(
                select(events.c.referral_id, events.c.detail)
                .where(events.c.kind == "escalation_step", events.c.referral_id.in_([r.id for r in rows]))
                .order_by(events.c.id)
            )
        ).all()
    latest: dict[str, str] = {}
    for step in steps:
        detail = json.loads(step.detail)
        if "step" in detail:
            latest[step.referral_id] = step_text(detail)
    by_team: dict[str, TeamQueue] = {}
    order = [t.id for t in settings.teams if may_see(user, t.id)]
    for team_id in order:
        by_team[team_id] = TeamQueue(team_id, settings.team_name(team_id))
    for r in rows:
        if not may_see(user, r.team_id):
            continue
        queue = by_team.setdefault(r.team_id, TeamQueue(r.team_id, settings.team_name(r.team_id)))
        queue.rows.append(
            QueueRow(
                id=r.id,
                reference=r.reference,
                urgency=r.urgency,
                state=r.state,
                incomplete=bool(r.incomplete),
                received_at=r.received_at,
                due_at=r.due_at,
                left=(r.due_at - now) if r.due_at else None,
                step=latest.get(r.id, ""),
            )
        )
    for queue in by_team.values():
        queue.rows.sort(key=urgency_order)
    return list(by_team.values())


# --- one referral ---------------------------------------------------------------------------------


async def load(db: Database, referral_id: str) -> ReferralRecord | None:
    """The referral row, or None for an id that is not one (never an error: the caller answers
    the same whether it does not exist or may not be seen)."""
    if not REFERRAL_ID.fullmatch(referral_id):
        return None
    async with db.read() as conn:
        return await find_referral(conn, referral_id)


def open_content(sealed: Sealed, referral_id: str, blob: bytes | None) -> Referral | None:
    if blob is None:  # not read yet, or quarantined
        return None
    return sealed.content(referral_id, blob).referral


async def record(db: Database, referral_id: str, user: User, now: datetime, kind: str, **detail: object) -> None:
    """An audited event by a staff user that does not move the referral (viewed, attachment_opened).
    Written before the content is shown: if the audit cannot be written, nothing is shown."""
    async with db.write() as conn:
        await audit.append(
            conn, [audit.Event(referral_id, now, f"user:{user.id}", kind, {"role": user.role.value, **detail})]
        )


async def attachments(
    db: Database, sealed: Sealed, identity: Identity, row: ReferralRecord
) -> tuple[tuple[Attachment, ...], str | None]:
    """The attachments of an email referral, and a note when they could not be read here."""
    if row.channel != "email":
        return (), None
    if row.purged_at is not None:  # the raw message went with the content
        return (), "The attachments were removed with the content."
    async with db.read() as conn:
        message = (
            await conn.execute(select(messages.c.raw).where(messages.c.id == row.message_id))
        ).scalar_one_or_none()
    if message is None:
        return (), None
    return await read_attachments(identity, sealed.raw(row.message_id, message))


async def purged_notice(db: Database, row: ReferralRecord) -> str | None:
    """What the referral page says in place of purged content; None while the content is kept."""
    if row.purged_at is None:
        return None
    async with db.read() as conn:
        detail = (
            await conn.execute(
                select(events.c.detail)
                .where(events.c.referral_id == row.id, events.c.kind == "purged")
                .order_by(events.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    closed_after = str(json.loads(detail).get("closed_after", "")) if detail else ""
    why = f" (closed more than {period_in_words(closed_after)})" if closed_after else ""
    day = row.purged_at.astimezone(LONDON).strftime("%d %B %Y")
    return f"The content of this referral was removed on {day} under the retention policy{why}."


async def repeat_of(db: Database, row: ReferralRecord) -> tuple[str, str] | None:
    """A repeat's earlier referral (id, reference), from its 'repeat' event; None for any other."""
    if row.state != State.REPEAT:
        return None
    async with db.read() as conn:
        detail = (
            await conn.execute(
                select(events.c.detail).where(events.c.referral_id == row.id, events.c.kind == "repeat").limit(1)
            )
        ).scalar_one_or_none()
    found = json.loads(detail) if detail else {}
    return (str(found["original"]), str(found["of"])) if "original" in found and "of" in found else None


# --- earlier referrals about the same child --------------------------------------------------------


def same_child(a: Child, b: Child) -> str | None:
    """Why two referrals are about the same child, or None: the same NHS number, the same name
    (ignoring case and spacing) and date of birth, or the same date of birth and postcode."""
    mine, theirs = identifiers(a), identifiers(b)
    for kind in KINDS:
        if kind in mine and mine[kind] == theirs.get(kind):
            return WHY[kind]
    return None


@dataclass(frozen=True)
class Earlier:
    id: str
    reference: str
    received_at: datetime
    team: str
    state: str
    why: str


_EARLIER_COLUMNS = (
    referrals.c.id,
    referrals.c.reference,
    referrals.c.received_at,
    referrals.c.team_id,
    referrals.c.state,
    referrals.c.content,
)


async def earlier(
    db: Database,
    sealed: Sealed,
    settings: Settings,
    user: User,
    row: ReferralRecord,
    child: Child,
    hasher: Hasher,
) -> list[Earlier]:
    """Referrals received before this one about the same child that the user may see, newest first."""
    if not identifiers(child):
        return []
    query = select(*_EARLIER_COLUMNS).where(
        referrals.c.id != row.id,
        referrals.c.received_at <= row.received_at,
        referrals.c.content.is_not(None),
    )
    async with db.read() as conn:
        if await child_index.complete(conn, hasher):
            linked = await child_index.matches(conn, hasher.digests(child), exclude=row.id, until=row.received_at)
            query = query.where(referrals.c.id.in_(sorted(linked)))
        others = (await conn.execute(query.order_by(referrals.c.received_at.desc(), referrals.c.id))).all()
    found: list[Earlier] = []
    for other in others:
        if not may_see(user, other.team_id):
            continue
        # Opened to show it and to confirm the match (a keyed hash is not the identifier itself).
        content = open_content(sealed, other.id, other.content)
        why = same_child(child, content.child) if content else None
        if why:
            team = settings.team_name(other.team_id) if other.team_id else "not routed"
            found.append(Earlier(other.id, other.reference, other.received_at, team, other.state, why))
    return found


async def concern_banner(db: Database, row: ReferralRecord) -> str | None:
    """Why this referral raised a cumulative concern (gateway.history.concern), or None."""
    async with db.read() as conn:
        detail = (
            await conn.execute(
                select(events.c.detail)
                .where(events.c.referral_id == row.id, events.c.kind == concern.EVENT)
                .order_by(events.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    if detail is None:
        return None
    words = concern.text(json.loads(detail))
    told = "none was urgent on its own. The team's managers and the coordinators were alerted."
    return f"{words[:1].upper()}{words[1:]}: {told}"

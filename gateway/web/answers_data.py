"""What the referral page shows of structured answers (gateway.track.answers): the answers given,
with their reasons (sealed: opened only for this signed-in, audited view), the additional
information a referrer sent back, whether the team is waiting for it, and which answers the user
may give now."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from sqlalchemy import select

from gateway.config import Settings
from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.records import ReferralRecord
from gateway.core.schema import additional_info, answers, events, referrals
from gateway.core.sealed import Sealed
from gateway.pipeline.replies import additional_info_context
from gateway.staff.users import Role, User
from gateway.track.answers import ANSWERABLE, KINDS, answer_reason_context

# Which answer form a refused answer came from, so the page shows the error beside it.
ANSWER_FORM: web.RequestKey[str] = web.RequestKey("answer_form", str)


@dataclass(frozen=True)
class GivenAnswer:
    at: datetime
    kind: str  # in words
    target: str  # in words
    by: str
    reason: str


@dataclass(frozen=True)
class AdditionalItem:
    at: datetime
    text: str
    attachments: tuple[str, ...]  # file names


def waiting_since(kinds_at: list[tuple[str, datetime]]) -> datetime | None:
    """When the latest request for more information still unanswered was made, if any."""
    since: datetime | None = None
    for kind, at in kinds_at:
        if kind == "information_requested":
            since = since or at
        elif kind == "information_received":
            since = None
    return since


async def view(
    db: Database, sealed: Sealed, settings: Settings, row: ReferralRecord, user: User, names: Mapping[str, str]
) -> dict[str, object]:
    """The page's context for the answers part (templates/web/staff/answers.html); `names`: staff
    display names by user id."""
    async with db.read() as conn:
        given = (
            await conn.execute(select(answers).where(answers.c.referral_id == row.id).order_by(answers.c.answered_at))
        ).all()
        items = (
            await conn.execute(
                select(additional_info)
                .where(additional_info.c.referral_id == row.id)
                .order_by(additional_info.c.received_at)
            )
        ).all()
        reply = (
            (
                await conn.execute(
                    select(events.c.detail).where(events.c.referral_id == row.id, events.c.kind == "reply").limit(1)
                )
            ).scalar_one_or_none()
            if row.state == State.REPLY
            else None
        )
        marks = (
            await conn.execute(
                select(events.c.kind, events.c.at)
                .where(
                    events.c.referral_id == row.id,
                    events.c.kind.in_(("information_requested", "information_received")),
                )
                .order_by(events.c.id)
            )
        ).all()
        others = {
            r.id: r.reference
            for r in await conn.execute(
                select(referrals.c.id, referrals.c.reference).where(
                    referrals.c.id.in_([a.target for a in given if a.kind == "duplicate"])
                )
            )
        }
    answered = [
        GivenAnswer(
            a.answered_at,
            KINDS.get(a.kind, a.kind),
            _target(settings, a.kind, a.target, others),
            names.get(a.answered_by, "a staff user"),
            sealed.sealer.open(a.reason, answer_reason_context(a.id)).decode() if a.reason else "(removed)",
        )
        for a in given
    ]
    additional = [_item(sealed, i.id, i.received_at, i.content) for i in items]
    may_answer = user.role is not Role.ADMIN and row.state in ANSWERABLE
    reply_of = json.loads(reply) if reply else None
    return {
        # A reply threaded onto another referral: which one (its text is shown there).
        "reply_of": (str(reply_of.get("original", "")), str(reply_of.get("to", "?"))) if reply_of else None,
        "answers_given": answered,
        "additional": additional,
        "waiting_since": waiting_since([(m.kind, m.at) for m in marks]) if row.state == State.ACKNOWLEDGED else None,
        "may_answer": may_answer,
        "may_ask": may_answer and row.state == State.ACKNOWLEDGED,
        "other_teams": [(t.id, t.name) for t in settings.teams if t.id != row.team_id],
        "neighbours": [(n.name, bool(n.openpgp or n.smime_cert)) for n in settings.neighbours],
    }


def _target(settings: Settings, kind: str, target: str | None, others: dict[str, str]) -> str:
    if kind == "not_ours_team":
        return settings.team_name(target or "")
    if kind == "duplicate":
        return others.get(target or "", "?")
    if kind == "more_info":
        return f"asked by {target}"
    return target or ""


def _item(sealed: Sealed, item_id: str, at: datetime, blob: bytes | None) -> AdditionalItem:
    if blob is None:
        return AdditionalItem(at, "(removed under the retention policy)", ())
    data = json.loads(sealed.sealer.open(blob, additional_info_context(item_id)))
    return AdditionalItem(at, str(data.get("text", "")), tuple(str(f) for f in data.get("attachments", [])))

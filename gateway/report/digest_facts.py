"""What the daily digest says, read from the store: counts by team and state, the references (never
anything else about a referral) of what is late, undelivered or quarantined, and the outbox's health.

The referral lists are the report's own (gateway.report.undelivered), so the digest and the
coordinators' report never disagree about what needs a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import Settings
from gateway.core.db import snapshot
from gateway.core.lifecycle import State
from gateway.core.schema import deliveries, digests, messages, referrals
from gateway.report.answer_counts import AnswerCounts, answer_counts
from gateway.report.undelivered import undelivered

_ENDED = (State.CLOSED, State.REPEAT, State.FORWARDED, State.DUPLICATE, State.REPLY)
RECENT = timedelta(days=7)  # how far back failed digests are counted


@dataclass(frozen=True)
class Queue:
    kind: str
    pending: int
    oldest: datetime


@dataclass(frozen=True)
class TeamCounts:
    team: str  # the team's name, or "(not routed)"
    by_state: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


@dataclass
class DigestFacts:
    day: date
    now: datetime
    counts: list[TeamCounts] = field(default_factory=list)
    received_last_day: int = 0
    late: list[str] = field(default_factory=list)  # references only
    undelivered: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    queues: list[Queue] = field(default_factory=list)
    unprocessed: int = 0  # accepted messages not yet opened, parsed and routed
    unprocessed_oldest: datetime | None = None
    last_sent: datetime | None = None
    digests_failed: int = 0  # digest deliveries that failed for good in the last RECENT
    previous_digest: date | None = None
    warnings: list[str] = field(default_factory=list)  # keys, bank holidays, rota gaps (digest_health)
    answers: AnswerCounts = field(default_factory=AnswerCounts)  # answers given in the last 24 hours (issue 15)


async def gather(engine: AsyncEngine, settings: Settings, day: date, now: datetime) -> DigestFacts:
    facts = DigestFacts(day=day, now=now)
    d = deliveries.c
    async with snapshot(engine) as conn:
        counted = (
            await conn.execute(
                select(referrals.c.team_id, referrals.c.state, func.count())
                # Terminal states are left out: closed, and repeat (its earlier referral is counted);
                # forwarded, duplicate and reply (answers: another authority, or the other referral, has it).
                .where(referrals.c.state.not_in([s.value for s in _ENDED]))
                .group_by(referrals.c.team_id, referrals.c.state)
            )
        ).all()
        facts.answers = await answer_counts(conn, now - timedelta(days=1))
        facts.received_last_day = (
            await conn.execute(select(func.count()).where(referrals.c.received_at >= now - timedelta(days=1)))
        ).scalar_one()
        queues = (
            await conn.execute(
                select(d.kind, func.count(), func.min(d.created_at))
                .where(d.state == "pending")
                .group_by(d.kind)
                .order_by(d.kind)
            )
        ).all()
        facts.unprocessed, facts.unprocessed_oldest = (
            await conn.execute(
                select(func.count(), func.min(messages.c.received_at)).where(messages.c.processed_at.is_(None))
            )
        ).one()
        facts.last_sent = (await conn.execute(select(func.max(d.sent_at)).where(d.state == "sent"))).scalar_one()
        facts.digests_failed = (
            await conn.execute(
                select(func.count()).where(d.referral_id.is_(None), d.state == "dead", d.created_at >= now - RECENT)
            )
        ).scalar_one()
        facts.previous_digest = _day(
            (await conn.execute(select(func.max(digests.c.day)).where(digests.c.day < day.isoformat()))).scalar_one()
        )
    by_team: dict[str, dict[str, int]] = {}
    for team_id, state, count in counted:
        name = settings.team_name(team_id) if team_id else "(not routed)"
        by_team.setdefault(name, {})[state] = count
    facts.counts = [TeamCounts(team, by_team[team]) for team in sorted(by_team)]
    facts.queues = [Queue(kind, count, oldest) for kind, count, oldest in queues]
    lists = {"late": facts.late, "failed": facts.undelivered, "quarantined": facts.quarantined}
    for row in await undelivered(engine, settings, now):
        if row.key.startswith("referral:"):  # held texts are not referrals: they have no reference
            for kind, found in lists.items():
                if kind in row.kinds:
                    found.append(row.reference)
    return facts


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None

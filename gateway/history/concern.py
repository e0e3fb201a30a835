"""Cumulative concern: several referrals about one child, each below the urgent threshold, that
together call for a manager's eye (issue 15).

When a newly stored referral makes the referrals about the same child (by the index) within the
configured window reach the configured number, from at least the configured number of different
organisations, and none of them was urgent or immediate (those are escalated already), a concern is
raised: the pipeline alerts the team's managers and the coordinators and records the event on the
new referral's timeline. A set that overlaps one already raised within the window is not raised
again: the managers know of that child already, and every new referral is alerted as usual.

An organisation is the referrer's as the gateway knows it (the verified partner, else the one the
referrer gave, else the sender's mail domain), compared as a keyed hash; a referral with none known
counts towards the number of referrals but not of organisations.

One referral sent twice is one referral: a referral answered "duplicate of REF"
(gateway.track.answers) or closed as a repeat of signed content (gateway.pipeline.repeats) does not
count. A concern already raised before a copy was marked duplicate is kept: one that was sent is
never withdrawn silently, and the managers read the referrals behind it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core.lifecycle import State
from gateway.core.model import Urgency
from gateway.core.schema import events, referrals
from gateway.history import index

EVENT = "cumulative_concern"
# Copies of another referral, not referrals of their own. A repeat has no content and so is never
# in the index; it is named here as well so that nothing that ever indexes one makes it count.
NOT_COUNTED = frozenset({State.DUPLICATE.value, State.REPEAT.value})
# At most this many of the latest referrals about the child in the window, for each kind of
# identifier, are read per new referral. Without a bound a child referred very often (or a sender
# repeating one test child) makes every new referral read all the earlier ones, a cost that grows
# with each one: measured at 42% of the gateway's CPU in a benchmark that names one child
# throughout. A child with more referrals in the window than this is judged on the latest ones.
LATEST = 50


@dataclass(frozen=True)
class Rule:
    window: timedelta
    referrals: int
    organisations: int


@dataclass(frozen=True)
class Member:
    referral_id: str
    reference: str
    received_at: datetime
    urgency: str | None
    organisation: str | None  # keyed hash


@dataclass(frozen=True)
class Concern:
    members: tuple[Member, ...]  # oldest first; the last is the referral that raised it
    organisations: int
    window: timedelta

    def detail(self) -> dict[str, object]:
        """The event's detail: counts, the window and references (no personal data)."""
        return {
            "referrals": len(self.members),
            "organisations": self.organisations,
            "window": window_words(self.window),
            "linked": [m.reference for m in self.members[:-1]],
            "linked_ids": [m.referral_id for m in self.members[:-1]],
        }


def window_words(window: timedelta) -> str:
    if window % timedelta(days=1) == timedelta(0):
        days = window.days
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(window.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"


def text(detail: Mapping[str, object]) -> str:
    """'cumulative concern: 3 referrals in 30 days from 2 organisations (with AB12-CD34, ...)'."""
    linked = detail.get("linked")
    refs = ", ".join(str(r) for r in linked) if isinstance(linked, list) else ""
    return (
        f"cumulative concern: {detail.get('referrals', '?')} referrals in {detail.get('window', '?')} "
        f"from {detail.get('organisations', '?')} organisations" + (f" (with {refs})" if refs else "")
    )


def below_urgent(urgency: str | None) -> bool:
    # No urgency given is treated as immediate when alerting, so it is not below the threshold.
    return urgency == Urgency.STANDARD.value


def decide(new: Member, others: Sequence[Member], rule: Rule) -> Concern | None:
    """The concern `new` raises with the referrals linked to it in the window, or None."""
    members = tuple(sorted([*others, new], key=lambda m: (m.received_at, m.referral_id != new.referral_id)))
    if len(members) < rule.referrals or not all(below_urgent(m.urgency) for m in members):
        return None
    organisations = len({m.organisation for m in members if m.organisation})
    if organisations < rule.organisations:
        return None
    # The new referral last, whatever the clock said: it is the one that raised it.
    ordered = (*[m for m in members if m.referral_id != new.referral_id], new)
    return Concern(ordered, organisations, rule.window)


async def _already_raised(conn: AsyncConnection, ids: set[str], since: datetime) -> bool:
    """Whether a concern raised since `since` holds one of `ids` (as the raiser or a linked one)."""
    rows = await conn.execute(
        select(events.c.referral_id, events.c.detail).where(events.c.kind == EVENT, events.c.at >= since)
    )
    for row in rows:
        held = {row.referral_id, *(str(i) for i in json.loads(row.detail).get("linked_ids", []))}
        if held & ids:
            return True
    return False


async def check(
    conn: AsyncConnection,
    new: Member,
    digests: dict[str, str],
    rule: Rule,
    pending: Mapping[str, Member],
) -> Concern | None:
    """In the new referral's write transaction, after its index rows: the concern it raises, if any.
    `pending`: referrals of the same batch, whose columns are not written yet."""
    if not below_urgent(new.urgency):
        return None  # every member must be below urgent (decide), the new one too: nothing to read
    since = new.received_at - rule.window
    linked = await index.matches(
        conn, digests, exclude=new.referral_id, until=new.received_at, since=since, latest=LATEST
    )
    if len(linked) + 1 < rule.referrals:
        return None
    stored = {
        row.id: row
        for row in await conn.execute(
            select(referrals.c.id, referrals.c.reference, referrals.c.urgency).where(
                referrals.c.id.in_(sorted(linked)), referrals.c.state.not_in(sorted(NOT_COUNTED))
            )
        )
    }
    others = []
    for referral_id, match in linked.items():
        if referral_id in pending:
            others.append(pending[referral_id])
        elif referral_id in stored:
            row = stored[referral_id]
            others.append(Member(referral_id, row.reference, match.received_at, row.urgency, match.organisation))
    concern = decide(new, others, rule)
    if concern is None or await _already_raised(conn, {m.referral_id for m in concern.members}, since):
        return None
    return concern

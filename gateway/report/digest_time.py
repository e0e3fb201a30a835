"""When the daily digest is due: a Europe/London wall-clock time, once per London date. Pure.

The rule is "today's digest is due once London's wall clock has reached the configured time today",
so the two clock-change days need no special case in the caller:
- a time that does not exist (01:30 on the last Sunday of March: 01:00 GMT becomes 02:00 BST) is
  reached at the jump itself, 02:00 BST, the first moment the wall clock reads later than it;
- a time that happens twice (01:30 on the last Sunday of October) is reached at its first
  occurrence (BST); the second one finds the day's durable row and makes nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from gateway.core.clock import LONDON


def london_day(now: datetime) -> date:
    return now.astimezone(LONDON).date()


def is_due(now: datetime, at: time) -> bool:
    """Whether today's (London) digest is due at `now`: the wall clock has reached `at` today."""
    return now.astimezone(LONDON).time().replace(tzinfo=None) >= at


def due_at(day: date, at: time) -> datetime:
    """The instant (UTC) the digest of `day` became due: the first occurrence of `at` that day,
    or, when `at` falls in the spring-forward gap, the jump that skips it."""
    first = datetime.combine(day, at, LONDON).astimezone(UTC)  # fold=0: the earlier offset
    if first.astimezone(LONDON).time().replace(tzinfo=None) == at:
        return first
    # In the gap: fold=0 resolved it with the offset before the jump (too late by the jump's size),
    # fold=1 with the one after (too early). The jump lies between, on a whole minute.
    early = datetime.combine(day, at, LONDON).replace(fold=1).astimezone(UTC)
    moment = early
    while moment < first and not is_due(moment, at):
        moment += timedelta(minutes=1)
    return moment

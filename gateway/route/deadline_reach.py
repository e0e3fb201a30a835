"""How long a deadline can take on the clock: for every team and urgency, the longest clock time
between receiving a referral and its acknowledgement deadline, for referrals received at any instant
of the coming weeks. Working time stops when the office closes, so "4 working hours" at 16:55 on
Christmas Eve is days away. check-config warns over `[deadlines] warn_clock_hours`. Pure over config.

Only a few instants need trying, not every minute: while the office is open a working-time deadline
moves with the clock (the gap stays the same, or grows as the deadline crosses a closed night), and
while it is shut the deadline stands still (the gap shrinks). So the longest gap is reached just
before a close; for "end of next working day" it is at the start of a day. We try five minutes
before each close (a time a referrer might well send at) and each midnight.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from gateway.config import Settings
from gateway.config.duty import Team
from gateway.core.clock import LONDON
from gateway.core.model import Urgency
from gateway.duty.deadline_rules import due_at
from gateway.duty.schedule import Schedule, local_date, local_to_utc, open_intervals
from gateway.route.handover import out_of_hours_team

BEFORE_CLOSE = timedelta(minutes=5)


@dataclass(frozen=True)
class LongDeadline:
    team: str
    urgency: Urgency
    received: datetime
    due: datetime
    limit_hours: int

    @property
    def hours(self) -> float:
        return (self.due - self.received) / timedelta(hours=1)

    def text(self) -> str:
        def when(at: datetime) -> str:
            local = at.astimezone(LONDON)
            return f"{local:%H:%M} on {local.day} {local:%b}"

        due = self.due.astimezone(LONDON)
        return (
            f"{self.urgency.value} on team {self.team}: a referral at {when(self.received)} is due "
            f"{due.day} {due:%b %H:%M}, {self.hours:.4g} clock hours (over {self.limit_hours}); "
            f"add a hand-over at close (hand_over_at_close on the team) or give it a shorter deadline"
        )


def _candidates(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    found = [start]
    for low, high in open_intervals(schedule, start, end):
        found.append(max(low, high - BEFORE_CLOSE))
    day = local_date(start)
    while (midnight := local_to_utc(day, time(0, 0))) < end:
        if midnight >= start:
            found.append(midnight)
        day += timedelta(days=1)
    return sorted(set(found))


def covered(settings: Settings, team: Team, urgency: Urgency) -> bool:
    """Handed over at close on every route to the team, so its own deadline ends at the close."""
    if urgency not in team.hand_over_at_close or settings.schedule_of(team) is None:
        return False
    routes = [r for r in settings.routes if r.team == team.id]
    return all(out_of_hours_team(settings, r.name) is not None for r in routes)


def longest(settings: Settings, team: Team, urgency: Urgency, start: datetime, days: int) -> tuple[datetime, datetime]:
    """(received, due) with the longest clock time between them for referrals in the window."""
    rule = settings.deadline_rule(team, urgency)
    schedule = settings.schedule_for(team)
    if rule.kind == "clock":
        return start, start + rule.amount
    pairs = [(t, due_at(rule, t, schedule)) for t in _candidates(schedule, start, start + timedelta(days=days))]
    return max(pairs, key=lambda p: (p[1] - p[0], -p[0].timestamp()))


def long_deadlines(settings: Settings, start: datetime, days: int = 28) -> list[LongDeadline]:
    """Every team and urgency whose deadline can exceed `warn_clock_hours` (none when it is unset)."""
    limit = settings.deadlines.warn_clock_hours
    if limit is None:
        return []
    found = []
    for team in settings.teams:
        for urgency in Urgency:
            if covered(settings, team, urgency):
                continue
            received, due = longest(settings, team, urgency, start, days)
            if due - received > timedelta(hours=limit):
                found.append(LongDeadline(team.id, urgency, received, due, limit))
    return found

"""Hand-over at close: when a team's office closes for the day, its open referrals of the urgencies
it names (`hand_over_at_close`) go to the route's out-of-hours team. Pure functions over config.

Why a team setting and not an escalation step: the close is a time on the team's schedule, whatever
step the chain has reached. A step fires only after the waits before it, so "at close" as a step
would come too late for a referral whose chain is still waiting on its first step's deadline.

The deadline while out of hours is the out-of-hours team's for that urgency, counted from the
hand-over on its own schedule (clock time for a team without one). The referral's acknowledgement
deadline becomes the earlier of that and its original one: a hand-over never makes a referral later.
"""

from __future__ import annotations

from datetime import datetime

from gateway.config import Settings
from gateway.config.duty import EscalationStep, Team
from gateway.core.model import Urgency
from gateway.duty.deadline_rules import due_at
from gateway.duty.schedule import close_of_day
from gateway.route.escalate import Send, mailbox, targets

# Whom a hand-over alerts: the out-of-hours team's members on duty, by email and SMS (and its
# mailbox, below, so that an empty rota still leaves the hand-over where the team will see it).
HAND_OVER = EscalationStep(notify=("out-of-hours",), channels=("email", "sms"), wait="deadline")


def level(urgency: Urgency | str | None) -> Urgency:
    """A referral without an urgency counts as immediate, as for its deadline."""
    return Urgency(urgency) if urgency else Urgency.IMMEDIATE


def out_of_hours_team(settings: Settings, route_name: str | None) -> Team | None:
    route = next((r for r in settings.routes if r.name == route_name), None)
    return settings.find_team(route.out_of_hours) if route and route.out_of_hours else None


def hand_over_at(
    settings: Settings, team: Team, route_name: str | None, urgency: Urgency | str | None, received: datetime
) -> datetime | None:
    """When a referral received at `received` is handed over: the close of the office that day, if
    the team hands over that urgency, its route has an out-of-hours team and the office is open."""
    if level(urgency) not in team.hand_over_at_close or out_of_hours_team(settings, route_name) is None:
        return None
    return close_of_day(settings.schedule_for(team), received)


def deadline_after(settings: Settings, out_of_hours: Team, urgency: Urgency | str | None, at: datetime) -> datetime:
    """The out-of-hours team's own deadline for the urgency, counted from the hand-over."""
    rule = settings.deadline_rule(out_of_hours, level(urgency))
    return due_at(rule, at, settings.schedule_for(out_of_hours))


def recipients(settings: Settings, team: Team, out_of_hours: Team, at: datetime) -> list[Send]:
    """The out-of-hours team's members on duty (email and SMS) and its mailbox, each once."""
    sends = targets(settings, HAND_OVER, team, out_of_hours, at)
    box = Send(mailbox(out_of_hours), "email")
    if all(s.recipient.email != box.recipient.email or s.channel != "email" for s in sends):
        sends.append(box)
    return sends

"""Coverage: for every route and every moment of the coming weeks, is somebody reachable on duty in
the team that route would send a referral to at that moment? A pure function over config.

The check walks exact instants, not hourly samples: the points where a schedule opens or closes
and where a rota hands over cut the period into pieces within which nothing changes, so a gap of
ten minutes at a hand-over is found as surely as a missing weekend.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.config import Settings
from gateway.config.duty import Route
from gateway.core.clock import LONDON
from gateway.duty.rota import changes
from gateway.duty.schedule import Nation, calendar_warning, open_intervals
from gateway.route.escalate import on_duty_members
from gateway.route.rules import responsible_team


@dataclass(frozen=True)
class Gap:
    route: str
    team: str  # the team responsible then, with nobody reachable on duty
    start: datetime
    end: datetime

    def lines(self) -> list[str]:
        """One line per local day the gap touches (route, team, day, hours)."""
        out = []
        start = self.start.astimezone(LONDON)
        end = self.end.astimezone(LONDON)
        day = start.date()
        while day <= end.date():
            first = start if day == start.date() else None
            last = end if day == end.date() else None
            if last is not None and last.time().hour == 0 and last.time().minute == 0 and first is None:
                break  # the gap ends at midnight: nothing of this day
            begin = first.strftime("%H:%M") if first else "00:00"
            finish = last.strftime("%H:%M") if last else "24:00"
            out.append(
                f"route '{self.route}': nobody reachable on duty in team '{self.team}' on "
                f"{day.strftime('%a %d %b %Y')}, {begin}-{finish}"
            )
            day += timedelta(days=1)
        return out


def _breakpoints(settings: Settings, route: Route, start: datetime, end: datetime) -> list[datetime]:
    points = {start, end}
    team = settings.find_team(route.team)
    schedule = settings.schedule_of(team) if team else None
    if schedule is not None:
        for opened, closed in open_intervals(schedule.to_schedule(), start, end):
            points |= {opened, closed}
    for team_id in (route.team, route.out_of_hours):
        candidate = settings.find_team(team_id) if team_id else None
        if candidate is not None and candidate.rota is not None:
            points |= set(changes(candidate.rota.to_rota(), start, end))
    return sorted(p for p in points if start <= p <= end)


def gaps(settings: Settings, start: datetime, days: int = 28) -> list[Gap]:
    end = start + timedelta(days=days)
    found: list[Gap] = []
    for route in settings.routes:
        points = _breakpoints(settings, route, start, end)
        for begin, finish in itertools.pairwise(points):
            team_id, _, _ = responsible_team(settings, route, begin)
            team = settings.find_team(team_id)
            reachable = [m for m in on_duty_members(team, begin) if m.email or m.mobile] if team else []
            if reachable:
                continue
            last = found[-1] if found else None
            if last and last.route == route.name and last.team == team_id and last.end == begin:
                found[-1] = Gap(route.name, team_id, last.start, finish)
            else:
                found.append(Gap(route.name, team_id, begin, finish))
    return found


def calendar_warnings(settings: Settings, today: datetime) -> list[str]:
    nations = sorted({s.nation for s in settings.schedules}, key=lambda n: list(Nation).index(n))
    return [w for w in (calendar_warning(n, today.astimezone(LONDON).date()) for n in nations) if w]

"""Route: which team gets a referral. A pure function over rules that are data (config routes).

First match wins. A route names an in-hours team and, optionally, an out-of-hours team: the
in-hours team's schedule (office hours, bank holidays of its nation, closures) at the moment the
referral arrived decides which. An incomplete referral goes straight to the default route
(triage), because a rule matched on a missing or wrong field could send it to a team that cannot
act on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from gateway.config import Settings
from gateway.config.duty import Route, band_range
from gateway.core.clock import LONDON
from gateway.core.model import Referral
from gateway.duty.schedule import is_open
from gateway.parse import postcode as pc


@dataclass(frozen=True)
class Facts:
    """What routing looks at besides the referral's own fields."""

    at: datetime  # when it was received
    channel: str = "email"
    organisation: str | None = None  # the verified partner's name, else the one the referrer gave


@dataclass(frozen=True)
class RuleCheck:
    route: str
    matched: bool
    why: str


@dataclass(frozen=True)
class Decision:
    route: Route
    checks: tuple[RuleCheck, ...]  # every rule looked at, in order, with the reason
    team_id: str  # the team responsible at the time received
    in_hours: bool
    hours: str  # why in or out of hours, for --explain and the audit


def age_band_of(referral: Referral, on: date) -> tuple[str | None, int | None]:
    """('unborn', None) for a due date and no birth date; (None, years) for a born child; (None,
    None) when neither is known."""
    born = referral.child.date_of_birth
    if born is None or born > on:
        return ("unborn", None) if referral.child.due_date or born else (None, None)
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return None, years


def local_authority_of(settings: Settings, postcode: str | None) -> str | None:
    if not postcode:
        return None
    for authority in settings.local_authorities:
        if any(pc.matches(postcode, pattern) for pattern in authority.postcode):
            return authority.code
    return None


def _condition(name: str, wanted: tuple[str, ...], actual: str | None, test: Callable[[str], bool]) -> tuple[bool, str]:
    hit = actual is not None and any(test(w) for w in wanted)
    return hit, f"{name} {actual or 'unknown'} {'is' if hit else 'is not'} in {', '.join(wanted)}"


def _check(route: Route, referral: Referral, facts: Facts, settings: Settings) -> RuleCheck:
    if route.default:
        return RuleCheck(route.name, True, "default route: matches every referral")
    reasons: list[str] = []
    child = referral.child
    on = facts.at.astimezone(LONDON).date()
    unborn, years = age_band_of(referral, on)
    tests: list[tuple[str, tuple[str, ...], str | None, Callable[[str], bool]]] = [
        (
            "postcode district",
            route.postcode,
            pc.district(child.postcode) if child.postcode else None,
            lambda p: child.postcode is not None and pc.matches(child.postcode, p),
        ),
        (
            "local authority",
            route.local_authority,
            local_authority_of(settings, child.postcode),
            lambda code: code == local_authority_of(settings, child.postcode),
        ),
        ("urgency", tuple(u.value for u in route.urgency), referral.urgency, lambda u: u == referral.urgency),
        ("category", tuple(c.value for c in route.category), referral.category, lambda c: c == referral.category),
        (
            "age band",
            route.age,
            unborn or (f"{years} years" if years is not None else None),
            lambda band: band == unborn if band == "unborn" else years is not None and _in_band(years, band),
        ),
        ("channel", tuple(c.value for c in route.channel), facts.channel, lambda c: c == facts.channel),
        (
            "referrer organisation",
            route.referrer,
            facts.organisation,
            lambda org: facts.organisation is not None and org.lower() == facts.organisation.lower(),
        ),
    ]
    for name, wanted, actual, test in tests:
        if not wanted:
            continue
        hit, why = _condition(name, wanted, actual, test)
        reasons.append(why)
        if not hit:
            return RuleCheck(route.name, False, "; ".join(reasons))
    return RuleCheck(route.name, True, "; ".join(reasons) or "no conditions")


def _in_band(years: int, band: str) -> bool:
    low, high = band_range(band)
    return low <= years <= high


def responsible_team(settings: Settings, chosen: Route, at: datetime) -> tuple[str, bool, str]:
    """(team id, in hours?, why) for a route at an instant."""
    team = settings.find_team(chosen.team)
    schedule = settings.schedule_of(team) if team else None
    if schedule is None:
        return chosen.team, True, f"team {chosen.team} has no office hours set: it takes referrals at all hours"
    if is_open(schedule.to_schedule(), at):
        return chosen.team, True, f"in office hours for {chosen.team} (schedule {schedule.id})"
    if chosen.out_of_hours is None:
        return chosen.team, False, f"out of office hours for {chosen.team}, and the route names no out-of-hours team"
    return (
        chosen.out_of_hours,
        False,
        f"out of office hours for {chosen.team} (schedule {schedule.id}): goes to {chosen.out_of_hours}",
    )


def route(referral: Referral, settings: Settings, facts: Facts) -> Decision:
    """The first matching route and the team responsible at `facts.at`; config checks guarantee
    the last route is the default."""
    routes = settings.routes
    default = next(r for r in routes if r.default)
    if referral.incomplete:
        fields = ", ".join(sorted({p.field for p in referral.problems}))
        checks: list[RuleCheck] = [
            RuleCheck(default.name, True, f"incomplete referral ({fields}): goes to the default route")
        ]
        chosen = default
    else:
        checks = []
        for candidate in routes:
            check = _check(candidate, referral, facts, settings)
            checks.append(check)
            if check.matched:
                chosen = candidate
                break
        else:
            raise AssertionError("config has no default route")  # check-config refuses such a config
    team_id, in_hours, why = responsible_team(settings, chosen, facts.at)
    return Decision(chosen, tuple(checks), team_id, in_hours, why)

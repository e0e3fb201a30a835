"""The loaded config as plain values for the administrator's read-only view: names, channels and
counts, the coverage proof, and never a contact detail or a secret."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from gateway.config import Config, Settings
from gateway.config.duty import DEFAULT_ESCALATION, WEEKDAYS, Person
from gateway.core.clock import uk_time
from gateway.core.model import Urgency
from gateway.route.coverage import calendar_warnings, gaps

COVERAGE_DAYS = 28


# What the page reads, as TypedDicts: dicts at run time, so the template is the same either way.


class MemberView(TypedDict):
    name: str
    channels: str
    manager: bool
    encrypted: bool


class ShiftView(TypedDict):
    days: str
    hours: str
    members: list[str]


# The functional form: "from" is a keyword, and the template reads override["from"].
OverrideView = TypedDict("OverrideView", {"from": str, "to": str, "members": list[str], "note": str})


class TeamView(TypedDict):
    id: str
    name: str
    # Whether a mailbox and a duty phone are set, never the address or number: the page promises no
    # contact details (issue 11), and an administrator checks them in the config file itself.
    mailbox: str
    phone: str
    schedule: str
    encrypted: str
    members: list[MemberView]
    shifts: list[ShiftView]
    overrides: list[OverrideView]
    has_rota: bool
    deadlines: dict[str, str]  # urgency -> the rule in words
    escalation: str


class ScheduleView(TypedDict):
    id: str
    nation: str
    always_open: bool
    hours: list[tuple[str, str]]  # (weekday, its opening periods)
    closures: str


class RouteView(TypedDict):
    name: str
    conditions: list[str]
    default: bool
    team: str
    out_of_hours: str


class StepView(TypedDict):
    notify: str
    channels: str
    wait: str
    repeat: int
    until_acknowledged: bool


class EscalationView(TypedDict):
    id: str
    steps: list[StepView]


class CoordinatorView(TypedDict):
    name: str
    channels: str


class PartnerView(TypedDict):
    name: str
    signing_keys: int
    professionals: int
    addresses: int


class ConfigView(TypedDict):
    teams: list[TeamView]
    schedules: list[ScheduleView]
    routes: list[RouteView]
    escalations: list[EscalationView]
    coordinators: list[CoordinatorView]
    partners: list[PartnerView]
    sms_provider: str
    mail: str
    unrouted: list[str]
    warnings: list[str]
    gaps: list[str]
    gap_count: int
    coverage_from: str
    coverage_to: str
    coverage_days: int


def channels(person: Person) -> str:
    """Which channels a person has, never the address or number itself."""
    have = [word for word, value in (("email", person.email), ("SMS", person.mobile)) if value]
    return ", ".join(have) or "none (cannot be alerted)"


def config_view(config: Config, now: datetime, days: int = COVERAGE_DAYS) -> ConfigView:
    """The loaded config as plain values for the page: names, channels and counts, no secrets."""
    s: Settings = config.settings
    teams: list[TeamView] = []
    for team in s.teams:
        names = {m.id: m.name for m in team.members}
        rota = team.rota
        teams.append(
            {
                "id": team.id,
                "name": team.name,
                "mailbox": "set" if team.email else "not set",
                "phone": "set" if team.phone else "not set",
                "schedule": team.schedule or "none: open at all hours",
                "encrypted": ", ".join(k for k, v in (("OpenPGP", team.openpgp), ("S/MIME", team.smime_cert)) if v),
                "members": [
                    {
                        "name": m.name,
                        "channels": channels(m),
                        "manager": m.manager,
                        "encrypted": bool(m.openpgp or m.smime_cert),
                    }
                    for m in team.members
                ],
                "shifts": [
                    {
                        "days": ", ".join(WEEKDAYS[d].capitalize() for d in sorted(shift.days)),
                        "hours": f"{shift.start:%H:%M}-{shift.end:%H:%M}",
                        "members": [names.get(m, f"{m} (not a member)") for m in shift.members],
                    }
                    for shift in (rota.shifts if rota else ())
                ],
                "overrides": [
                    {
                        "from": uk_time(o.start),
                        "to": uk_time(o.end),
                        "members": [names.get(m, f"{m} (not a member)") for m in o.members],
                        "note": o.note,
                    }
                    for o in (rota.overrides if rota else ())
                ],
                "has_rota": rota is not None,
                "deadlines": {u.value: s.deadline_rule(team, u).describe() for u in Urgency},
                "escalation": (
                    ", ".join(f"{u}: {e}" for u, e in team.escalation.items())
                    if isinstance(team.escalation, dict)
                    else team.escalation or f"{DEFAULT_ESCALATION.id} (built in)"
                ),
            }
        )
    schedules: list[ScheduleView] = [
        {
            "id": sc.id,
            "nation": sc.nation.value,
            "always_open": sc.always_open,
            "hours": [
                (
                    WEEKDAYS[d].capitalize(),
                    ", ".join(f"{p.start:%H:%M}-{p.end:%H:%M}" if p.end else f"{p.start:%H:%M}-24:00" for p in periods),
                )
                for d, periods in sorted(sc.hours.items())
            ],
            "closures": ", ".join(c.isoformat() for c in sc.closures) or "none",
        }
        for sc in s.schedules
    ]
    routes: list[RouteView] = [
        {
            "name": r.name,
            "conditions": [f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in r.conditions.items() if v],
            "default": r.default,
            "team": s.team_name(r.team),
            "out_of_hours": s.team_name(r.out_of_hours) if r.out_of_hours else "",
        }
        for r in s.routes
    ]
    chains = list(s.escalations)
    if any(s.escalation_of(t, u) is DEFAULT_ESCALATION for t in s.teams for u in Urgency):
        chains.append(DEFAULT_ESCALATION)
    escalations: list[EscalationView] = [
        {
            "id": e.id + (" (built in)" if e is DEFAULT_ESCALATION else ""),
            "steps": [
                {
                    "notify": ", ".join(step.notify),
                    "channels": ", ".join("SMS" if c == "sms" else c for c in step.channels),
                    "wait": step.wait,
                    "repeat": step.repeat,
                    "until_acknowledged": step.until_acknowledged,
                }
                for step in e.steps
            ],
        }
        for e in chains
    ]
    found = gaps(s, now, days)
    relay = s.mail.relay
    return {
        "teams": teams,
        "schedules": schedules,
        "routes": routes,
        "escalations": escalations,
        "coordinators": [{"name": c.name, "channels": channels(c)} for c in s.coordinators],
        "partners": [
            {
                "name": p.name,
                "signing_keys": len(p.openpgp) + len(p.smime_anchors) + len(p.smime_pinned),
                "professionals": len(p.professionals),
                "addresses": len(p.addresses),
            }
            for p in s.partners
        ],
        "sms_provider": s.sms.provider,
        "mail": f"relay {relay.host}:{relay.port}" if relay else "the maildir under the data folder (no relay)",
        "unrouted": [t.name for t in s.teams if t.id not in {r.team for r in s.routes}],
        "warnings": calendar_warnings(s, now),
        "gaps": [line for gap in found for line in gap.lines()],
        "gap_count": len(found),
        "coverage_from": uk_time(now),
        "coverage_to": uk_time(now + timedelta(days=days)),
        "coverage_days": days,
    }

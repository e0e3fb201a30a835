"""Checks across the duty config that one model cannot make alone: ids that must name something
defined elsewhere, rotas that must not contradict themselves, routes that can never match.

Each issue names the file, the key (as the TOML spells it) and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.config.duty import Route, Team, band_range
from gateway.config.errors import ConfigIssue
from gateway.config.settings import Settings
from gateway.duty.rota import overlapping_overrides
from gateway.parse import postcode as pc


def _duplicates(ids: Sequence[str]) -> Iterable[tuple[int, str]]:
    for index, value in enumerate(ids):
        if ids.index(value) != index:
            yield index, value


def duty_checks(settings: Settings, file: Path) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def add(key: str, message: str, fix: str) -> None:
        issues.append(ConfigIssue(file, key, message, fix))

    for section, items in (
        ("schedules", [s.id for s in settings.schedules]),
        ("escalations", [e.id for e in settings.escalations]),
        ("coordinators", [c.id for c in settings.coordinators]),
        ("local_authorities", [la.code for la in settings.local_authorities]),
    ):
        for index, value in _duplicates(items):
            add(f"{section}[{index}]", f"'{value}' is defined twice", "give each one a unique id")
    schedules = ", ".join(s.id for s in settings.schedules) or "(none defined: add a [[schedules]])"
    chains = ", ".join(e.id for e in settings.escalations) or "(none defined: add an [[escalations]])"
    for t, team in enumerate(settings.teams):
        issues += _team_checks(team, f"teams[{t}]", file, schedules, chains, settings)
    issues += _route_checks(settings, file)
    if settings.digest.enabled and not settings.digest_recipients:
        add(
            "digest.enabled",
            "the daily digest goes to coordinators, and no [[coordinators]] has an email address",
            "give a coordinator an email address, or set enabled = false",
        )
    return issues


def _team_checks(
    team: Team, key: str, file: Path, schedules: str, chains: str, settings: Settings
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []

    def add(where: str, message: str, fix: str) -> None:
        issues.append(ConfigIssue(file, f"{key}{where}", message, fix))

    if team.schedule and settings.schedule_of(team) is None:
        add(".schedule", f"unknown schedule '{team.schedule}'", f"use one of: {schedules}")
    for index, member_id in _duplicates([m.id for m in team.members]):
        add(f".members[{index}].id", f"member '{member_id}' is listed twice", "give each member a unique id")
    for index, member in enumerate(team.members):
        if not (member.email or member.mobile):
            add(f".members[{index}]", f"{member.id} has no email and no mobile", "add an email or a mobile number")
    known = {m.id for m in team.members}
    members = ", ".join(sorted(known)) or "(no members: add [[teams.members]])"
    if team.rota is not None:
        for s, shift in enumerate(team.rota.shifts):
            for member_id in shift.members:
                if member_id not in known:
                    add(f".rota.shifts[{s}].members", f"'{member_id}' is not a member of {team.id}", f"use {members}")
        for o, override in enumerate(team.rota.overrides):
            for member_id in override.members:
                if member_id not in known:
                    add(
                        f".rota.overrides[{o}].members", f"'{member_id}' is not a member of {team.id}", f"use {members}"
                    )
        for first, second in overlapping_overrides(team.rota.to_rota()):
            add(
                f".rota.overrides[{second}]",
                f"overlaps overrides[{first}] (both say who is on duty for the same time)",
                "make overrides end before the next starts, or merge them into one",
            )
    if team.hand_over_at_close:
        if team.schedule is None:
            add(
                ".hand_over_at_close",
                f"team '{team.id}' has no schedule, so its office never closes and nothing is handed over",
                "give the team a schedule, or remove hand_over_at_close",
            )
        for route in settings.routes:
            if route.team == team.id and route.out_of_hours is None:
                add(
                    ".hand_over_at_close",
                    f"route '{route.name}' sends to '{team.id}' with no out_of_hours team, so its referrals "
                    "would stay in a closed office",
                    f"give route '{route.name}' an out_of_hours team to hand over to",
                )
    wanted = team.escalation.values() if isinstance(team.escalation, dict) else [team.escalation]
    for chain in wanted:
        if chain is not None and chain not in {e.id for e in settings.escalations}:
            add(".escalation", f"unknown escalation chain '{chain}'", f"use one of: {chains}")
    return issues


def _route_checks(settings: Settings, file: Path) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    teams = {t.id: t for t in settings.teams}
    codes = {la.code for la in settings.local_authorities}
    for index, route in enumerate(settings.routes):
        key = f"routes[{index}]"
        if route.out_of_hours is not None:
            if route.out_of_hours not in teams:
                issues.append(
                    ConfigIssue(
                        file,
                        f"{key}.out_of_hours",
                        f"unknown team '{route.out_of_hours}'",
                        f"use one of: {', '.join(teams)}",
                    )
                )
            elif route.team in teams and teams[route.team].schedule is None:
                issues.append(
                    ConfigIssue(
                        file,
                        f"{key}.out_of_hours",
                        f"team '{route.team}' has no schedule, so it is never out of hours and "
                        f"'{route.out_of_hours}' would never be used",
                        f"give team '{route.team}' a schedule, or remove out_of_hours",
                    )
                )
        for code in route.local_authority:
            if code not in codes:
                issues.append(
                    ConfigIssue(
                        file,
                        f"{key}.local_authority",
                        f"unknown local authority '{code}'",
                        "add a [[local_authorities]] with that code and its postcode districts",
                    )
                )
        for _earlier_index, earlier in enumerate(settings.routes[:index]):
            if not route.default and not earlier.default and _covers(earlier, route):
                issues.append(
                    ConfigIssue(
                        file,
                        f"{key}",
                        f"route '{route.name}' can never match: '{earlier.name}' before it matches every "
                        "referral it would",
                        f"move '{route.name}' above '{earlier.name}', or narrow '{earlier.name}'",
                    )
                )
                break
    return issues


def _covers(first: Route, second: Route) -> bool:
    """Whether every referral `second` matches is matched by `first` (so `second` is dead)."""
    wide, narrow = first.conditions, second.conditions
    for name, allowed in wide.items():
        if not allowed:
            continue  # no condition on this field: anything passes
        wanted = narrow[name]
        if not wanted:
            return False  # second accepts values first does not
        if name == "postcode":
            if not all(_postcode_covered(p, allowed) for p in wanted):
                return False
        elif name == "age":
            if not all(any(_band_covered(b, a) for a in allowed) for b in wanted):
                return False
        elif not set(wanted) <= set(allowed):
            return False
    return True


def _postcode_covered(pattern: str, patterns: tuple[str, ...]) -> bool:
    if pattern.isalpha():  # an area: only the same area covers all of it
        return pattern in patterns
    return any(pc.matches(f"{pattern} 1AA", p) for p in patterns)  # a district: any postcode in it


def _band_covered(band: str, other: str) -> bool:
    if band == "unborn" or other == "unborn":
        return band == other
    low, high = band_range(band)
    other_low, other_high = band_range(other)
    return other_low <= low and high <= other_high

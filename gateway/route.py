"""Route: which team gets a referral. A pure function over rules that are data (config routes).

First match wins. An incomplete referral goes straight to the default route (triage), because a
rule matched on a missing or wrong field could send it to a team that cannot act on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway import postcode as pc
from gateway.config import Route
from gateway.model import Referral


@dataclass(frozen=True)
class RuleCheck:
    route: str
    matched: bool
    why: str


@dataclass(frozen=True)
class Decision:
    route: Route
    checks: tuple[RuleCheck, ...]  # every rule looked at, in order, with the reason

    @property
    def team_id(self) -> str:
        return self.route.team


def _check(route: Route, referral: Referral) -> RuleCheck:
    if route.default:
        return RuleCheck(route.name, True, "default route: matches every referral")
    reasons: list[str] = []
    if route.postcode:
        code = referral.child.postcode
        hit = code is not None and any(pc.matches(code, pattern) for pattern in route.postcode)
        district = pc.district(code) if code else "none"
        reasons.append(f"postcode district {district} {'is' if hit else 'is not'} in {', '.join(route.postcode)}")
        if not hit:
            return RuleCheck(route.name, False, "; ".join(reasons))
    if route.urgency:
        hit = referral.urgency in route.urgency
        reasons.append(
            f"urgency {referral.urgency or 'none'} {'is' if hit else 'is not'} in {', '.join(route.urgency)}"
        )
        if not hit:
            return RuleCheck(route.name, False, "; ".join(reasons))
    if route.category:
        hit = referral.category in route.category
        reasons.append(
            f"category {referral.category or 'none'} {'is' if hit else 'is not'} in {', '.join(route.category)}"
        )
        if not hit:
            return RuleCheck(route.name, False, "; ".join(reasons))
    return RuleCheck(route.name, True, "; ".join(reasons) or "no conditions")


def route(referral: Referral, routes: Sequence[Route]) -> Decision:
    """The first matching route; config checks guarantee the last one is the default."""
    default = next(r for r in routes if r.default)
    if referral.incomplete:
        fields = ", ".join(sorted({p.field for p in referral.problems}))
        return Decision(
            default,
            (RuleCheck(default.name, True, f"incomplete referral ({fields}): goes to the default route"),),
        )
    checks: list[RuleCheck] = []
    for candidate in routes:
        check = _check(candidate, referral)
        checks.append(check)
        if check.matched:
            return Decision(candidate, tuple(checks))
    raise AssertionError("config has no default route")  # check-config refuses such a config

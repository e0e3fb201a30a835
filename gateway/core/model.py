"""Plain value objects shared by the stages: what a referral says, and what is wrong with it.

These are the pure core's data. They hold personal data, so they are only ever stored sealed
(see gateway.core.sealing) and never logged; `Problem` messages name fields, never values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any


class Urgency(StrEnum):
    IMMEDIATE = "immediate"
    URGENT = "urgent"
    STANDARD = "standard"


class Category(StrEnum):
    PHYSICAL = "physical"
    EMOTIONAL = "emotional"
    SEXUAL = "sexual"
    NEGLECT = "neglect"
    DOMESTIC_ABUSE = "domestic abuse"
    PRE_BIRTH = "pre-birth"
    OTHER = "other"


class Channel(StrEnum):
    EMAIL = "email"
    WEB = "web"
    SMS = "sms"
    API = "api"


@dataclass(frozen=True)
class Problem:
    """One missing or invalid field. `message` must never quote the value (it reaches alerts and logs)."""

    field: str
    message: str


@dataclass(frozen=True)
class Referrer:
    name: str | None = None
    role: str | None = None
    organisation: str | None = None
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class Child:
    name: str | None = None
    date_of_birth: date | None = None
    due_date: date | None = None  # expected due date, for an unborn baby
    nhs_number: str | None = None  # ten digits, no spaces, check digit verified
    address: str | None = None
    postcode: str | None = None  # normalised: upper case, one space before the inward code


@dataclass(frozen=True)
class Referral:
    referrer: Referrer = field(default_factory=Referrer)
    child: Child = field(default_factory=Child)
    category: Category | None = None
    urgency: Urgency | None = None
    parents_aware: bool | None = None
    consent_basis: str | None = None
    details: str | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def incomplete(self) -> bool:
        return bool(self.problems)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (dates as ISO strings); the inverse of `from_json`."""
        out: dict[str, Any] = dataclasses.asdict(self)
        for key in ("date_of_birth", "due_date"):
            value = out["child"][key]
            out["child"][key] = value.isoformat() if value else None
        out["problems"] = [dataclasses.asdict(p) for p in self.problems]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Referral:
        child = dict(data.get("child") or {})
        for key in ("date_of_birth", "due_date"):
            if child.get(key):
                child[key] = date.fromisoformat(child[key])
        return cls(
            referrer=Referrer(**(data.get("referrer") or {})),
            child=Child(**child),
            category=Category(data["category"]) if data.get("category") else None,
            urgency=Urgency(data["urgency"]) if data.get("urgency") else None,
            parents_aware=data.get("parents_aware"),
            consent_basis=data.get("consent_basis"),
            details=data.get("details"),
            problems=tuple(Problem(**p) for p in data.get("problems") or ()),
        )


# The outcome of the duty team's first decision, as the referrer is told it (value -> words).
OUTCOMES: dict[str, str] = {
    "no_further_action": "No further action",
    "early_help": "Early help",
    "assessment": "Assessment",
    "strategy_discussion": "Strategy discussion",
    "passed_on": "Passed to another area",
}

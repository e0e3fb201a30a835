"""Config for who is on duty: teams and their members, schedules, rotas, routes, deadlines and
escalation chains. Pydantic models that check what an administrator wrote and turn it into the
plain values of the pure modules (gateway.duty.schedule, gateway.duty.rota, gateway.duty.deadline_rules).

Wall-clock times and dates are Europe/London: that is what a council's rota is written in.
"""

from __future__ import annotations

import itertools
import re
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.config.fields import Email, Fingerprint, Mobile, Strict
from gateway.core.clock import LONDON
from gateway.core.model import Category, Channel, Urgency
from gateway.duty.deadline_rules import DeadlineRule, parse_deadline
from gateway.duty.rota import Override, Rota, Shift
from gateway.duty.schedule import Nation, Period, Schedule
from gateway.parse.postcode import normalise_pattern

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _deadline(value: object) -> DeadlineRule:
    if isinstance(value, DeadlineRule):
        return value
    return parse_deadline(str(value))


def _clock_time(value: object) -> time:
    if isinstance(value, time):
        return value
    text = str(value).strip()
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text)
    if not match:
        raise ValueError(f"{text!r} is not a time of day; use 24-hour 'HH:MM' like '09:00' or '17:30'")
    return time(int(match.group(1)), int(match.group(2)))


def _local_datetime(value: object) -> datetime:
    """'2026-12-24T09:00' (Europe/London wall time) -> aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=LONDON)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time; use '2026-12-24T09:00' (UK local time)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=LONDON)


def _weekday(value: object) -> int:
    text = str(value).strip().lower()
    for index, name in enumerate(WEEKDAYS):
        if text in (name, name[:3]):
            return index
    raise ValueError(f"{value!r} is not a day of the week; use monday, tuesday, ... sunday")


Deadline = Annotated[DeadlineRule, BeforeValidator(_deadline)]
ClockTime = Annotated[time, BeforeValidator(_clock_time)]
LocalDateTime = Annotated[datetime, BeforeValidator(_local_datetime)]
Weekday = Annotated[int, BeforeValidator(_weekday)]
Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]


class Person(Strict):
    """Someone the gateway can alert: a team member or a coordinator."""

    id: Identifier
    name: str
    email: Email | None = None
    mobile: Mobile | None = None
    manager: bool = False
    # With a key, alerts to this person carry the referral's content, encrypted and signed.
    openpgp: Fingerprint | None = None
    smime_cert: Path | None = None

    def reachable_on(self, channels: tuple[str, ...]) -> tuple[str, ...]:
        """The channels of `channels` this person has an address for."""
        return tuple(c for c in channels if (c == "email" and self.email) or (c == "sms" and self.mobile))


class ShiftConfig(Strict):
    days: tuple[Weekday, ...] = Field(min_length=1)
    start: ClockTime  # hand-over in
    end: ClockTime  # hand-over out; at or before `start`: the shift runs past midnight
    members: tuple[str, ...] = Field(min_length=1)


class OverrideConfig(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: LocalDateTime = Field(alias="from")
    end: LocalDateTime = Field(alias="to")
    members: tuple[str, ...] = ()  # who is on duty instead of the weekly pattern (empty: nobody)
    note: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> OverrideConfig:
        if self.end <= self.start:
            raise ValueError("an override must end after it starts; use 'to' later than 'from'")
        return self


class RotaConfig(Strict):
    shifts: tuple[ShiftConfig, ...] = ()
    overrides: tuple[OverrideConfig, ...] = ()

    def to_rota(self) -> Rota:
        return Rota(
            shifts=tuple(Shift(frozenset(s.days), s.start, s.end, s.members) for s in self.shifts),
            overrides=tuple(Override(o.start, o.end, o.members, o.note) for o in self.overrides),
        )


def _periods(value: object) -> tuple[Period, ...]:
    """'09:00-17:00', or a list of them for a day with a break; '24:00' may end a period."""
    items: list[object] = list(value) if isinstance(value, list | tuple) else [value]
    periods = []
    for item in items:
        match = re.fullmatch(r"\s*(\d\d?:\d\d)\s*-\s*(\d\d?:\d\d)\s*", str(item))
        if not match:
            raise ValueError(f"{item!r} is not opening hours; use 'HH:MM-HH:MM' like '09:00-17:00'")
        start = _clock_time(match.group(1))
        end = None if match.group(2) == "24:00" else _clock_time(match.group(2))
        if end is not None and end <= start:
            raise ValueError(f"{item!r} ends before it starts; use 'HH:MM-HH:MM' within one day ('24:00' for midnight)")
        periods.append(Period(start, end))
    periods.sort(key=lambda p: p.start)
    for before, after in itertools.pairwise(periods):
        if before.end is None or before.end > after.start:
            raise ValueError("opening hours overlap; use separate, non-overlapping periods")
    return tuple(periods)


class ScheduleConfig(Strict):
    id: Identifier
    nation: Nation = Nation.ENGLAND  # whose bank holidays close the office
    always_open: bool = False  # a 24-hour service: open every hour of every day, holidays too
    hours: dict[Weekday, Annotated[tuple[Period, ...], BeforeValidator(_periods)]] = Field(default_factory=dict)
    closures: tuple[date, ...] = ()  # extra dates closed all day (e.g. Christmas Eve)

    def to_schedule(self) -> Schedule:
        return Schedule(
            nation=self.nation, hours=dict(self.hours), closures=frozenset(self.closures), always_open=self.always_open
        )


Target = Literal["on-duty", "team", "mailbox", "managers", "out-of-hours", "coordinators"]


def _tuple(value: object) -> object:
    return (value,) if isinstance(value, str) else value


class EscalationStep(Strict):
    # Whom to alert: the members on duty now, every member, the team's shared mailbox, the team's
    # managers, the out-of-hours team's members on duty, the coordinators.
    notify: Annotated[tuple[Target, ...], BeforeValidator(_tuple)] = Field(min_length=1)
    channels: Annotated[tuple[Literal["email", "sms"], ...], BeforeValidator(_tuple)] = ("email",)
    # How long to wait for an acknowledgement before the next step: a duration, working time on
    # the team's schedule, or "deadline" (until the referral's acknowledgement deadline).
    wait: Annotated[str, BeforeValidator(str)]
    repeat: int = Field(default=0, ge=0, le=50)  # send this step again this many times first
    until_acknowledged: bool = False  # the last step only: repeat it every `wait` until acknowledged

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: str) -> str:
        if value.strip().lower() != "deadline":
            rule = parse_deadline(value)
            if rule.kind == "clock" and rule.amount.total_seconds() < 60:
                raise ValueError(f"wait {value!r} is under a minute; use at least '1m'")
        return value.strip().lower()

    def wait_rule(self) -> DeadlineRule | None:
        """None means: until the referral's deadline."""
        return None if self.wait == "deadline" else parse_deadline(self.wait)


class Escalation(Strict):
    id: Identifier
    steps: tuple[EscalationStep, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _final_last(self) -> Escalation:
        for index, step in enumerate(self.steps[:-1]):
            if step.until_acknowledged:
                raise ValueError(
                    f"step {index + 1} repeats until acknowledged, so the steps after it never run; "
                    "use until_acknowledged on the last step only"
                )
        return self


# Without an [[escalations]] chain: alert the mailbox and whoever is on duty, then at the deadline
# everyone in the team and its managers, hourly, until someone acknowledges.
DEFAULT_ESCALATION = Escalation(
    id="default",
    steps=(
        EscalationStep(notify=("mailbox", "on-duty"), channels=("email",), wait="deadline"),
        EscalationStep(
            notify=("mailbox", "team", "managers"), channels=("email", "sms"), wait="1h", until_acknowledged=True
        ),
    ),
)


class TeamDeadlines(Strict):
    immediate: Deadline | None = None
    urgent: Deadline | None = None
    standard: Deadline | None = None


class Team(Strict):
    id: Identifier
    name: str
    email: Email  # the shared mailbox
    phone: str  # the duty phone referrers and SMS replies give
    # With a key, alerts to the mailbox carry the referral's content, encrypted to it and signed by
    # the gateway; without one they carry no personal data (reference, urgency, a link).
    openpgp: Fingerprint | None = None
    smime_cert: Path | None = None
    schedule: str | None = None  # a [[schedules]] id; none: open at all hours
    members: tuple[Person, ...] = ()
    rota: RotaConfig | None = None  # none: nobody is on duty (only mailbox, team and managers alerts)
    deadlines: TeamDeadlines = TeamDeadlines()  # per urgency; unset ones come from [deadlines]
    # An [[escalations]] id for every urgency, or a table urgency -> id; none: the built-in chain.
    escalation: str | dict[Urgency, str] | None = None
    # Referrals of these urgencies still open (not acknowledged) when the office closes for the day
    # are handed to the route's out_of_hours team then (gateway.route.handover), instead of waiting
    # in a closed office for working time to run out.
    hand_over_at_close: tuple[Urgency, ...] = ()

    def member(self, member_id: str) -> Person | None:
        return next((m for m in self.members if m.id == member_id), None)

    def escalation_for(self, urgency: Urgency | None) -> str | None:
        if isinstance(self.escalation, dict):
            return self.escalation.get(urgency or Urgency.IMMEDIATE)
        return self.escalation


def postcode_patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    patterns = []
    for pattern in value:
        try:
            patterns.append(normalise_pattern(pattern))
        except ValueError:
            raise ValueError(
                f"'{pattern}' is not a postcode area or district; use an area like 'W', a district like "
                "'W1A', or 'SW1' for SW1 and its sub-districts"
            ) from None
    return tuple(patterns)


def _age_band(value: object) -> str:
    text = str(value).strip().lower()
    if text == "unborn" or (re.fullmatch(r"\d{1,2}-\d{1,2}", text) and band_range(text)[0] <= band_range(text)[1]):
        return text
    raise ValueError(f"{value!r} is not an age band; use 'unborn' or years like '0-4' or '16-17'")


def band_range(band: str) -> tuple[int, int]:
    """An age band's years, both ends included: '0-4' -> (0, 4)."""
    low, _, high = band.partition("-")
    return int(low), int(high)


AgeBand = Annotated[str, BeforeValidator(_age_band)]


class Route(Strict):
    name: str
    team: str  # in office hours (the team's schedule open)
    out_of_hours: str | None = None  # when `team`'s schedule is closed; none: `team` at all hours
    default: bool = False
    postcode: tuple[str, ...] = ()
    local_authority: tuple[str, ...] = ()  # codes from [[local_authorities]]
    urgency: tuple[Urgency, ...] = ()
    category: tuple[Category, ...] = ()
    age: tuple[AgeBand, ...] = ()  # of the child on the day received; "unborn" for a due date
    channel: tuple[Channel, ...] = ()
    referrer: tuple[str, ...] = ()  # the referrer's organisation (a partner's name), any case

    @field_validator("postcode")
    @classmethod
    def _postcode_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return postcode_patterns(value)

    @property
    def conditions(self) -> dict[str, tuple[str, ...]]:
        return {
            "postcode": self.postcode,
            "local_authority": self.local_authority,
            "urgency": tuple(u.value for u in self.urgency),
            "category": tuple(c.value for c in self.category),
            "age": self.age,
            "channel": tuple(c.value for c in self.channel),
            "referrer": tuple(r.lower() for r in self.referrer),
        }

    @model_validator(mode="after")
    def _default_matches_everything(self) -> Route:
        if self.default and any(self.conditions.values()):
            raise ValueError("a default route matches everything; use no conditions on it")
        return self


class LocalAuthority(Strict):
    code: str = Field(pattern=r"^[EWSN]\d{8}$")  # ONS GSS code, e.g. E09000033
    name: str
    postcode: tuple[str, ...] = Field(min_length=1)  # areas or districts it covers

    @field_validator("postcode")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return postcode_patterns(value)

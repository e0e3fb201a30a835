"""Acknowledgement deadlines in clock time or working time. Pure: no I/O, no config.

Three kinds of rule, as written in config:

- clock time, "15m", "90s", "1h", "2d" (the units used elsewhere in config): received + amount;
- working time, "4 working hours", "30 working minutes", "1 working hour": `amount` of the team's open time
  (see `gateway.duty.schedule.add_working_time`);
- "end of next working day": the Working Together standard for "within 1 working day".

"N working days" is refused on purpose: it is easily read either as N x office hours or as the end of the
Nth working day, and a safeguarding deadline must not be ambiguous. Write "end of next working day" or
working hours instead. A zero deadline is refused too: it is almost certainly a typo, and would alert at once.

`describe()` writes a rule back in words that `parse_deadline` accepts, so a parsed rule round-trips.
Datetimes follow `gateway.duty.schedule`: aware in, UTC out, London wall times for hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from gateway.duty.schedule import Schedule, add_working_time, end_of_next_working_day

Kind = Literal["clock", "working", "next-working-day"]

_UNIT_SECONDS = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
_SHORT_UNITS = {"d": "day", "h": "hour", "m": "minute", "s": "second"}

_CLOCK_SHORT = re.compile(r"(\d+) ?([dhms])")
_CLOCK_LONG = re.compile(r"(\d+) (day|hour|minute|second)s?")
_WORKING = re.compile(r"(\d+) working (hour|minute|second)s?")
_WORKING_DAYS = re.compile(r"(\d+) working days?")
_NEXT_WORKING_DAY = re.compile(r"end of (the )?next working day")

_HOW = 'use a duration like "15m" or "1h", working time like "4 working hours", or "end of next working day"'


@dataclass(frozen=True)
class DeadlineRule:
    kind: Kind
    amount: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        if self.kind == "next-working-day":
            if self.amount != timedelta(0):
                raise ValueError("an end-of-next-working-day deadline takes no amount")
        elif self.amount <= timedelta(0):
            raise ValueError(f"a {self.kind} deadline must be longer than zero, got {self.amount}")
        elif self.amount % timedelta(seconds=1):
            # Config can only write whole seconds; a fraction would also not survive describe().
            raise ValueError(f"a deadline must be a whole number of seconds, got {self.amount}")

    def describe(self) -> str:
        """'15 minutes', '4 working hours', 'end of the next working day'."""
        if self.kind == "next-working-day":
            return "end of the next working day"
        units = _UNIT_SECONDS if self.kind == "clock" else {k: v for k, v in _UNIT_SECONDS.items() if k != "day"}
        seconds = self.amount // timedelta(seconds=1)
        # The largest unit that divides exactly, so "90m" reads "90 minutes" and "60m" reads "1 hour".
        unit, size = next(((u, s) for u, s in units.items() if seconds % s == 0), ("second", 1))
        count = seconds // size
        working = "working " if self.kind == "working" else ""
        return f"{count} {working}{unit}{'' if count == 1 else 's'}"


def parse_deadline(text: str) -> DeadlineRule:
    """Read a deadline as written in config; ValueError says what was wrong and what to write instead."""
    words = " ".join(str(text).lower().split())
    if match := _CLOCK_SHORT.fullmatch(words):
        rule = DeadlineRule("clock", _seconds(match.group(1), _SHORT_UNITS[match.group(2)], text))
    elif match := _CLOCK_LONG.fullmatch(words):
        rule = DeadlineRule("clock", _seconds(match.group(1), match.group(2), text))
    elif match := _WORKING.fullmatch(words):
        rule = DeadlineRule("working", _seconds(match.group(1), match.group(2), text))
    elif _NEXT_WORKING_DAY.fullmatch(words):
        rule = DeadlineRule("next-working-day")
    elif _WORKING_DAYS.fullmatch(words):
        raise ValueError(
            f"{text!r}: working days are not supported, as they are ambiguous; "
            'write "end of next working day", or working hours like "16 working hours"'
        )
    else:
        raise ValueError(f"{text!r} is not a deadline; {_HOW}")
    return rule


def _seconds(count: str, unit: str, text: str) -> timedelta:
    try:
        amount = timedelta(seconds=int(count) * _UNIT_SECONDS[unit])
    except OverflowError:
        raise ValueError(f"{text!r} is too long for a deadline; {_HOW}") from None
    if amount == timedelta(0):
        raise ValueError(f'{text!r} is a deadline of zero; give a time longer than zero, e.g. "15m"')
    return amount


def due_at(rule: DeadlineRule, received: datetime, schedule: Schedule) -> datetime:
    """When a referral received at `received` must be acknowledged under `rule`, in UTC."""
    if received.tzinfo is None or received.utcoffset() is None:
        raise ValueError(f"received must be timezone-aware, got {received.isoformat()}")
    if rule.kind == "clock":
        return received.astimezone(UTC) + rule.amount
    if rule.kind == "working":
        return add_working_time(schedule, received, rule.amount)
    return end_of_next_working_day(schedule, received)

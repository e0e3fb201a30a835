"""Who is on duty when: a weekly pattern of shifts, with dated overrides on top. Pure: no I/O, no config.

Every datetime passed in must be timezone-aware; every datetime returned is in UTC. Shift hand-over times
are Europe/London wall times, turned into instants on each date the shift runs, so a 17:00-09:00 night shift
lasts 15 real hours on the night the clocks go forward and 17 on the night they go back. Wall times follow
`gateway.duty.schedule.local_to_utc`: a time in the spring-forward gap means the first instant after the gap; an
ambiguous autumn time means its first occurrence (fold=0).

All intervals are half-open, [start, end): at a hand-over instant the incoming shift is on duty, the
outgoing one is not. Inside an override exactly the override's members are on duty (possibly nobody);
if overrides overlap (config refuses that, see `overlapping_overrides`) the first one listed wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gateway.duty.schedule import local_date, local_to_utc

_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Shift:
    """A weekly shift. `days` are the weekdays it STARTS on (0 = Monday). `end <= start` runs past midnight
    into the next day; `end == start` is a 24-hour shift."""

    days: frozenset[int]
    start: time
    end: time
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", frozenset(self.days))
        object.__setattr__(self, "members", tuple(self.members))
        if not self.days <= set(range(7)):
            raise ValueError(f"shift days {sorted(self.days)} must be weekdays 0 (Monday) to 6 (Sunday)")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("shift times are Europe/London wall times; give them without a time zone")


@dataclass(frozen=True)
class Override:
    """Who is on duty INSTEAD of the weekly pattern during [start, end): leave, swaps, cover. May be nobody.
    `start` and `end` may be given in any zone; they are stored in UTC."""

    start: datetime
    end: datetime
    members: tuple[str, ...]
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"override {name} must be timezone-aware, got {value.isoformat()}")
        if self.end <= self.start:
            raise ValueError(f"override ends ({self.end.isoformat()}) before it starts ({self.start.isoformat()})")
        # Kept in UTC: == between different zones is never true for an ambiguous wall time (PEP 495), and
        # every other instant here is UTC.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        object.__setattr__(self, "members", tuple(self.members))


@dataclass(frozen=True)
class Rota:
    shifts: tuple[Shift, ...]
    overrides: tuple[Override, ...] = ()


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def shift_interval(shift: Shift, day: date) -> tuple[datetime, datetime]:
    """The UTC interval of the shift that starts on local `day` (whether or not it runs on that weekday)."""
    ends_on = day + _DAY if shift.end <= shift.start else day
    return local_to_utc(day, shift.start), local_to_utc(ends_on, shift.end)


def _occurrences(shift: Shift, first_day: date, last_day: date) -> Iterator[tuple[datetime, datetime]]:
    day = first_day
    while day <= last_day:
        if day.weekday() in shift.days:
            yield shift_interval(shift, day)
        day += _DAY


def _dedupe(members: Iterator[str]) -> tuple[str, ...]:
    # dict keeps first-seen order: shift order, then member order.
    return tuple(dict.fromkeys(members))


def on_duty(rota: Rota, at: datetime) -> tuple[str, ...]:
    """The members on duty at `at`: shift order, then member order, each once."""
    at = _aware(at, "at")
    for override in rota.overrides:
        if override.start <= at < override.end:
            return _dedupe(iter(override.members))
    day = local_date(at)
    # A shift lasts at most 24 hours, so only shifts starting yesterday or today can cover `at`.
    return _dedupe(
        member
        for shift in rota.shifts
        if any(start <= at < end for start, end in _occurrences(shift, day - _DAY, day))
        for member in shift.members
    )


def changes(rota: Rota, start: datetime, end: datetime) -> list[datetime]:
    """Sorted UTC instants strictly inside (start, end) where `on_duty` may change: every shift hand-over and
    override edge. With `start` they cut [start, end) into pieces on which `on_duty` is constant."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if start >= end:
        return []
    found: set[datetime] = set()
    first_day, last_day = local_date(start) - _DAY, local_date(end)
    for shift in rota.shifts:
        for low, high in _occurrences(shift, first_day, last_day):
            found.update((low, high))
    for override in rota.overrides:
        found.update((override.start, override.end))
    return sorted(instant for instant in found if start < instant < end)


def duty_intervals(rota: Rota, start: datetime, end: datetime) -> list[tuple[datetime, datetime, tuple[str, ...]]]:
    """[start, end) cut into maximal pieces on which `on_duty` is constant, in UTC."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if start >= end:
        return []
    cuts = [start, *changes(rota, start, end), end]
    out: list[tuple[datetime, datetime, tuple[str, ...]]] = []
    for low, high in itertools.pairwise(cuts):
        members = on_duty(rota, low)
        if out and out[-1][2] == members:
            out[-1] = (out[-1][0], high, members)
        else:
            out.append((low, high, members))
    return out


def overlapping_overrides(rota: Rota) -> list[tuple[int, int]]:
    """Index pairs (i < j) of overrides whose intervals overlap; touching ends do not overlap."""
    return [
        (i, j)
        for i, first in enumerate(rota.overrides)
        for j in range(i + 1, len(rota.overrides))
        if first.start < rota.overrides[j].end and rota.overrides[j].start < first.end
    ]

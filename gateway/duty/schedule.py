"""Office hours, bank holidays and working time for a duty team. Pure: no I/O, no config.

Every datetime passed in must be timezone-aware; every datetime returned is in UTC. Opening hours are
Europe/London wall-clock times, turned into instants day by day, so a 09:00-17:00 day is 09:00-17:00 in
both GMT and BST. Two wall times need a rule (see `local_to_utc`):

- a wall time that does not exist (in the spring-forward gap, 01:00-02:00 on the last Sunday of March)
  means the first instant after the gap (02:00 BST);
- an ambiguous wall time (01:00-02:00 on the last Sunday of October happens twice) means its first
  occurrence (fold=0, still BST).

`Period.end is None` is written for "24:00", the midnight that ends the day: a `time` cannot hold 24:00, and
an explicit None reads better than overloading 00:00. Config writes it "24:00".

Working time is real elapsed time inside open periods: an hour of working time is an hour on the clock,
whatever the offset. Bank holidays come from the `holidays` package; past the last year it has data for,
no bank holidays are known (days count as working, so deadlines come early, not late) and
`calendar_warning` says so in time to upgrade.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType

import holidays
from holidays.countries.united_kingdom import UnitedKingdom

from gateway.core.clock import LONDON

# The longest run of days searched for open time before we call a schedule hopeless, rather than loop forever.
SEARCH_LIMIT_DAYS = 366

_DAY = timedelta(days=1)


class Nation(StrEnum):
    ENGLAND = "england"
    WALES = "wales"
    SCOTLAND = "scotland"
    NORTHERN_IRELAND = "northern-ireland"


_SUBDIV = {
    Nation.ENGLAND: "ENG",
    Nation.WALES: "WLS",
    Nation.SCOTLAND: "SCT",
    Nation.NORTHERN_IRELAND: "NIR",
}


@dataclass(frozen=True)
class Period:
    """One open period on a local day, [start, end). `end=None` means 24:00, the midnight ending the day."""

    start: time
    end: time | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or (self.end is not None and self.end.tzinfo is not None):
            raise ValueError("period times are Europe/London wall times; give them without a time zone")
        if self.end is not None and self.end <= self.start:
            raise ValueError(
                f"period {self.start:%H:%M}-{self.end:%H:%M} ends before it starts; "
                "a period must end later the same day (end=None for 24:00)"
            )


@dataclass(frozen=True)
class Schedule:
    """When a team is open. `hours` maps weekday (0 = Monday) to sorted, non-overlapping periods."""

    nation: Nation
    hours: Mapping[int, tuple[Period, ...]]
    closures: frozenset[date] = frozenset()
    always_open: bool = False

    def __post_init__(self) -> None:
        for weekday, periods in self.hours.items():
            if weekday not in range(7):
                raise ValueError(f"weekday {weekday!r} is not 0 (Monday) to 6 (Sunday)")
            for earlier, later in itertools.pairwise(periods):
                if earlier.end is None or earlier.end > later.start:
                    raise ValueError(f"weekday {weekday}: periods must be sorted and must not overlap")
        # Copy into read-only containers so a frozen Schedule cannot change under a caller that kept the dict.
        object.__setattr__(self, "hours", MappingProxyType({day: tuple(ps) for day, ps in self.hours.items()}))
        object.__setattr__(self, "closures", frozenset(self.closures))

    def __hash__(self) -> int:
        # The generated hash would fail on the mapping; hash its items so a Schedule can key a cache.
        return hash((self.nation, tuple(sorted(self.hours.items())), self.closures, self.always_open))


# A team with no schedule takes referrals at all hours: working time is clock time for it.
ALWAYS_OPEN = Schedule(nation=Nation.ENGLAND, hours={}, always_open=True)


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def local_date(at: datetime) -> date:
    """The Europe/London calendar date of an aware instant."""
    return _aware(at, "at").astimezone(LONDON).date()


def local_to_utc(day: date, wall: time) -> datetime:
    """The UTC instant of a London wall time: a time in the spring gap is the end of the gap; an ambiguous
    autumn time is its first occurrence."""
    naive = datetime.combine(day, wall.replace(tzinfo=None))
    first = naive.replace(tzinfo=LONDON, fold=0).astimezone(UTC)
    if first.astimezone(LONDON).replace(tzinfo=None) == naive:
        return first  # exists; fold=0 already picked the first of two occurrences
    # In a gap fold=0 reads the time with the old offset (an instant after the jump) and fold=1 with the new
    # one (an instant before it): the jump lies between. Bisect to the microsecond for the first instant
    # with the new offset, so this holds for any zone rule, not just London's whole-hour jumps.
    after = first
    before = naive.replace(tzinfo=LONDON, fold=1).astimezone(UTC)
    new_offset = after.astimezone(LONDON).utcoffset()
    low, high = 0, (after - before) // timedelta(microseconds=1)
    while high - low > 1:
        mid = (low + high) // 2
        if (before + timedelta(microseconds=mid)).astimezone(LONDON).utcoffset() == new_offset:
            high = mid
        else:
            low = mid
    return before + timedelta(microseconds=high)


@functools.cache
def _holidays_for(nation: Nation, year: int) -> Mapping[date, str]:
    # Building a holidays object costs about a millisecond and working-time sums ask for every day:
    # cache per (nation, year). The data are fixed for the life of the installed package.
    found = holidays.country_holidays("GB", subdiv=_SUBDIV[nation], years=year)
    return MappingProxyType(dict(found.items()))


def bank_holidays(nation: Nation, years: Iterable[int]) -> dict[date, str]:
    """The nation's bank holidays (observed days included) in the given years, date -> name."""
    result: dict[date, str] = {}
    for year in years:
        result.update(_holidays_for(nation, year))
    return result


def holiday_data_end(nation: Nation) -> date:
    """The last day the installed holidays package knows the nation's bank holidays for (one UK-wide year)."""
    del nation  # the package has a single end year for the UK; the argument keeps callers per-nation
    return date(UnitedKingdom.end_year, 12, 31)


def calendar_warning(
    nation: Nation, today: date, horizon: timedelta = timedelta(days=120), data_end: date | None = None
) -> str | None:
    """A warning when bank holiday data runs out before `today + horizon`, else None."""
    end = holiday_data_end(nation) if data_end is None else data_end
    if end < today:
        return f"bank holiday data for {nation} ended on {end.isoformat()}; upgrade the holidays package"
    if end < today + horizon:
        return (
            f"bank holiday data for {nation} ends on {end.isoformat()}, within {horizon.days} days; "
            "upgrade the holidays package"
        )
    return None


def is_working_day(schedule: Schedule, day: date) -> bool:
    """Has hours that weekday, is not a bank holiday of the nation and is not a closure (24/7: always)."""
    if schedule.always_open:
        return True
    if not schedule.hours.get(day.weekday()):
        return False
    return day not in schedule.closures and day not in _holidays_for(schedule.nation, day.year)


def _periods(schedule: Schedule, day: date) -> tuple[Period, ...]:
    if schedule.always_open:
        return (Period(time(0, 0), None),)
    return schedule.hours.get(day.weekday(), ()) if is_working_day(schedule, day) else ()


def _day_intervals(schedule: Schedule, day: date) -> list[tuple[datetime, datetime]]:
    """The day's open periods as UTC intervals, adjacent ones merged, empty ones (inside the gap) dropped."""
    out: list[tuple[datetime, datetime]] = []
    for period in _periods(schedule, day):
        start = local_to_utc(day, period.start)
        end = local_to_utc(day + _DAY, time(0, 0)) if period.end is None else local_to_utc(day, period.end)
        if start >= end:
            continue
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _intervals_from(schedule: Schedule, first_day: date) -> Iterator[tuple[datetime, datetime]]:
    """Open intervals day by day from first_day on, without end. Raises ValueError after SEARCH_LIMIT_DAYS
    days in a row with no open time, so a schedule with no hours cannot hang a caller."""
    day, idle = first_day, 0
    while True:
        intervals = _day_intervals(schedule, day)
        idle = 0 if intervals else idle + 1
        if idle > SEARCH_LIMIT_DAYS:
            raise ValueError(
                f"schedule has no open time in {SEARCH_LIMIT_DAYS} days from {first_day.isoformat()}; "
                "give it opening hours on at least one weekday"
            )
        yield from intervals
        day += _DAY


def _has_hours(schedule: Schedule) -> bool:
    return schedule.always_open or any(schedule.hours.values())


def is_open(schedule: Schedule, at: datetime) -> bool:
    """Whether the team is open at the instant `at`."""
    at = _aware(at, "at")
    if schedule.always_open:
        return True
    day = local_date(at)
    # A day's periods can only reach into the next day by ending at 24:00, so yesterday and today cover `at`.
    return any(start <= at < end for d in (day - _DAY, day) for start, end in _day_intervals(schedule, d))


def open_intervals(schedule: Schedule, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Maximal open intervals within [start, end), in UTC, periods that touch merged (also across midnight)."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if start >= end:
        return []
    out: list[tuple[datetime, datetime]] = []
    day, last = local_date(start) - _DAY, local_date(end)
    while day <= last:
        for low, high in _day_intervals(schedule, day):
            low, high = max(low, start), min(high, end)
            if low >= high:
                continue
            if out and out[-1][1] == low:
                out[-1] = (out[-1][0], high)
            else:
                out.append((low, high))
        day += _DAY
    return out


def next_change(schedule: Schedule, at: datetime) -> datetime | None:
    """The first instant after `at` at which `is_open` flips; None if it never does (24/7, or no hours)."""
    at = _aware(at, "at")
    if not _has_hours(schedule) or schedule.always_open:
        return None
    current_end: datetime | None = None
    for start, end in _intervals_from(schedule, local_date(at) - _DAY):
        if end <= at:
            continue
        if current_end is None:
            if start > at:
                return start  # closed now; opens at `start`
            current_end = end  # open now; follow the run of touching intervals to its end
        elif start == current_end:
            current_end = end
        else:
            return current_end
        if current_end - at > timedelta(days=SEARCH_LIMIT_DAYS):
            raise ValueError(f"schedule stays open for over {SEARCH_LIMIT_DAYS} days from {at.isoformat()}")
    raise AssertionError("unreachable: _intervals_from never ends")


def add_working_time(schedule: Schedule, start: datetime, amount: timedelta) -> datetime:
    """The first instant by which `amount` of open time has passed since `start` (0 -> start itself)."""
    start = _aware(start, "start")
    if amount < timedelta(0):
        raise ValueError(f"working time must not be negative, got {amount}")
    if amount == timedelta(0):
        return start
    if schedule.always_open:
        return start + amount
    remaining = amount
    for low, high in _intervals_from(schedule, local_date(start) - _DAY):
        if high <= start:
            continue
        low = max(low, start)
        if remaining <= high - low:
            return low + remaining  # may be exactly a closing time: the earliest instant, not the next opening
        remaining -= high - low
    raise AssertionError("unreachable: _intervals_from never ends")


def end_of_next_working_day(schedule: Schedule, at: datetime) -> datetime:
    """The close (end of the last open period) of the first working day whose London date is after at's.

    This is "within 1 working day" in Working Together to Safeguard Children. A 24/7 schedule closes each
    day at midnight. A working day whose only hours fall inside the spring-forward gap has no open time and
    is passed over.
    """
    today = local_date(at)
    for offset in range(1, SEARCH_LIMIT_DAYS + 1):
        day = today + timedelta(days=offset)
        intervals = _day_intervals(schedule, day)
        if intervals:
            return intervals[-1][1]
    raise ValueError(
        f"no working day within {SEARCH_LIMIT_DAYS} days after {today.isoformat()}; "
        "give the schedule opening hours on at least one weekday"
    )


def close_of_day(schedule: Schedule, at: datetime) -> datetime | None:
    """When the office closes for the day it is open at `at`: the end of the day's last open period
    (lunch breaks are not a close), followed across midnight into open time that touches it. None
    when the office has closed for the day already, is shut all day, or never closes (24/7)."""
    at = _aware(at, "at")
    if schedule.always_open or not _has_hours(schedule):
        return None
    day = local_date(at)
    # Yesterday's hours can run into today only through a 24:00 end; then today is part of that run.
    for d in (day - _DAY, day):
        intervals = _day_intervals(schedule, d)
        if intervals and intervals[0][0] <= at < intervals[-1][1]:
            return next_change(schedule, max(at, intervals[-1][0]))
    return None

"""Office hours, bank holidays and working time (gateway.schedule): named cases, then properties."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta

import pytest
from holidays.countries.united_kingdom import UnitedKingdom
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.clock import LONDON
from gateway.duty.schedule import (
    Nation,
    Period,
    Schedule,
    add_working_time,
    bank_holidays,
    calendar_warning,
    close_of_day,
    end_of_next_working_day,
    holiday_data_end,
    is_open,
    is_working_day,
    local_date,
    local_to_utc,
    next_change,
    open_intervals,
)

NINE_TO_FIVE = (Period(time(9), time(17)),)
ALL_DAY = (Period(time(0), None),)


def office(nation: Nation = Nation.ENGLAND, closures: frozenset[date] = frozenset()) -> Schedule:
    """09:00-17:00 Monday to Friday."""
    return Schedule(nation, dict.fromkeys(range(5), NINE_TO_FIVE), closures)


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=LONDON)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def open_time(intervals: list[tuple[datetime, datetime]]) -> timedelta:
    return sum((end - start for start, end in intervals), timedelta(0))


# --- wall time to UTC across both changes (UK 2026: forward 29 Mar 01:00 UTC, back 25 Oct 01:00 UTC)


def test_local_times_in_gmt_and_bst() -> None:
    assert local_to_utc(date(2026, 1, 15), time(9)) == utc(2026, 1, 15, 9)
    assert local_to_utc(date(2026, 7, 15), time(9)) == utc(2026, 7, 15, 8)


def test_a_wall_time_in_the_spring_gap_is_the_first_instant_after_it() -> None:
    assert local_to_utc(date(2026, 3, 29), time(1, 30)) == utc(2026, 3, 29, 1)
    assert local_to_utc(date(2026, 3, 29), time(1, 0)) == utc(2026, 3, 29, 1)
    assert local_to_utc(date(2026, 3, 29), time(0, 59, 59)) == utc(2026, 3, 29, 0, 59, 59)
    assert local_to_utc(date(2026, 3, 29), time(2, 0)) == utc(2026, 3, 29, 1)


def test_an_ambiguous_autumn_wall_time_is_its_first_occurrence() -> None:
    assert local_to_utc(date(2026, 10, 25), time(1, 30)) == utc(2026, 10, 25, 0, 30)
    assert local_to_utc(date(2026, 10, 25), time(2, 0)) == utc(2026, 10, 25, 2)


def test_working_time_over_the_spring_change_counts_real_hours() -> None:
    always = Schedule(Nation.ENGLAND, dict.fromkeys(range(7), ALL_DAY))
    # 23:00 GMT Saturday + 3 real hours = 02:00 UTC = 03:00 BST: four hours on the wall clock.
    assert add_working_time(always, london(2026, 3, 28, 23), timedelta(hours=3)) == utc(2026, 3, 29, 2)
    # Open 00:00-03:00 on Sundays is two real hours on the day the clocks go forward.
    sundays = Schedule(Nation.ENGLAND, {6: (Period(time(0), time(3)),)})
    assert open_intervals(sundays, utc(2026, 3, 28), utc(2026, 3, 30)) == [(utc(2026, 3, 29, 0), utc(2026, 3, 29, 2))]
    # Office hours on each side of the change: Friday 16:00 GMT + 2 working hours = Monday 10:00 BST.
    assert add_working_time(office(), london(2026, 3, 27, 16), timedelta(hours=2)) == utc(2026, 3, 30, 9)
    assert end_of_next_working_day(office(), london(2026, 3, 27, 12)) == utc(2026, 3, 30, 16)


def test_working_time_over_the_autumn_change_counts_real_hours() -> None:
    always = Schedule(Nation.ENGLAND, dict.fromkeys(range(7), ALL_DAY))
    # 23:00 BST Saturday + 3 real hours = 01:00 UTC, the second 01:00 on the wall clock.
    assert add_working_time(always, london(2026, 10, 24, 23), timedelta(hours=3)) == utc(2026, 10, 25, 1)
    sundays = Schedule(Nation.ENGLAND, {6: (Period(time(0), time(3)),)})
    assert open_time(open_intervals(sundays, utc(2026, 10, 24), utc(2026, 10, 26))) == timedelta(hours=4)
    assert add_working_time(office(), london(2026, 10, 23, 16), timedelta(hours=2)) == utc(2026, 10, 26, 10)
    assert end_of_next_working_day(office(), london(2026, 10, 23, 12)) == utc(2026, 10, 26, 17)


def test_a_period_inside_the_spring_gap_has_no_open_time() -> None:
    gap_only = Schedule(Nation.ENGLAND, {6: (Period(time(1, 15), time(1, 45)),)})
    assert open_intervals(gap_only, utc(2026, 3, 28), utc(2026, 3, 30)) == []
    # ...so end_of_next_working_day passes over that Sunday to the next one.
    assert end_of_next_working_day(gap_only, london(2026, 3, 28, 12)) == utc(2026, 4, 5, 0, 45)


# --- bank holidays of each nation


@pytest.mark.parametrize("nation", list(Nation))
def test_christmas_and_good_friday_are_holidays_everywhere(nation: Nation) -> None:
    schedule = office(nation)
    assert not is_working_day(schedule, date(2026, 12, 25))
    assert not is_working_day(schedule, date(2026, 12, 28))  # Boxing Day (Saturday) observed on Monday
    assert not is_working_day(schedule, date(2026, 4, 3))
    assert is_working_day(schedule, date(2026, 12, 29))
    # Thursday 24 Dec, 12:00: the next working day is Tuesday 29 Dec in every nation.
    assert end_of_next_working_day(schedule, london(2026, 12, 24, 12)) == utc(2026, 12, 29, 17)


@pytest.mark.parametrize(
    ("nation", "easter_monday_works", "due"),
    [
        (Nation.ENGLAND, False, utc(2026, 4, 7, 16)),
        (Nation.WALES, False, utc(2026, 4, 7, 16)),
        (Nation.NORTHERN_IRELAND, False, utc(2026, 4, 7, 16)),
        (Nation.SCOTLAND, True, utc(2026, 4, 6, 16)),
    ],
)
def test_easter_monday_is_a_holiday_except_in_scotland(
    nation: Nation, easter_monday_works: bool, due: datetime
) -> None:
    schedule = office(nation)
    assert is_working_day(schedule, date(2026, 4, 6)) is easter_monday_works
    # Maundy Thursday 16:59 BST: Good Friday is closed everywhere, Easter Monday only outside Scotland.
    assert end_of_next_working_day(schedule, london(2026, 4, 2, 16, 59)) == due


@pytest.mark.parametrize("nation", list(Nation))
def test_nation_specific_holidays(nation: Nation) -> None:
    schedule = office(nation)
    scotland, northern_ireland = nation is Nation.SCOTLAND, nation is Nation.NORTHERN_IRELAND
    assert is_working_day(schedule, date(2026, 1, 2)) is not scotland  # 2 January
    assert is_working_day(schedule, date(2026, 11, 30)) is not scotland  # St Andrew's Day
    assert is_working_day(schedule, date(2026, 3, 17)) is not northern_ireland  # St Patrick's Day
    assert is_working_day(schedule, date(2027, 7, 12)) is not northern_ireland  # 12 July, a Monday in 2027
    assert is_working_day(schedule, date(2026, 7, 13)) is not northern_ireland  # 12 July 2026 (Sunday) observed


def test_new_year_in_scotland_runs_to_the_observed_2_january() -> None:
    # 1 Jan 2027 is a Friday; 2 Jan (Saturday) is observed on Monday 4 Jan in Scotland only.
    assert end_of_next_working_day(office(Nation.ENGLAND), london(2026, 12, 31, 12)) == utc(2027, 1, 4, 17)
    assert end_of_next_working_day(office(Nation.SCOTLAND), london(2026, 12, 31, 12)) == utc(2027, 1, 5, 17)


def test_bank_holidays_lists_names_by_date() -> None:
    found = bank_holidays(Nation.SCOTLAND, [2026, 2027])
    assert "Andrew" in found[date(2026, 11, 30)]
    assert date(2027, 1, 4) in found
    assert date(2026, 4, 6) not in found
    assert bank_holidays(Nation.ENGLAND, []) == {}


def test_holiday_data_end_and_calendar_warning() -> None:
    assert holiday_data_end(Nation.WALES) == date(UnitedKingdom.end_year, 12, 31)
    assert calendar_warning(Nation.ENGLAND, date(2026, 11, 25)) is None
    # The installed package's own end (2100-12-31 in holidays 0.109), 100 days ahead.
    end_year = UnitedKingdom.end_year
    assert calendar_warning(Nation.SCOTLAND, date(end_year, 12, 31) - timedelta(days=100)) == (
        f"bank holiday data for scotland ends on {end_year}-12-31, within 120 days; upgrade the holidays package"
    )
    end = date(2026, 12, 31)
    assert calendar_warning(Nation.ENGLAND, date(2026, 9, 2), data_end=end) is None
    assert calendar_warning(Nation.ENGLAND, date(2026, 9, 3), data_end=end) == (
        "bank holiday data for england ends on 2026-12-31, within 120 days; upgrade the holidays package"
    )
    assert calendar_warning(Nation.ENGLAND, date(2026, 12, 1), timedelta(days=30), data_end=end) is None
    assert calendar_warning(Nation.NORTHERN_IRELAND, date(2027, 1, 1), data_end=end) == (
        "bank holiday data for northern-ireland ended on 2026-12-31; upgrade the holidays package"
    )


# --- closures, the leap day, edges


def test_an_extra_dated_closure_shuts_the_whole_day() -> None:
    schedule = office(closures=frozenset({date(2026, 12, 24)}))
    assert not is_working_day(schedule, date(2026, 12, 24))
    assert not is_open(schedule, london(2026, 12, 24, 12))
    # 1 hour left on the 23rd, then 24th (closure), 25th, weekend, 28th (holidays) are skipped.
    assert add_working_time(schedule, london(2026, 12, 23, 16), timedelta(hours=4)) == utc(2026, 12, 29, 12)
    assert end_of_next_working_day(schedule, london(2026, 12, 23, 10)) == utc(2026, 12, 29, 17)


def test_christmas_eve_1655_plus_4_working_hours_is_1255_on_tuesday_29_december() -> None:
    # 5 minutes to 17:00 on Thursday 24th; Fri 25th, Sat, Sun and Mon 28th (Boxing Day observed) are closed;
    # the other 3h55 run from 09:00 on Tuesday 29th (GMT, so UTC too).
    assert add_working_time(office(), london(2026, 12, 24, 16, 55), timedelta(hours=4)) == utc(2026, 12, 29, 12, 55)


def test_the_leap_day_is_an_ordinary_tuesday() -> None:
    assert date(2028, 2, 29).weekday() == 1
    assert is_working_day(office(), date(2028, 2, 29))
    assert end_of_next_working_day(office(), london(2028, 2, 28, 10)) == utc(2028, 2, 29, 17)
    assert end_of_next_working_day(office(), london(2028, 2, 29, 10)) == utc(2028, 3, 1, 17)
    assert add_working_time(office(), london(2028, 2, 28, 13), timedelta(hours=8)) == utc(2028, 2, 29, 13)


def test_friday_1659_is_due_at_the_close_of_the_next_working_day() -> None:
    friday = london(2026, 11, 27, 16, 59)
    assert end_of_next_working_day(office(Nation.ENGLAND), friday) == utc(2026, 11, 30, 17)
    assert end_of_next_working_day(office(Nation.SCOTLAND), friday) == utc(2026, 12, 1, 17)


def test_open_and_close_edges_are_half_open() -> None:
    schedule = office()
    assert not is_open(schedule, london(2026, 11, 24, 8, 59, 59))
    assert is_open(schedule, london(2026, 11, 24, 9))
    assert is_open(schedule, london(2026, 11, 24, 16, 59, 59))
    assert not is_open(schedule, london(2026, 11, 24, 17))
    assert next_change(schedule, london(2026, 11, 27, 16, 59)) == utc(2026, 11, 27, 17)
    assert next_change(schedule, london(2026, 11, 27, 17)) == utc(2026, 11, 30, 9)
    # Working time that ends exactly at a close ends there, not at the next opening.
    assert add_working_time(schedule, london(2026, 11, 24, 16, 55), timedelta(minutes=5)) == utc(2026, 11, 24, 17)
    assert add_working_time(schedule, london(2026, 11, 28, 12), timedelta(0)) == utc(2026, 11, 28, 12)


def test_touching_periods_merge_also_across_midnight() -> None:
    split = Schedule(Nation.ENGLAND, {0: (Period(time(9), time(12)), Period(time(12), time(17)))})
    monday = (utc(2026, 11, 23), utc(2026, 11, 24))
    assert open_intervals(split, *monday) == [(utc(2026, 11, 23, 9), utc(2026, 11, 23, 17))]
    night = Schedule(Nation.ENGLAND, {0: (Period(time(18), None),), 1: (Period(time(0), time(8)),)})
    monday_and_tuesday = (utc(2026, 11, 23), utc(2026, 11, 25))
    assert open_intervals(night, *monday_and_tuesday) == [(utc(2026, 11, 23, 18), utc(2026, 11, 24, 8))]
    assert next_change(night, london(2026, 11, 23, 20)) == utc(2026, 11, 24, 8)
    assert is_open(night, london(2026, 11, 23, 23, 59)) and is_open(night, london(2026, 11, 24, 0))
    # Clipped to the window asked for.
    assert open_intervals(night, utc(2026, 11, 23, 20), utc(2026, 11, 24, 1)) == [
        (utc(2026, 11, 23, 20), utc(2026, 11, 24, 1))
    ]


def test_a_24_7_service_is_always_open() -> None:
    edt = Schedule(Nation.ENGLAND, {}, always_open=True)
    assert is_open(edt, london(2026, 12, 25, 3))
    assert is_working_day(edt, date(2026, 12, 25))
    assert next_change(edt, london(2026, 12, 25, 3)) is None
    assert add_working_time(edt, london(2026, 12, 25, 3), timedelta(hours=4)) == utc(2026, 12, 25, 7)
    assert open_intervals(edt, utc(2026, 1, 1), utc(2026, 1, 2)) == [(utc(2026, 1, 1), utc(2026, 1, 2))]
    # Its "day" closes at midnight: the end of the next day.
    assert end_of_next_working_day(edt, london(2026, 7, 1, 10)) == utc(2026, 7, 2, 23)


def test_a_schedule_with_no_hours_never_opens_and_never_hangs() -> None:
    closed = Schedule(Nation.ENGLAND, {0: ()})
    assert not is_open(closed, utc(2026, 1, 5, 12))
    assert next_change(closed, utc(2026, 1, 5, 12)) is None
    assert open_intervals(closed, utc(2026, 1, 1), utc(2027, 1, 1)) == []
    with pytest.raises(ValueError, match="no open time in 366 days"):
        add_working_time(closed, utc(2026, 1, 5, 12), timedelta(hours=1))
    with pytest.raises(ValueError, match="no working day within 366 days"):
        end_of_next_working_day(closed, utc(2026, 1, 5, 12))


def test_bad_schedules_and_times_are_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        Period(time(17), time(9))
    with pytest.raises(ValueError, match="ends before it starts"):
        Period(time(9), time(9))
    with pytest.raises(ValueError, match="must not overlap"):
        Schedule(Nation.ENGLAND, {0: (Period(time(9), time(13)), Period(time(12), time(17)))})
    with pytest.raises(ValueError, match="must not overlap"):
        Schedule(Nation.ENGLAND, {0: (Period(time(9), None), Period(time(12), time(17)))})
    with pytest.raises(ValueError, match="Monday"):
        Schedule(Nation.ENGLAND, {7: NINE_TO_FIVE})
    with pytest.raises(ValueError, match="without a time zone"):
        Period(time(9, tzinfo=UTC), time(17))
    with pytest.raises(ValueError, match="timezone-aware"):
        is_open(office(), datetime(2026, 1, 5, 12))  # naive: the point of the test
    with pytest.raises(ValueError, match="negative"):
        add_working_time(office(), utc(2026, 1, 5), timedelta(minutes=-1))


def test_a_schedule_does_not_change_when_the_dict_it_was_built_from_does() -> None:
    hours = {0: NINE_TO_FIVE}
    schedule = Schedule(Nation.ENGLAND, hours)
    hours[1] = NINE_TO_FIVE
    assert 1 not in schedule.hours
    assert schedule == Schedule(Nation.ENGLAND, {0: NINE_TO_FIVE})
    assert hash(schedule) == hash(Schedule(Nation.ENGLAND, {0: NINE_TO_FIVE}))


# --- properties, over instants from 2024 to 2030 and generated schedules


def _last_sunday(year: int, month: int) -> date:
    last = date(year, month, 31)
    return last - timedelta(days=(last.weekday() - 6) % 7)


DST_CHANGES = [
    datetime.combine(_last_sunday(year, month), time(1), UTC) for year in range(2024, 2031) for month in (3, 10)
]

instants = st.one_of(
    st.datetimes(
        min_value=datetime(2024, 1, 1),
        max_value=datetime(2030, 12, 31, 23, 59),
        timezones=st.sampled_from([UTC, LONDON]),
        allow_imaginary=False,
    ),
    # Near a clock change, where the bugs live.
    st.builds(
        lambda change, minutes: change + timedelta(minutes=minutes),
        st.sampled_from(DST_CHANGES),
        st.integers(-4000, 4000),
    ),
)


@st.composite
def day_periods(draw: st.DrawFn) -> tuple[Period, ...]:
    """Quarter-hour boundaries (96 = 24:00), each segment between them open or shut; touching open segments
    become touching periods, which the schedule must merge."""
    points = sorted(draw(st.sets(st.integers(0, 96), min_size=2, max_size=6)))
    periods = []
    for low, high in itertools.pairwise(points):
        if draw(st.booleans()):
            end = None if high == 96 else time(high // 4, high % 4 * 15)
            periods.append(Period(time(low // 4, low % 4 * 15), end))
    return tuple(periods)


@st.composite
def schedules(draw: st.DrawFn, with_hours: bool = False) -> Schedule:
    hours = draw(st.dictionaries(st.integers(0, 6), day_periods(), max_size=7))
    if with_hours and not any(hours.values()):
        hours[draw(st.integers(0, 6))] = NINE_TO_FIVE
    return Schedule(
        nation=draw(st.sampled_from(list(Nation))),
        hours=hours,
        closures=draw(st.frozensets(st.dates(date(2024, 1, 1), date(2031, 1, 31)), max_size=4)),
        always_open=draw(st.integers(0, 9)) == 0,
    )


amounts = st.integers(0, 30 * 60).map(lambda minutes: timedelta(minutes=minutes)) | st.timedeltas(
    timedelta(0), timedelta(hours=2)
)
props = settings(max_examples=80, deadline=None)


@props
@given(schedules(), instants)
def test_is_open_agrees_with_open_intervals(schedule: Schedule, at: datetime) -> None:
    intervals = open_intervals(schedule, at - timedelta(days=3), at + timedelta(days=3))
    assert is_open(schedule, at) is any(low <= at < high for low, high in intervals)
    for low, high in intervals:
        assert low < high and low.tzinfo is UTC and high.tzinfo is UTC
    for (_, first_end), (second_start, _) in itertools.pairwise(intervals):
        assert first_end < second_start  # sorted, disjoint and maximal (touching ones merged)


@props
@given(schedules(), instants)
def test_next_change_is_where_is_open_first_flips(schedule: Schedule, at: datetime) -> None:
    change = next_change(schedule, at)
    if change is None:
        assert schedule.always_open or not any(schedule.hours.values())
        return
    assert change > at and change.tzinfo is UTC
    state = is_open(schedule, at)
    assert open_intervals(schedule, at, change) == ([(at.astimezone(UTC), change)] if state else [])
    assert is_open(schedule, change) is not state


@props
@given(schedules(with_hours=True), instants, amounts)
def test_add_working_time_spends_exactly_the_amount_of_open_time(
    schedule: Schedule, start: datetime, amount: timedelta
) -> None:
    due = add_working_time(schedule, start, amount)
    assert due >= start and due.tzinfo is UTC
    intervals = open_intervals(schedule, start, due)
    assert open_time(intervals) == amount
    if amount:
        assert intervals[-1][1] == due  # the earliest such instant: it ends inside open time


@props
@given(schedules(with_hours=True), instants, amounts, amounts)
def test_add_working_time_is_additive(schedule: Schedule, start: datetime, first: timedelta, second: timedelta) -> None:
    stepwise = add_working_time(schedule, add_working_time(schedule, start, first), second)
    assert stepwise == add_working_time(schedule, start, first + second)


@props
@given(schedules(with_hours=True), instants)
def test_end_of_next_working_day_is_a_later_working_days_close(schedule: Schedule, at: datetime) -> None:
    due = end_of_next_working_day(schedule, at)
    assert due > at and due.tzinfo is UTC
    last_open = due - timedelta(microseconds=1)
    day = local_date(last_open)  # a period ending at 24:00 closes on the next date's midnight
    assert day > local_date(at)
    assert is_working_day(schedule, day)
    assert is_open(schedule, last_open)
    # The day's last period ends there: nothing of that day is open after it.
    assert open_intervals(schedule, due, local_to_utc(day + timedelta(days=1), time(0))) == []
    # No earlier working day with open time was passed over.
    between = local_date(at) + timedelta(days=1)
    while between < day:
        assert open_intervals(schedule, local_to_utc(between, time(0)), local_to_utc(between, time(23, 59))) == []
        between += timedelta(days=1)


def test_close_of_day_is_the_end_of_the_last_period_not_a_lunch_break() -> None:
    lunch = Schedule(
        Nation.ENGLAND, dict.fromkeys(range(5), (Period(time(9), time(12, 30)), Period(time(13, 30), time(17))))
    )
    assert close_of_day(lunch, london(2026, 12, 24, 16, 55)) == london(2026, 12, 24, 17)
    assert close_of_day(lunch, london(2026, 12, 24, 12, 45)) == london(2026, 12, 24, 17)  # in the break
    assert close_of_day(office(), london(2026, 7, 1, 10)) == utc(2026, 7, 1, 16)  # 17:00 BST
    # Already closed for the day, shut all day (Christmas, a Saturday), or never closing: none.
    assert close_of_day(office(), london(2026, 12, 24, 17)) is None
    assert close_of_day(office(), london(2026, 12, 24, 8, 59)) is None
    assert close_of_day(office(), london(2026, 12, 25, 12)) is None
    assert close_of_day(office(), london(2026, 12, 26, 12)) is None
    assert close_of_day(Schedule(Nation.ENGLAND, {}, always_open=True), london(2026, 12, 24, 12)) is None
    # Hours to 24:00 that run on into the next day's: the close is where the open run ends.
    late = Schedule(Nation.ENGLAND, {0: (Period(time(18), None),), 1: (Period(time(0), time(2)),)})
    assert close_of_day(late, london(2026, 11, 23, 20)) == london(2026, 11, 24, 2)

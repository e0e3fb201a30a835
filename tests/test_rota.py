"""Who is on duty when (gateway.rota): hand-overs, overrides, clock changes, then properties."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.clock import LONDON
from gateway.duty.rota import (
    Override,
    Rota,
    Shift,
    changes,
    duty_intervals,
    on_duty,
    overlapping_overrides,
    shift_interval,
)
from tests.test_schedule import instants

WEEKDAYS = frozenset(range(5))
EVERY_DAY = frozenset(range(7))
DAYS = Shift(WEEKDAYS, time(9), time(17), ("alice", "bob"))
NIGHTS = Shift(EVERY_DAY, time(17), time(9), ("carol",))
ROTA = Rota((DAYS, NIGHTS))


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=LONDON)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_at_the_hand_over_minute_the_incoming_shift_is_on_duty() -> None:
    # Tuesday 24 November 2026.
    assert on_duty(ROTA, london(2026, 11, 24, 8, 59, 59)) == ("carol",)
    assert on_duty(ROTA, london(2026, 11, 24, 9)) == ("alice", "bob")
    assert on_duty(ROTA, london(2026, 11, 24, 16, 59, 59)) == ("alice", "bob")
    assert on_duty(ROTA, london(2026, 11, 24, 17)) == ("carol",)
    # Summer: the same wall times, an hour earlier in UTC.
    assert on_duty(ROTA, utc(2026, 7, 14, 7, 59, 59)) == ("carol",)
    assert on_duty(ROTA, utc(2026, 7, 14, 8)) == ("alice", "bob")


def test_a_gap_in_the_pattern_has_nobody() -> None:
    # Saturday daytime: the Friday night shift ended at 09:00 and no day shift runs at weekends.
    assert on_duty(ROTA, london(2026, 11, 28, 8, 59)) == ("carol",)
    assert on_duty(ROTA, london(2026, 11, 28, 12)) == ()
    assert on_duty(Rota(()), london(2026, 11, 28, 12)) == ()


def test_a_night_shift_over_the_spring_change_lasts_15_hours() -> None:
    start, end = shift_interval(NIGHTS, date(2026, 3, 28))
    assert (start, end) == (utc(2026, 3, 28, 17), utc(2026, 3, 29, 8))  # 17:00 GMT to 09:00 BST
    assert end - start == timedelta(hours=15)
    assert on_duty(ROTA, utc(2026, 3, 29, 7, 59, 59)) == ("carol",)
    assert on_duty(ROTA, utc(2026, 3, 29, 8)) == ()  # a Sunday: nobody after the night shift
    pieces = duty_intervals(ROTA, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    assert pieces == [
        (utc(2026, 3, 28, 12), utc(2026, 3, 28, 17), ()),
        (utc(2026, 3, 28, 17), utc(2026, 3, 29, 8), ("carol",)),
        (utc(2026, 3, 29, 8), utc(2026, 3, 29, 12), ()),
    ]


def test_a_night_shift_over_the_autumn_change_lasts_17_hours() -> None:
    start, end = shift_interval(NIGHTS, date(2026, 10, 24))
    assert (start, end) == (utc(2026, 10, 24, 16), utc(2026, 10, 25, 9))  # 17:00 BST to 09:00 GMT
    assert end - start == timedelta(hours=17)
    # Both 01:30s on the wall clock fall inside it.
    assert on_duty(ROTA, utc(2026, 10, 25, 0, 30)) == ("carol",)
    assert on_duty(ROTA, utc(2026, 10, 25, 1, 30)) == ("carol",)
    assert changes(ROTA, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == [utc(2026, 10, 24, 16), utc(2026, 10, 25, 9)]


def test_a_24_hour_shift_runs_to_the_same_time_next_day() -> None:
    weekly = Rota((Shift(frozenset({0}), time(9), time(9), ("dee",)),))
    assert shift_interval(weekly.shifts[0], date(2026, 11, 23)) == (utc(2026, 11, 23, 9), utc(2026, 11, 24, 9))
    assert on_duty(weekly, london(2026, 11, 24, 8, 59, 59)) == ("dee",)
    assert on_duty(weekly, london(2026, 11, 24, 9)) == ()


def test_an_override_replaces_the_pattern_between_its_edges() -> None:
    cover = Override(london(2026, 11, 24, 12), london(2026, 11, 24, 15), ("dave",), note="alice and bob on training")
    rota = Rota((DAYS, NIGHTS), (cover,))
    assert on_duty(rota, london(2026, 11, 24, 11, 59, 59)) == ("alice", "bob")
    assert on_duty(rota, london(2026, 11, 24, 12)) == ("dave",)
    assert on_duty(rota, london(2026, 11, 24, 14, 59, 59)) == ("dave",)
    assert on_duty(rota, london(2026, 11, 24, 15)) == ("alice", "bob")
    assert duty_intervals(rota, london(2026, 11, 24, 8), london(2026, 11, 24, 18)) == [
        (utc(2026, 11, 24, 8), utc(2026, 11, 24, 9), ("carol",)),
        (utc(2026, 11, 24, 9), utc(2026, 11, 24, 12), ("alice", "bob")),
        (utc(2026, 11, 24, 12), utc(2026, 11, 24, 15), ("dave",)),
        (utc(2026, 11, 24, 15), utc(2026, 11, 24, 17), ("alice", "bob")),
        (utc(2026, 11, 24, 17), utc(2026, 11, 24, 18), ("carol",)),
    ]


def test_an_override_across_a_hand_over_holds_and_may_leave_nobody() -> None:
    # Carol is on leave Tuesday night into Wednesday; nobody covers until 09:00 and the day shift.
    leave = Override(london(2026, 11, 24, 17), london(2026, 11, 25, 9), ())
    rota = Rota((DAYS, NIGHTS), (leave,))
    assert on_duty(rota, london(2026, 11, 24, 16, 59)) == ("alice", "bob")
    assert on_duty(rota, london(2026, 11, 24, 17)) == ()
    assert on_duty(rota, london(2026, 11, 25, 8, 59, 59)) == ()
    assert on_duty(rota, london(2026, 11, 25, 9)) == ("alice", "bob")
    # The override and the hand-over share their edges; each is listed once.
    assert changes(rota, london(2026, 11, 24, 12), london(2026, 11, 25, 12)) == [
        utc(2026, 11, 24, 17),
        utc(2026, 11, 25, 9),
    ]


def test_overlapping_shifts_list_each_member_once_in_shift_order() -> None:
    rota = Rota((Shift(EVERY_DAY, time(8), time(18), ("a", "b")), Shift(EVERY_DAY, time(12), time(20), ("c", "b"))))
    assert on_duty(rota, london(2026, 11, 24, 13)) == ("a", "b", "c")
    assert on_duty(rota, london(2026, 11, 24, 19)) == ("c", "b")


def test_overlapping_overrides_are_reported_by_index() -> None:
    first = Override(london(2026, 12, 1, 9), london(2026, 12, 1, 12), ("x",))
    touching = Override(london(2026, 12, 1, 12), london(2026, 12, 1, 13), ("y",))
    inside = Override(london(2026, 12, 1, 10), london(2026, 12, 1, 11), ("z",))
    apart = Override(london(2026, 12, 2, 10), london(2026, 12, 2, 11), ("w",))
    rota = Rota((), (first, touching, inside, apart))
    assert overlapping_overrides(rota) == [(0, 2)]
    assert on_duty(rota, london(2026, 12, 1, 10, 30)) == ("x",)  # the first listed wins where they overlap
    assert overlapping_overrides(Rota(())) == []


def test_bad_shifts_overrides_and_times_are_refused() -> None:
    with pytest.raises(ValueError, match="weekdays 0"):
        Shift(frozenset({7}), time(9), time(17), ("a",))
    with pytest.raises(ValueError, match="without a time zone"):
        Shift(WEEKDAYS, time(9, tzinfo=UTC), time(17), ("a",))
    with pytest.raises(ValueError, match="timezone-aware"):
        Override(datetime(2026, 12, 1, 9), london(2026, 12, 1, 12), ("x",))  # naive: the point of the test
    with pytest.raises(ValueError, match="before it starts"):
        Override(london(2026, 12, 1, 12), london(2026, 12, 1, 12), ("x",))
    with pytest.raises(ValueError, match="timezone-aware"):
        on_duty(ROTA, datetime(2026, 12, 1, 9))  # naive: the point of the test
    assert changes(ROTA, utc(2026, 12, 2), utc(2026, 12, 1)) == []
    assert duty_intervals(ROTA, utc(2026, 12, 2), utc(2026, 12, 2)) == []


# --- properties


def _quarter(n: int) -> time:
    return time(n // 4, n % 4 * 15)


shifts = st.builds(
    Shift,
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.integers(0, 95).map(_quarter),
    end=st.integers(0, 95).map(_quarter),
    members=st.lists(st.sampled_from(["ann", "ben", "cat", "dan"]), max_size=3).map(tuple),
)


@st.composite
def rotas_and_windows(draw: st.DrawFn) -> tuple[Rota, datetime, datetime]:
    # Arithmetic in UTC: adding to a London time moves the wall clock and drops fold, so across the autumn
    # change `start + 1 minute` could come out before `start`.
    start = draw(instants).astimezone(UTC)
    end = start + timedelta(minutes=draw(st.integers(1, 4 * 24 * 60)))
    overrides = []
    for _ in range(draw(st.integers(0, 3))):
        begin = start + timedelta(minutes=draw(st.integers(-600, 4 * 24 * 60)))
        length = timedelta(minutes=draw(st.integers(1, 24 * 60)))
        members = tuple(draw(st.lists(st.sampled_from(["ovr", "ann"]), max_size=2)))
        overrides.append(Override(begin, begin + length, members))
    return Rota(tuple(draw(st.lists(shifts, max_size=3))), tuple(overrides)), start, end


props = settings(max_examples=80, deadline=None)


@props
@given(rotas_and_windows(), st.floats(0, 1))
def test_on_duty_is_constant_between_consecutive_changes(case: tuple[Rota, datetime, datetime], where: float) -> None:
    rota, start, end = case
    cuts = [start.astimezone(UTC), *changes(rota, start, end), end.astimezone(UTC)]
    assert all(low < high for low, high in itertools.pairwise(cuts))  # sorted, distinct, inside the window
    for low, high in itertools.pairwise(cuts):
        inside = low + (high - low) * where
        probe = min(inside, high - timedelta(microseconds=1))
        assert on_duty(rota, low) == on_duty(rota, probe) == on_duty(rota, high - timedelta(microseconds=1))


@props
@given(rotas_and_windows())
def test_duty_intervals_tile_the_window_in_maximal_pieces(case: tuple[Rota, datetime, datetime]) -> None:
    rota, start, end = case
    pieces = duty_intervals(rota, start, end)
    # Compared in UTC: == between zones is never true for an ambiguous wall time (PEP 495).
    assert pieces[0][0] == start.astimezone(UTC) and pieces[-1][1] == end.astimezone(UTC)
    for (_, first_end, first_members), (second_start, _, second_members) in itertools.pairwise(pieces):
        assert first_end == second_start
        assert first_members != second_members
    for low, high, members in pieces:
        assert low < high and low.tzinfo is UTC
        assert on_duty(rota, low) == members == on_duty(rota, high - timedelta(microseconds=1))
        assert len(set(members)) == len(members)

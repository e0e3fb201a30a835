"""Acknowledgement deadlines (gateway.deadline_rules): parsing, wording, due times, then properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.clock import LONDON
from gateway.duty.deadline_rules import DeadlineRule, due_at, parse_deadline
from gateway.duty.schedule import Nation, Schedule
from tests.test_schedule import instants, office, schedules

WORKING_4H = DeadlineRule("working", timedelta(hours=4))
NEXT_DAY = DeadlineRule("next-working-day")


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("15m", DeadlineRule("clock", timedelta(minutes=15))),
        ("90s", DeadlineRule("clock", timedelta(seconds=90))),
        ("1h", DeadlineRule("clock", timedelta(hours=1))),
        (" 2d ", DeadlineRule("clock", timedelta(days=2))),
        ("24h", DeadlineRule("clock", timedelta(hours=24))),
        ("15 minutes", DeadlineRule("clock", timedelta(minutes=15))),
        ("1 hour", DeadlineRule("clock", timedelta(hours=1))),
        ("4 working hours", WORKING_4H),
        ("4  Working   Hours", WORKING_4H),
        ("1 working hour", DeadlineRule("working", timedelta(hours=1))),
        ("30 working minutes", DeadlineRule("working", timedelta(minutes=30))),
        ("end of next working day", NEXT_DAY),
        ("End of the next working day", NEXT_DAY),
    ],
)
def test_parse_deadline_accepts(text: str, rule: DeadlineRule) -> None:
    assert parse_deadline(text) == rule


def test_an_unknown_deadline_says_what_to_write_instead() -> None:
    with pytest.raises(ValueError) as caught:
        parse_deadline("4 work hours")
    assert str(caught.value) == (
        '\'4 work hours\' is not a deadline; use a duration like "15m" or "1h", working time like '
        '"4 working hours", or "end of next working day"'
    )


@pytest.mark.parametrize("text", ["", "15", "15ms", "1.5h", "-5m", "h", "working hours", "next working day", "4 hrs"])
def test_other_wrong_deadlines_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a deadline; use a duration"):
        parse_deadline(text)


def test_working_days_and_zero_and_absurd_deadlines_are_refused_with_reasons() -> None:
    with pytest.raises(ValueError, match=r'working days are not supported.*"end of next working day"'):
        parse_deadline("2 working days")
    with pytest.raises(ValueError, match="deadline of zero"):
        parse_deadline("0m")
    with pytest.raises(ValueError, match="too long"):
        parse_deadline("999999999999d")
    with pytest.raises(ValueError, match="takes no amount"):
        DeadlineRule("next-working-day", timedelta(hours=1))
    with pytest.raises(ValueError, match="longer than zero"):
        DeadlineRule("working")
    with pytest.raises(ValueError, match="whole number of seconds"):
        DeadlineRule("clock", timedelta(milliseconds=1500))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("15m", "15 minutes"),
        ("1h", "1 hour"),
        ("60m", "1 hour"),
        ("90m", "90 minutes"),
        ("90s", "90 seconds"),
        ("24h", "1 day"),
        ("36h", "36 hours"),
        ("4 working hours", "4 working hours"),
        ("1 working hour", "1 working hour"),
        ("30 working minutes", "30 working minutes"),
        ("end of next working day", "end of the next working day"),
    ],
)
def test_describe(text: str, words: str) -> None:
    assert parse_deadline(text).describe() == words


def test_friday_1659_standard_referral_is_due_at_close_of_the_next_working_day() -> None:
    rule = parse_deadline("end of next working day")
    friday = london(2026, 11, 27, 16, 59)
    assert due_at(rule, friday, office(Nation.ENGLAND)) == utc(2026, 11, 30, 17)
    # Monday 30 November is St Andrew's Day in Scotland.
    assert due_at(rule, friday, office(Nation.SCOTLAND)) == utc(2026, 12, 1, 17)


def test_urgent_referral_at_1655_on_christmas_eve() -> None:
    # 5 minutes on Thursday 24th; 25th, the weekend and Monday 28th (Boxing Day observed) closed;
    # 3h55 from 09:00 on Tuesday 29th.
    assert due_at(WORKING_4H, london(2026, 12, 24, 16, 55), office()) == utc(2026, 12, 29, 12, 55)
    with_closure = office(closures=frozenset({date(2026, 12, 24)}))
    assert due_at(WORKING_4H, london(2026, 12, 24, 16, 55), with_closure) == utc(2026, 12, 29, 13)


def test_clock_deadlines_ignore_the_schedule_and_come_back_in_utc() -> None:
    due = due_at(parse_deadline("15m"), london(2026, 12, 25, 9), office())
    assert due == utc(2026, 12, 25, 9, 15) and due.tzinfo is UTC
    # Over the spring change: 00:30 GMT + 1h is 01:30 UTC, 02:30 BST.
    assert due_at(parse_deadline("1h"), london(2026, 3, 29, 0, 30), office()) == utc(2026, 3, 29, 1, 30)


def test_a_24_7_team_counts_working_time_as_clock_time() -> None:
    edt = Schedule(Nation.ENGLAND, {}, always_open=True)
    assert due_at(WORKING_4H, london(2026, 12, 25, 22), edt) == utc(2026, 12, 26, 2)


def test_due_at_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due_at(WORKING_4H, datetime(2026, 12, 24, 16, 55), office())  # naive: the point of the test


# --- properties

rules = st.one_of(
    st.just(NEXT_DAY),
    st.builds(
        DeadlineRule,
        st.sampled_from(["clock", "working"]),
        st.integers(1, 3 * 86400).map(lambda seconds: timedelta(seconds=seconds)),
    ),
)
props = settings(max_examples=80, deadline=None)


@props
@given(rules)
def test_describe_reads_back_as_the_same_rule(rule: DeadlineRule) -> None:
    assert parse_deadline(rule.describe()) == rule


@props
@given(schedules(with_hours=True), instants, st.integers(1, 30 * 60))
def test_working_time_is_never_earlier_than_clock_time(schedule: Schedule, received: datetime, minutes: int) -> None:
    amount = timedelta(minutes=minutes)
    working = due_at(DeadlineRule("working", amount), received, schedule)
    assert working >= due_at(DeadlineRule("clock", amount), received, schedule)
    assert working.tzinfo is UTC

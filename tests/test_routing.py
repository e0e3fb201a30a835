"""Routing as a pure function: the first matching rule, then the in-hours or out-of-hours team by
the team's schedule at the moment the referral arrived (bank holidays and closures included)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import config as config_mod
from gateway.config import Settings
from gateway.config.duty import Route
from gateway.core.clock import LONDON
from gateway.core.model import Category, Channel, Child, Referral, Referrer, Urgency
from gateway.duty.schedule import is_open
from gateway.route.rules import Facts, route
from tests.test_check_config import SHIPPED

SHIPPED_SETTINGS = config_mod.load(SHIPPED).settings


def referral(**child: object) -> Referral:
    fields: dict[str, object] = {"postcode": "W1A 1AA", "date_of_birth": date(2021, 3, 5)}
    fields.update(child)
    return Referral(
        referrer=Referrer(name="Ann Example", organisation="Example Maternity Unit"),
        child=Child(name="Sam Testchild", **fields),  # type: ignore[arg-type]
        category=Category.NEGLECT,
        urgency=Urgency.URGENT,
    )


def london(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def team_at(when: str, settings_: Settings = SHIPPED_SETTINGS, **child: object) -> str:
    return route(referral(**child), settings_, Facts(at=london(when))).team_id


def test_in_office_hours_mash_out_of_hours_the_emergency_duty_team() -> None:
    assert team_at("2026-11-25T10:00") == "mash"  # Wednesday morning
    assert team_at("2026-11-25T16:59:59") == "mash"
    assert team_at("2026-11-25T17:00") == "edt"  # the office has closed
    assert team_at("2026-11-27T16:29") == "mash"  # Friday: the office closes at 16:30
    assert team_at("2026-11-27T16:30") == "edt"
    assert team_at("2026-11-28T11:00") == "edt"  # Saturday
    assert team_at("2026-12-24T16:55") == "mash"  # Christmas Eve is a working day...
    assert team_at("2026-12-25T10:00") == "edt"  # ...Christmas Day is not,
    assert team_at("2026-12-28T10:00") == "edt"  # nor Monday 28th (Boxing Day falls on a Saturday)
    assert team_at("2027-03-29T10:00") == "edt"  # Easter Monday in England


def test_scotland_keeps_easter_monday_but_closes_on_st_andrews_day() -> None:
    schedules = tuple(s.model_copy(update={"nation": "scotland"}) for s in SHIPPED_SETTINGS.schedules)
    scottish = SHIPPED_SETTINGS.model_copy(update={"schedules": schedules})
    assert team_at("2027-03-29T10:00", scottish) == "mash"
    assert team_at("2026-11-30T10:00", scottish) == "edt"
    assert team_at("2026-11-30T10:00") == "mash"  # an ordinary Monday in England


def test_an_extra_closure_sends_the_day_out_of_hours() -> None:
    schedules = tuple(s.model_copy(update={"closures": (date(2026, 12, 31),)}) for s in SHIPPED_SETTINGS.schedules)
    closed = SHIPPED_SETTINGS.model_copy(update={"schedules": schedules})
    assert team_at("2026-12-31T10:00", closed) == "edt"
    assert team_at("2026-12-30T10:00", closed) == "mash"


def with_routes(*routes: Route) -> Settings:
    default = Route(name="default", team="triage", default=True)
    return SHIPPED_SETTINGS.model_copy(update={"routes": (*routes, default)})


def test_age_bands_including_unborn() -> None:
    rules = with_routes(
        Route(name="pre-birth", team="mash", age=("unborn",)),
        Route(name="under-fives", team="edt", age=("0-4",)),
    )
    at = "2026-03-04T10:00"  # the day before the child's fifth birthday
    assert route(referral(), rules, Facts(at=london(at))).route.name == "under-fives"
    assert route(referral(), rules, Facts(at=london("2026-03-05T10:00"))).route.name == "default"
    unborn = referral(date_of_birth=None, due_date=date(2027, 1, 10))
    decision = route(unborn, rules, Facts(at=london(at)))
    assert decision.route.name == "pre-birth"
    assert decision.checks[0].why == "age band unborn is in unborn"
    unknown = referral(date_of_birth=None)
    assert route(unknown, rules, Facts(at=london(at))).route.name == "default"  # no age: no age rule matches


def test_leap_day_birthday_counts_from_the_first_of_march() -> None:
    rules = with_routes(Route(name="under-fives", team="edt", age=("0-4",)))
    leapling = referral(date_of_birth=date(2024, 2, 29))
    assert route(leapling, rules, Facts(at=london("2029-02-28T10:00"))).route.name == "under-fives"
    assert route(leapling, rules, Facts(at=london("2029-03-01T10:00"))).route.name == "default"


def test_channel_referrer_organisation_and_local_authority() -> None:
    rules = with_routes(
        Route(name="by-sms", team="edt", channel=(Channel.SMS,)),
        Route(name="from-the-trust", team="edt", referrer=("example maternity unit",)),
        Route(name="in-borough", team="mash", local_authority=("E09000999",)),
    )
    at = london("2026-11-25T10:00")
    assert route(referral(), rules, Facts(at=at, channel="sms")).route.name == "by-sms"
    named = route(referral(), rules, Facts(at=at, organisation="Example Maternity Unit"))
    assert named.route.name == "from-the-trust"
    assert route(referral(), rules, Facts(at=at)).route.name == "in-borough"
    elsewhere = route(referral(postcode="M1 1AE"), rules, Facts(at=at))
    assert elsewhere.route.name == "default"
    assert elsewhere.checks[2].why == "local authority unknown is not in E09000999"


INSTANTS = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(at=INSTANTS, urgency=st.sampled_from(list(Urgency)), category=st.sampled_from(list(Category)))
def test_every_instant_goes_to_the_in_hours_team_exactly_when_it_is_open(
    at: datetime, urgency: Urgency, category: Category
) -> None:
    item = Referral(
        referrer=Referrer(name="Ann Example"),
        child=Child(name="Sam Testchild", postcode="W1A 1AA", date_of_birth=date(2020, 1, 1)),
        category=category,
        urgency=urgency,
    )
    decision = route(item, SHIPPED_SETTINGS, Facts(at=at))
    chosen = decision.route
    team = SHIPPED_SETTINGS.team(chosen.team)
    schedule = SHIPPED_SETTINGS.schedule_of(team)
    open_now = schedule is None or is_open(schedule.to_schedule(), at)
    assert decision.in_hours == open_now
    assert decision.team_id == (chosen.team if open_now or chosen.out_of_hours is None else chosen.out_of_hours)
    # The same referral a moment later is routed by the same rule (rules do not depend on time).
    assert route(item, SHIPPED_SETTINGS, Facts(at=at + timedelta(hours=7))).route == chosen

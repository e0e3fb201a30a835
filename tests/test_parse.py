"""Parsing referrals: the template round-trips, the way people really fill it in still parses, and
nothing a referrer sends is bounced or raises. All data is synthetic; the NHS numbers are from the
999 test range (tests/test_nhs.py checks 9990000018 against an independent implementation)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.core.model import Category, Problem, Urgency
from gateway.parse.referral import (
    DOCUMENT,
    FIELDS,
    LABELS,
    fields_from_json,
    fields_from_text,
    parse_json,
    parse_text,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2024, 6, 1)
VALID = {
    "referrer_name": "Alex Example",
    "referrer_role": "Health visitor",
    "referrer_organisation": "Example Health Centre",
    "referrer_email": "alex.example@example.org",
    "referrer_phone": "020 7946 0000",
    "child_name": "Sam Sample",
    "child_dob": "05/03/2021",
    "child_nhs_number": "999 000 0018",
    "child_address": "1 Example Street\nLondon",
    "child_postcode": "w1a 1aa",
    "category": "Neglect",
    "urgency": "urgent",
    "parents_aware": "yes",
    "consent_basis": "Mother consented by phone",
    "details": "Synthetic concern.\n\nSecond paragraph.",
}


def problems_of(fields: dict[str, str]) -> dict[str, str]:
    return {p.field: p.message for p in validate(fields, TODAY).problems}


def test_valid_fields_make_a_complete_normalised_referral() -> None:
    referral = validate(VALID, TODAY)
    assert referral.problems == ()
    assert referral.child.date_of_birth == date(2021, 3, 5)
    assert (referral.child.nhs_number, referral.child.postcode) == ("9990000018", "W1A 1AA")
    assert (referral.category, referral.urgency, referral.parents_aware) == (Category.NEGLECT, Urgency.URGENT, True)
    assert referral.child.address == "1 Example Street\nLondon"
    assert referral.details == "Synthetic concern.\n\nSecond paragraph."


def template_labels() -> list[str]:
    lines = (ROOT / "templates" / "referral-email.txt").read_text(encoding="utf-8").splitlines()
    return [line.split(":", 1)[0] for line in lines if line.strip() and not line.startswith("#")]


def test_template_has_every_field_once_with_details_last() -> None:
    labels = template_labels()
    assert sorted(labels) == sorted(LABELS.values())
    assert labels[-1] == "Details"


def test_the_template_filled_in_round_trips_to_a_complete_referral() -> None:
    key_of = {label: key for key, label in LABELS.items()}
    body = []
    for line in (ROOT / "templates" / "referral-email.txt").read_text(encoding="utf-8").splitlines():
        label = line.split(":", 1)[0]
        if not line.startswith("#") and label in key_of:
            line = f"{line} {VALID.get(key_of[label], '')}"
        body.append(line)
    body.append("-- \nAlex Example\nHealth visitor")
    assert fields_from_text("\n".join(body)) == VALID
    assert parse_text("\n".join(body), TODAY) == validate(VALID, TODAY)


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("DOB", "child_dob"),
        ("Date of birth", "child_dob"),
        ("Child's date of birth", "child_dob"),
        ("Child’s D.O.B.", "child_dob"),
        ("Postcode", "child_postcode"),
        ("Child postcode", "child_postcode"),
        ("Category", "category"),
        ("Concern category", "category"),
        ("Parents aware", "parents_aware"),
        ("Parents/carers aware", "parents_aware"),
        ("  child's NAME  ", "child_name"),
        ("E-mail", "referrer_email"),
        ("**Urgency**", "urgency"),
    ],
)
def test_labels_are_case_and_spacing_tolerant_with_aliases(label: str, key: str) -> None:
    assert fields_from_text(f"{label}:   some value  ") == {key: "some value"}


def test_unknown_lines_continue_the_field_above() -> None:
    body = "Child's address: Flat 2\n  Rose Court: east wing\nLondon\n\nChild's postcode: W1A 1AA"
    assert fields_from_text(body) == {
        "child_address": "Flat 2\nRose Court: east wing\nLondon",
        "child_postcode": "W1A 1AA",
    }


def test_mail_artefacts_are_ignored() -> None:
    body = (
        "Hi team,\r\n# instruction\r\nChild\u2019s\u00a0name:\tSam\u00a0Sample\r\n> Urgency: standard\r\n"
        "Urgency: immediate\r\nDetails: line one\r\n\r\n  line two\r\n> quoted reply\r\n-- \r\nAlex\r\n"
    )
    assert fields_from_text(body) == {
        "child_name": "Sam Sample",
        "urgency": "immediate",
        "details": "line one\n\n  line two",
    }


def test_details_take_everything_to_the_end_even_label_like_lines() -> None:
    fields = fields_from_text("Details: first\nUrgency: not a field any more\n# kept as well")
    assert fields == {"details": "first\nUrgency: not a field any more\n# kept as well"}


def test_a_forwarded_referral_that_is_all_quoted_is_still_read() -> None:
    body = "FYI, see below.\n\nOn Mon, Alex wrote:\n> Child's name: Sam Sample\n>> Details: quoted concern"
    assert fields_from_text(body) == {"child_name": "Sam Sample", "details": "quoted concern"}


def test_free_text_without_the_template_becomes_the_details() -> None:
    fields = fields_from_text("I am worried about a child in my class.\nPlease call me.\n-- \nAlex")
    assert fields == {"details": "I am worried about a child in my class.\nPlease call me."}
    referral = parse_text("I am worried about a child.", TODAY)
    assert referral.details == "I am worried about a child." and referral.incomplete


@pytest.mark.parametrize(
    "written",
    (
        "05/03/2021|5/3/2021|5/3/21|05-03-2021|05.03.2021|2021-03-05|5 March 2021|5 Mar 2021|5 mar. 2021"
        "|5th of March 2021|05 / 03 / 2021|05\u201303\u20132021|5 MARCH 2021|5 3 2021"
    ).split("|"),
)
def test_dates_are_read_day_first_in_the_usual_formats(written: str) -> None:
    assert validate(VALID | {"child_dob": written}, TODAY).child.date_of_birth == date(2021, 3, 5)


def test_dates_are_never_read_month_first_and_two_digit_years_pivot() -> None:
    assert validate(VALID | {"child_dob": "03/12/2020"}, TODAY).child.date_of_birth == date(2020, 12, 3)
    assert validate(VALID | {"child_dob": "1/9/05"}, TODAY).child.date_of_birth == date(2005, 9, 1)
    assert problems_of(VALID | {"child_dob": "1/9/98"})["child_dob"].endswith("25 years ago; check the year")


@pytest.mark.parametrize(
    ("dob", "message"),
    [
        ("31/02/2021", "Child's date of birth is not a real calendar date"),
        ("03/13/2021", "Child's date of birth is not a real calendar date"),
        ("last spring", "Child's date of birth is not a date the gateway can read; write it as DD/MM/YYYY"),
        ("5 Smarch 2021", "Child's date of birth is not a date the gateway can read; write it as DD/MM/YYYY"),
        ("02/06/2024", "Child's date of birth is in the future"),
    ],
)
def test_bad_dates_of_birth_are_problems(dob: str, message: str) -> None:
    referral = validate(VALID | {"child_dob": dob}, TODAY)
    assert referral.child.date_of_birth is None
    assert problems_of(VALID | {"child_dob": dob}) == {"child_dob": message}


def test_an_unborn_baby_needs_a_due_date_but_no_name_or_date_of_birth() -> None:
    unborn = {k: v for k, v in VALID.items() if k not in ("child_name", "child_dob")} | {"category": "unborn"}
    for due, ok in [("20/04/2024", True), ("19/04/2024", False), ("01/04/2025", True), ("02/04/2025", False)]:
        referral = validate(unborn | {"child_due_date": due}, TODAY)
        assert (referral.problems == ()) is ok, due
        assert referral.category is Category.PRE_BIRTH
    assert problems_of(unborn) == {
        "child_name": "Child's name is missing",
        "child_dob": "Child's date of birth is missing (for an unborn baby, give the due date)",
    }


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("DA", Category.DOMESTIC_ABUSE),
        ("Domestic Violence", Category.DOMESTIC_ABUSE),
        ("domestic abuse", Category.DOMESTIC_ABUSE),
        ("prebirth", Category.PRE_BIRTH),
        ("Pre-birth", Category.PRE_BIRTH),
        ("SEXUAL ABUSE", Category.SEXUAL),
        ("other.", Category.OTHER),
    ],
)
def test_category_synonyms(text: str, category: Category) -> None:
    assert validate(VALID | {"category": text}, TODAY).category is category


def test_parents_aware_answers_and_bad_choices() -> None:
    for answer, aware in [("Y", True), ("true", True), ("No", False), ("n", False), ("FALSE", False)]:
        assert validate(VALID | {"parents_aware": answer}, TODAY).parents_aware is aware
    assert problems_of(VALID | {"parents_aware": "not sure", "urgency": "asap", "category": "bullying"}) == {
        "category": "Concern category is not one of: "
        "physical, emotional, sexual, neglect, domestic abuse, pre-birth, other",
        "urgency": "Urgency is not one of: immediate, urgent, standard",
        "parents_aware": "Parents/carers aware must be yes or no",
    }


def test_nhs_number_is_optional_but_checked_when_given() -> None:
    assert validate(VALID | {"child_nhs_number": ""}, TODAY).problems == ()
    assert problems_of(VALID | {"child_nhs_number": "999 000 0019"}) == {
        "child_nhs_number": "Child's NHS number check digit is wrong"
    }
    assert problems_of(VALID | {"child_nhs_number": "999 000 001"}) == {
        "child_nhs_number": "Child's NHS number must be 10 digits"
    }


def test_referrer_contact_needs_an_email_or_a_phone() -> None:
    assert validate(VALID | {"referrer_email": ""}, TODAY).problems == ()
    assert validate(VALID | {"referrer_email": "<mailto:alex@example.org>"}, TODAY).referrer.email == "alex@example.org"
    assert problems_of(VALID | {"referrer_email": "", "referrer_phone": ""}) == {
        "referrer_email": "Referrer email or phone is missing; give at least one"
    }
    assert problems_of(VALID | {"referrer_email": "alex at example"}) == {
        "referrer_email": "Referrer email does not look like an email address"
    }
    assert problems_of(VALID | {"referrer_phone": "ext 12"}) == {
        "referrer_phone": "Referrer phone does not look like a phone number"
    }


def test_every_required_field_missing_is_reported_in_field_order() -> None:
    referral = validate({}, TODAY)
    fields = [p.field for p in referral.problems]
    assert fields == sorted(fields, key=FIELDS.index)
    expected = "referrer_name referrer_organisation referrer_email child_name child_dob child_postcode category"
    assert fields == [*expected.split(), "urgency", "parents_aware", "consent_basis", "details"]
    assert referral.problems[-1].message == "Details are missing"


def example(name: str) -> bytes:
    return (ROOT / "config" / "examples" / f"{name}-referral.json").read_bytes()


def test_complete_json_example_is_complete() -> None:
    referral = parse_json(example("complete"), TODAY)
    assert referral.problems == ()
    assert referral.child.nhs_number == "9990000018" and referral.parents_aware is True


def test_incomplete_json_example_lists_its_problems() -> None:
    fields = [p.field for p in parse_json(example("incomplete"), TODAY).problems]
    expected = "referrer_organisation referrer_email child_name child_dob child_nhs_number category parents_aware"
    assert fields == [*expected.split(), "consent_basis"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "The referral data is not valid JSON"),
        (b"\xff\xfe\x00", "The referral data is not valid JSON"),  # not UTF-8
        (b"[" * 100_000, "The referral data is not valid JSON"),  # nested too deep for the parser
        (b"[1, 2]", "The referral data must be a JSON object"),
    ],
)
def test_unreadable_json_is_a_document_problem(data: bytes, message: str) -> None:
    assert fields_from_json(data) == ({}, [Problem(DOCUMENT, message)])
    referral = parse_json(data, TODAY)
    assert referral.problems[0] == Problem(DOCUMENT, message)
    assert len(referral.problems) > 1  # and every required field is reported missing


def test_wrong_json_types_are_problems_on_their_field_not_also_missing() -> None:
    data = json.loads(example("complete")) | {"urgency": 3, "child": "Sam", "parents_aware": False}
    referral = parse_json(json.dumps(data).encode(), TODAY)
    assert [(p.field, p.message) for p in referral.problems] == [
        (DOCUMENT, "The child part of the referral data must be an object"),
        ("child_name", "Child's name is missing"),
        ("child_dob", "Child's date of birth is missing (for an unborn baby, give the due date)"),
        ("child_postcode", "Child's postcode is missing"),
        ("urgency", "Urgency must be text in the referral data"),
    ]
    assert referral.parents_aware is False


@settings(max_examples=150)
@given(st.text())
def test_parse_text_never_raises(body: str) -> None:
    parse_text(body, TODAY)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
)
json_documents = st.fixed_dictionaries(
    {}, optional={key: json_values for key in ("referrer", "child", "urgency", "parents_aware", "details")}
).map(lambda document: json.dumps(document).encode())


@settings(max_examples=150)
@given(st.binary() | json_documents)
def test_parse_json_never_raises(data: bytes) -> None:
    parse_json(data, TODAY)


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(FIELDS), st.text()))
def test_validate_never_raises(fields: dict[str, str]) -> None:
    validate(fields, TODAY)


SENTINEL = "\u2603\u2603\u2603\u2603"  # a value no message could ever contain


@settings(max_examples=200)
@given(st.sampled_from(FIELDS), st.text(min_size=4))
def test_problem_messages_never_contain_the_value_given(key: str, value: str) -> None:
    assume(len(value.strip()) >= 4)
    messages = [p.message for p in validate(VALID | {key: value}, TODAY).problems]
    # A message may contain the value only by coincidence, when any other value gives it too.
    unrelated = {p.message for p in validate(VALID | {key: SENTINEL}, TODAY).problems}
    assert all(value.strip() not in message or message in unrelated for message in messages)


@given(st.dates().map(lambda d: d.strftime("%d/%m/%Y")), st.integers(0, 10**10 - 1).map(lambda n: f"{n:010d}"))
def test_dates_and_numbers_never_leak_into_messages(written_date: str, digits: str) -> None:
    fields = VALID | {"child_dob": written_date, "child_due_date": written_date, "child_nhs_number": digits}
    for problem in validate(fields, TODAY).problems:
        assert written_date not in problem.message and digits not in problem.message
        assert written_date[-4:] not in problem.message

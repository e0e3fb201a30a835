"""The public referral form: its fields, their checks, and the referral.json document it makes.

Pure: no I/O. `check(form, today)` cleans what was posted, checks it and, when nothing is wrong,
gives the document (the shape of config/examples/complete-referral.json) that the processing
stage reads with `gateway.parse.referral.parse_json`. As a last check the document is parsed here with that
same function, so the form never accepts what processing would flag as incomplete; a field the
referrer said they do not know (the child's postcode or date of birth) is the one exception: such
a referral is sent, and goes to triage flagged incomplete, because a concern must never be held
back for want of a detail.

Error messages follow the GOV.UK Design System: they say what is wrong and what to do, and never
repeat what was typed (it is personal data, and may be hostile).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import TypedDict

from gateway.core.model import Category, Referral, Urgency
from gateway.parse.nhs import compact_nhs_number, normalise_nhs_number
from gateway.parse.postcode import normalise_postcode
from gateway.parse.referral import parse_json


@dataclass(frozen=True)
class TextField:
    name: str  # the form field's name, and its input's id
    short: str  # how error messages name it: "Your name must be 100 characters or fewer"
    max_length: int  # characters, after cleaning
    multiline: bool = False


TEXT_FIELDS: dict[str, TextField] = {
    field.name: field
    for field in (
        TextField("referrer_name", "Your name", 100),
        TextField("referrer_role", "Your role", 100),
        TextField("referrer_organisation", "Your organisation", 150),
        TextField("referrer_email", "Email address", 254),
        TextField("referrer_phone", "Phone number", 40),
        TextField("child_name", "The child's name", 100),
        TextField("child_nhs_number", "NHS number", 20),
        TextField("child_address", "The address", 500, multiline=True),
        TextField("child_postcode", "Postcode", 16),
        TextField("consent_basis", "Consent", 1000, multiline=True),
        TextField("details", "Details", 10_000, multiline=True),
    )
}

YES, NO = "yes", "no"
CATEGORY_LABELS: dict[str, str] = {
    Category.PHYSICAL: "Physical abuse",
    Category.EMOTIONAL: "Emotional abuse",
    Category.SEXUAL: "Sexual abuse",
    Category.NEGLECT: "Neglect",
    Category.DOMESTIC_ABUSE: "Domestic abuse",
    Category.PRE_BIRTH: "Concern about an unborn baby",
    Category.OTHER: "Something else",
}
URGENCY_LABELS: dict[str, tuple[str, str]] = {
    Urgency.IMMEDIATE: ("Immediate", "The child may be harmed today. Also phone the duty team."),
    Urgency.URGENT: ("Urgent", "Someone needs to act within hours."),
    Urgency.STANDARD: ("Standard", "Someone needs to act within a working day."),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "child_born": (YES, NO),
    "category": tuple(Category),
    "urgency": tuple(Urgency),
    "parents_aware": (YES, NO),
}
DATE_FIELDS: dict[str, str] = {"child_dob": "Date of birth", "child_due_date": "Due date"}
DATE_PARTS = ("day", "month", "year")
UNKNOWN_BOXES = ("child_dob_unknown", "child_postcode_unknown")  # "I do not know ..." checkboxes
NAMES: tuple[str, ...] = (
    *TEXT_FIELDS,
    *CHOICES,
    *(f"{field}-{part}" for field in DATE_FIELDS for part in DATE_PARTS),
    *UNKNOWN_BOXES,
)

# The order of the form, for the order of the error summary.
ORDER: tuple[str, ...] = tuple(
    (
        "referrer_name referrer_role referrer_organisation referrer_email referrer_phone child_born child_name "
        "child_dob child_due_date child_nhs_number child_address child_postcode category urgency parents_aware "
        "consent_basis details"
    ).split()
)

REQUIRED: dict[str, str] = {
    "referrer_name": "Enter your full name",
    "referrer_organisation": "Enter the name of your organisation",
    "referrer_email": "Enter an email address or a phone number, so the duty team can contact you",
    "child_born": "Select yes if the child has been born",
    "child_name": "Enter the child's full name",
    "child_dob": "Enter the child's date of birth, or tick 'I do not know the date of birth'",
    "child_due_date": "Enter the baby's due date",
    "child_postcode": "Enter the postcode where the child lives, or tick 'I do not know the postcode'",
    "category": "Select the kind of concern",
    "urgency": "Select how urgent this is",
    "parents_aware": "Select yes if the parents or carers know about this referral",
    "consent_basis": "Enter how you got consent to share this, or why you are sharing without it",
    "details": "Enter the details of your concern",
}
# Messages for what parse_json finds wrong, where ours says it better. Others (a date too far
# back or ahead) keep parse's message, which names the field and never quotes the value.
_PARSE_MESSAGES: dict[str, str] = {
    "referrer_email": "Enter an email address in the correct format, like name@example.com",
    "referrer_phone": "Enter a phone number with at least 7 digits, like 01632 960 001",
}

# Control characters and the bidirectional controls that reorder text (a right-to-left override
# makes "gpj.exe" read as "exe.jpg"): removed everywhere. Line breaks survive in multi-line fields.
_STRIP = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class FieldError:
    field: str  # a key of ORDER
    message: str
    anchor: str  # the id of the input the error summary links to
    parts: tuple[str, ...] = ()  # date inputs: which of day, month and year are wrong


@dataclass(frozen=True)
class Checked:
    answers: dict[str, str]  # cleaned, to show again in the form
    errors: tuple[FieldError, ...]
    document: bytes | None  # referral.json, when there are no errors
    referral: Referral | None  # the document as processing will read it

    def error(self, field: str) -> FieldError | None:
        return next((error for error in self.errors if error.field == field), None)


def clean(value: str, multiline: bool = False) -> str:
    """NFC, no control or bidirectional-control characters; single-line fields on one line with
    single spaces, multi-line ones with \\n line breaks and no trailing spaces."""
    text = unicodedata.normalize("NFC", value)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = _STRIP.sub("", text.replace("\t", " "))
    if not multiline:
        return " ".join(text.split())
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def answers_from(form: Mapping[str, str]) -> dict[str, str]:
    """Every known field, cleaned ("" when absent); unknown fields are dropped."""
    return {
        name: clean(form.get(name) or "", TEXT_FIELDS[name].multiline if name in TEXT_FIELDS else False)
        for name in NAMES
    }


def _date(answers: Mapping[str, str], field: str, today: date) -> tuple[date | None, FieldError | None]:
    """The date in the three inputs of `field`, or the GOV.UK date input error."""
    label = DATE_FIELDS[field]
    values = {part: answers[f"{field}-{part}"] for part in DATE_PARTS}
    missing = [part for part in DATE_PARTS if not values[part]]
    if len(missing) == len(DATE_PARTS):
        return None, FieldError(field, REQUIRED[field], f"{field}-day", DATE_PARTS)
    if missing:
        return None, FieldError(
            field, f"{label} must include a {' and a '.join(missing)}", f"{field}-{missing[0]}", tuple(missing)
        )
    wrong = [part for part in DATE_PARTS if not re.fullmatch("[0-9]{1,4}", values[part])]
    if wrong:
        return None, FieldError(field, f"{label} must be a real date", f"{field}-{wrong[0]}", tuple(wrong))
    if len(values["year"]) != 4:
        return None, FieldError(field, "Year must include 4 numbers", f"{field}-year", ("year",))
    try:
        return date(int(values["year"]), int(values["month"]), int(values["day"])), None
    except ValueError:
        return None, FieldError(field, f"{label} must be a real date", f"{field}-day", DATE_PARTS)


def dob_unknown(answers: Mapping[str, str]) -> bool:
    """The referrer ticked "I do not know the date of birth" and left the date empty."""
    return bool(answers["child_dob_unknown"]) and not any(answers[f"child_dob-{part}"] for part in DATE_PARTS)


def _checks(answers: Mapping[str, str], today: date) -> tuple[list[FieldError], dict[str, date | None]]:
    errors: list[FieldError] = []
    dates: dict[str, date | None] = dict.fromkeys(DATE_FIELDS)

    def fail(field: str, message: str, anchor: str | None = None) -> None:
        errors.append(FieldError(field, message, anchor or field))

    too_long = set()
    for field in TEXT_FIELDS.values():
        if len(answers[field.name]) > field.max_length:
            too_long.add(field.name)
            fail(field.name, f"{field.short} must be {field.max_length:,} characters or fewer")
    for name, choices in CHOICES.items():
        if answers[name] not in choices:  # missing, or not one of ours (a tampered post)
            fail(name, REQUIRED[name])
    for name in ("referrer_name", "referrer_organisation", "consent_basis", "details"):
        if not answers[name]:
            fail(name, REQUIRED[name])
    if not answers["referrer_email"] and not answers["referrer_phone"]:
        fail("referrer_email", REQUIRED["referrer_email"])
    born = answers["child_born"]
    if born == YES and not answers["child_name"]:  # an unborn baby may have no name yet
        fail("child_name", REQUIRED["child_name"])
    if born == YES and not dob_unknown(answers):
        dates["child_dob"], problem = _date(answers, "child_dob", today)
        errors += [problem] if problem else []
    elif born == NO:
        dates["child_due_date"], problem = _date(answers, "child_due_date", today)
        errors += [problem] if problem else []
    nhs = answers["child_nhs_number"]
    if nhs and "child_nhs_number" not in too_long and normalise_nhs_number(nhs) is None:
        ten_digits = re.fullmatch("[0-9]{10}", compact_nhs_number(nhs))
        fail(
            "child_nhs_number",
            "Enter a valid NHS number: the last digit does not match the others; check it, or leave it blank"
            if ten_digits
            else "NHS number must be 10 digits, like 943 476 5919; leave it blank if you do not know it",
        )
    postcode = answers["child_postcode"]
    if postcode and "child_postcode" not in too_long and normalise_postcode(postcode) is None:
        fail("child_postcode", "Enter a real UK postcode, like SW1A 2AA")
    elif not postcode and not answers["child_postcode_unknown"]:
        fail("child_postcode", REQUIRED["child_postcode"])
    return errors, dates


class ReferrerDocument(TypedDict):
    name: str | None
    role: str | None
    organisation: str | None
    email: str | None
    phone: str | None


class ChildDocument(TypedDict):
    name: str | None
    date_of_birth: str | None  # ISO dates: JSON has no date type
    due_date: str | None
    nhs_number: str | None
    address: str | None
    postcode: str | None


class Document(TypedDict):
    """referral.json as the form writes it: None where the referrer left a field empty."""

    referrer: ReferrerDocument
    child: ChildDocument
    concern_category: str | None
    urgency: str | None
    parents_aware: bool | None
    consent_basis: str | None
    details: str | None


def document(answers: Mapping[str, str], dates: Mapping[str, date | None]) -> Document:
    """The referral.json document (config/examples/complete-referral.json's shape)."""

    def text(name: str) -> str | None:
        return answers[name] or None

    nhs = normalise_nhs_number(answers["child_nhs_number"]) if answers["child_nhs_number"] else None
    postcode = normalise_postcode(answers["child_postcode"]) if answers["child_postcode"] else None
    born = answers["child_born"]
    dob, due = dates.get("child_dob"), dates.get("child_due_date")
    return {
        "referrer": {
            "name": text("referrer_name"),
            "role": text("referrer_role"),
            "organisation": text("referrer_organisation"),
            "email": text("referrer_email"),
            "phone": text("referrer_phone"),
        },
        "child": {
            "name": text("child_name"),
            "date_of_birth": dob.isoformat() if dob and born == YES else None,
            "due_date": due.isoformat() if due and born == NO else None,
            "nhs_number": nhs or text("child_nhs_number"),
            "address": text("child_address"),
            "postcode": postcode or text("child_postcode"),
        },
        "concern_category": text("category"),
        "urgency": text("urgency"),
        "parents_aware": {YES: True, NO: False}.get(answers["parents_aware"]),
        "consent_basis": text("consent_basis"),
        "details": text("details"),
    }


def _anchor(field: str) -> str:
    return f"{field}-day" if field in DATE_FIELDS else field


def check(form: Mapping[str, str], today: date) -> Checked:
    """Clean and check a posted form; with no errors, the referral.json bytes to store.

    `today` is the UK date (processing parses with the same), which date checks are relative to."""
    answers = answers_from(form)
    errors, dates = _checks(answers, today)
    raw = json.dumps(document(answers, dates), ensure_ascii=False, indent=2).encode()
    referral = parse_json(raw, today)
    failed = {error.field for error in errors}
    only = not errors
    for problem in referral.problems:
        # What parse_json finds that our checks do not: an email or phone it cannot read, a date
        # too far back or ahead. Anything else would mean the two disagree: shown only when
        # nothing else is wrong, so one mistake is not reported twice. A field the referrer said
        # they do not know is left for triage.
        field = problem.field
        if field in failed or (field == "child_dob" and dob_unknown(answers)):
            continue
        if field == "child_postcode" and answers["child_postcode_unknown"] and not answers["child_postcode"]:
            continue
        ours = (field in ("referrer_email", "referrer_phone") and answers[field]) or dates.get(field) is not None
        if ours or only:
            failed.add(field)
            field = field if field in ORDER else "details"  # "document": cannot happen for our JSON
            parts = DATE_PARTS if field in DATE_FIELDS else ()
            errors.append(FieldError(field, _PARSE_MESSAGES.get(field, problem.message), _anchor(field), parts))
    ranked = tuple(sorted(errors, key=lambda error: ORDER.index(error.field)))
    if ranked:
        return Checked(answers, ranked, None, None)
    return Checked(answers, (), raw, referral)

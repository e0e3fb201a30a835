"""Parse a referral: an email body or referral.json -> canonical string fields -> `Referral`.

Nothing here raises on bad input: in safeguarding a concern is never bounced back. Each missing or
wrong field becomes a `Problem` (the referral goes to triage flagged incomplete) and is None in the
Referral; the stored raw message keeps what was sent. Problem messages name the field by its
template label and never quote the value: they reach alerts and logs."""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from typing import TypeVar

from gateway.core.model import Category, Child, Problem, Referral, Referrer, Urgency
from gateway.parse.nhs import compact_nhs_number, normalise_nhs_number
from gateway.parse.postcode import normalise_postcode

_T = TypeVar("_T")

# Canonical keys in the order problems are reported. The first label is the template's (and the
# one problem messages use); the rest are what people also write. Ambiguous labels ("Name",
# "Child", "Concern") are left out: a wrong guess would put one person's details in another's field.
_LABELS_AND_ALIASES: dict[str, tuple[str, ...]] = {
    "referrer_name": ("Referrer name", "Your name", "Name of referrer", "Referred by", "Referrer's name"),
    "referrer_role": ("Referrer role", "Your role", "Role", "Job title"),
    "referrer_organisation": ("Referrer organisation", "Your organisation", "Organisation", "Organization"),
    "referrer_email": ("Referrer email", "Your email", "Email", "E-mail", "Email address"),
    "referrer_phone": ("Referrer phone", "Your phone", "Phone", "Phone number", "Telephone", "Tel"),
    "child_name": ("Child's name", "Child name", "Name of child", "Child's full name"),
    "child_dob": ("Child's date of birth", "DOB", "Date of birth", "Child DOB", "Child's DOB", "Child date of birth"),
    "child_due_date": ("Due date", "Expected due date", "EDD", "Child's due date", "Baby's due date"),
    "child_nhs_number": ("Child's NHS number", "NHS number", "NHS no", "NHS", "Child's NHS no"),
    "child_address": ("Child's address", "Address", "Child address", "Home address"),
    "child_postcode": ("Child's postcode", "Postcode", "Post code", "Child postcode"),
    "category": ("Concern category", "Category", "Type of concern", "Concern type"),
    "urgency": ("Urgency", "Priority"),
    "parents_aware": ("Parents/carers aware", "Parents aware", "Parents or carers aware"),
    "consent_basis": (
        "Consent basis",
        "Consent",
        "Lawful basis",
        "Consent/lawful basis",
        "Consent or information-sharing basis",
        "Information-sharing basis",
    ),
    "details": ("Details", "Details of concern", "Details of the concern", "Description"),
}
LABELS: dict[str, str] = {key: labels[0] for key, labels in _LABELS_AND_ALIASES.items()}
FIELDS: tuple[str, ...] = tuple(LABELS)
DOCUMENT = "document"  # Problem.field when referral.json cannot be read as a whole; reported first


def _label_key(label: str) -> str:
    # "Child’s D.O.B." finds "child's dob": drop apostrophes and dots, other punctuation is a space.
    return " ".join(re.sub(r"[^0-9a-z]+", " ", re.sub(r"['.`]", "", label.casefold())).split())


_FIELD_BY_LABEL = {_label_key(label): key for key, labels in _LABELS_AND_ALIASES.items() for label in labels}
# What mail clients and word processors add must not change how a line reads: non-breaking and
# narrow spaces, tabs and smart quotes become plain ones; zero-width characters and soft hyphens go.
_TEXT_FIXES = str.maketrans(
    "\u00a0\u2007\u202f\t\u2018\u2019\u201c\u201d", "    ''\"\"", "\u200b\u200c\u200d\ufeff\u00ad"
)
_LABEL_LINE = re.compile(r"([^:]{1,60}):(.*)")
_QUOTED = re.compile(r"^(?:\s*>)+ ?")  # "> " reply quoting, possibly nested
_REPLY_HEADER = re.compile(r"\s*on\b.*\bwrote:\s*", re.IGNORECASE)  # "On Tue, Jane wrote:"
_SIGNATURE = "-- "  # RFC 3676 signature separator: what follows is the sender's signature block


def _scan(lines: list[str]) -> dict[str, list[str]]:
    # Each line goes to the field above it. "" collects the text before the first label (a greeting
    # or a free-text referral); None drops lines (a signature block before Details).
    found: dict[str, list[str]] = {"": []}
    current: str | None = ""
    for line in lines:
        if _QUOTED.match(line) or _REPLY_HEADER.fullmatch(line):  # an earlier message, not this one
            continue
        if line == _SIGNATURE:
            if current == "details":
                break
            current = None
        elif current == "details":  # Details runs to the end of the message, blank lines included
            found["details"].append(line.rstrip())
        elif (stripped := line.strip()) and not stripped.startswith("#"):  # "#": template instructions
            label = _LABEL_LINE.fullmatch(stripped)
            if label and (key := _FIELD_BY_LABEL.get(_label_key(label[1]))):
                current = key
                found.setdefault(key, []).append(label[2].strip().lstrip("*").strip())
            elif current is not None:  # an unknown line continues the field above (a long address)
                found[current].append(stripped)
    return found


def fields_from_text(body: str) -> dict[str, str]:
    """The non-empty canonical fields of an email body written on the template. With no label at
    all the quoted text is tried (a forwarded referral). Text before the first label is dropped
    (a greeting) unless no field has a value: then it is the details, so free text still counts."""
    lines = body.translate(_TEXT_FIXES).splitlines()  # splitlines: CRLF, CR, Unicode separators
    if len(found := _scan(lines)) == 1:
        found = _scan([_QUOTED.sub("", line) for line in lines])
    preamble = found.pop("")
    parts = {key: found[key] if key == "details" else [part for part in found[key] if part] for key in found}
    fields = {key: value for key in parts if (value := "\n".join(parts[key]).strip())}
    if not fields and (text := "\n".join(preamble).strip()):
        fields["details"] = text
    return fields


# Where each field is in referral.json: {"referrer": {"name"...}, "child": {"date_of_birth"...}, ...}.
_JSON_PATHS = {k: tuple(k.split("_", 1)) if k.startswith(("referrer_", "child_")) else (k,) for k in FIELDS}
_JSON_PATHS |= {"child_dob": ("child", "date_of_birth"), "category": ("concern_category",)}


def fields_from_json(data: bytes) -> tuple[dict[str, str], list[Problem]]:
    """The canonical fields of a referral.json, and problems with its structure or types.

    Unreadable JSON gives ``({}, [Problem("document", ...)])``; a value of the wrong type is left
    out with a Problem on its field. Unknown keys are ignored: flagging them would send a complete
    referral to triage and delay it."""
    try:
        document: object = json.loads(data)
    except (ValueError, RecursionError):  # bad UTF-8 and bad JSON are ValueErrors; deep nesting
        return {}, [Problem(DOCUMENT, "The referral data is not valid JSON")]
    if not isinstance(document, dict):
        return {}, [Problem(DOCUMENT, "The referral data must be a JSON object")]
    bad = [part for part in ("referrer", "child") if not isinstance(document.get(part) or {}, dict)]
    problems = [Problem(DOCUMENT, f"The {part} part of the referral data must be an object") for part in bad]
    fields: dict[str, str] = {}
    for key, path in _JSON_PATHS.items():
        value: object = document
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, bool) and key == "parents_aware":
            value = "yes" if value else "no"
        if isinstance(value, str) and value.strip():
            fields[key] = value
        elif value is not None and not isinstance(value, str):
            problems.append(Problem(key, f"{LABELS[key]} must be text in the referral data"))
    return fields, problems


class _Invalid(Exception):
    """A value cannot be used; the message ends a sentence about the field and never quotes it."""


_MONTHS = "january february march april may june july august september october november december"
_MONTH_NUMBERS = {m: n for n, name in enumerate(_MONTHS.split(), 1) for m in (name, name[:3])} | {"sept": 9}
_DASHES = re.compile(r"[\u2010-\u2015\u2212]")
_ISO_DATE = re.compile(r"([0-9]{4})\s*([-/.])\s*([0-9]{1,2})\s*\2\s*([0-9]{1,2})")
# Day first, always: a UK form never means the US month-first 03/12 = 12 March.
_DMY_DATE = re.compile(r"([0-9]{1,2})\s*([-/. ])\s*([0-9]{1,2})\s*\2\s*([0-9]{4}|[0-9]{2})")
_NAMED_DATE = re.compile(r"([0-9]{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]+)\.?,?\s+([0-9]{2,4})")
_UNREADABLE = "is not a date the gateway can read; write it as DD/MM/YYYY"


def _add_months(day: date, months: int) -> date:
    year, index = divmod(day.year * 12 + day.month - 1 + months, 12)
    # The same day of the month, or the month's last day (31 January + 1 month = 28/29 February).
    return date(year, index + 1, min(day.day, calendar.monthrange(year, index + 1)[1]))


def _date(key: str, text: str, today: date) -> date:
    """The date in `text`, which must be plausible for a date of birth or a due date (`key`)."""
    value = " ".join(_DASHES.sub("-", text.casefold()).split())
    if match := _ISO_DATE.fullmatch(value):
        digits, month, day = match[1], int(match[3]), int(match[4])
    elif match := _DMY_DATE.fullmatch(value):
        digits, month, day = match[4], int(match[3]), int(match[1])
    elif match := _NAMED_DATE.fullmatch(value):  # an unknown month word is month 0: unreadable
        digits, month, day = match[3], _MONTH_NUMBERS.get(match[2], 0), int(match[1])
    else:
        raise _Invalid(_UNREADABLE)
    year = int(digits)
    if len(digits) == 2:  # this century, unless that is over a year ahead: "12/03/98" is 1998
        year += today.year // 100 * 100 - (100 if year > today.year % 100 + 1 else 0)
    try:
        found = date(year, month, day)
    except ValueError:
        raise _Invalid("is not a real calendar date" if month else _UNREADABLE) from None
    if key == "child_dob" and found > today:
        raise _Invalid("is in the future")
    if key == "child_dob" and found < _add_months(today, -25 * 12):  # a mistyped year, or a parent's
        raise _Invalid("is more than 25 years ago; check the year")
    if key == "child_due_date" and found < today - timedelta(weeks=6):
        raise _Invalid("is more than 6 weeks ago; if the baby is born, give the date of birth")
    if key == "child_due_date" and found > _add_months(today, 10):
        raise _Invalid("is more than 10 months ahead; check the year")
    return found


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z]+", " ", text.casefold()).split())


def _must(reader: Callable[[str], _T | None], reason: str) -> Callable[[str], _T]:
    def read(text: str) -> _T:  # None from `reader` means "not usable": say why
        if (value := reader(text)) is None:
            raise _Invalid(reason)
        return value

    return read


def _nhs_number(text: str) -> str:
    if (number := normalise_nhs_number(text)) is None:
        ten_digits = re.fullmatch("[0-9]{10}", compact_nhs_number(text))
        raise _Invalid("check digit is wrong" if ten_digits else "must be 10 digits")
    return number


_CATEGORIES = {_words(c.value): c for c in Category}
_CATEGORIES |= {f"{c.value} abuse": c for c in (Category.PHYSICAL, Category.EMOTIONAL, Category.SEXUAL)}
_CATEGORIES |= dict.fromkeys(("da", "dv", "domestic violence"), Category.DOMESTIC_ABUSE)
_CATEGORIES |= dict.fromkeys(("prebirth", "unborn", "unborn baby"), Category.PRE_BIRTH)
_URGENCIES = {urgency.value: urgency for urgency in Urgency}
_YES_NO = {"yes": True, "y": True, "true": True, "no": False, "n": False, "false": False}
_EMAIL = re.compile(r"<?(?:mailto:)?([^@\s<>,;:]+@[^@\s<>,;:.]+(?:\.[^@\s<>,;:.]+)+)>?")
_PHONE = re.compile(r"(?:[^0-9]*[0-9]){7}.*")  # seven digits at least: fewer cannot be dialled back
_email = _must(lambda t: m[1] if (m := _EMAIL.fullmatch(t)) else None, "does not look like an email address")
_phone = _must(lambda t: t if _PHONE.fullmatch(t) else None, "does not look like a phone number")
_postcode = _must(normalise_postcode, "is not a UK postcode")
_category = _must(lambda t: _CATEGORIES.get(_words(t)), "is not one of: " + ", ".join(Category))
_urgency = _must(lambda t: _URGENCIES.get(_words(t)), "is not one of: " + ", ".join(Urgency))
_yes_no = _must(lambda t: _YES_NO.get(_words(t)), "must be yes or no")
# Always needed; the referrer's contact, the child's name and the dates have conditions of their own.
_REQUIRED = "referrer_name referrer_organisation child_postcode category urgency parents_aware".split()
_REQUIRED += ["consent_basis", "details"]


def _tidy(key: str, value: str) -> str:
    lines = value.translate(_TEXT_FIXES).splitlines()
    if key == "details":  # keep the referrer's own line breaks and paragraphs
        return "\n".join(line.rstrip() for line in lines).strip()
    lines = [" ".join(line.split()) for line in lines]
    return ("\n" if key == "child_address" else " ").join(line for line in lines if line)


def validate(fields: Mapping[str, str], today: date, problems: Iterable[Problem] = ()) -> Referral:
    """Normalise and check canonical fields; the Referral carries every problem, DOCUMENT's first,
    then in the order of FIELDS. A field with one of the earlier `problems` gets no second."""
    found = list(problems)
    text = {key: _tidy(key, fields.get(key) or "") for key in FIELDS}

    def add(key: str, message: str) -> None:
        if all(problem.field != key for problem in found):  # one problem per field: the first
            found.append(Problem(key, message))

    def read(key: str, reader: Callable[[str], _T]) -> _T | None:
        try:
            return reader(text[key]) if text[key] else None
        except _Invalid as invalid:
            add(key, f"{LABELS[key]} {invalid}")
            return None

    for key in _REQUIRED:
        if not text[key]:
            add(key, f"{LABELS[key]} {'are' if key == 'details' else 'is'} missing")  # "Details are missing"
    if not text["referrer_email"] and not text["referrer_phone"]:
        add("referrer_email", "Referrer email or phone is missing; give at least one")
    if not text["child_dob"] and not text["child_due_date"]:
        add("child_dob", "Child's date of birth is missing (for an unborn baby, give the due date)")
    if not text["child_name"] and not text["child_due_date"]:  # an unborn baby may have no name yet
        add("child_name", "Child's name is missing")
    referral = Referral(
        referrer=Referrer(
            name=text["referrer_name"] or None,
            role=text["referrer_role"] or None,
            organisation=text["referrer_organisation"] or None,
            email=read("referrer_email", _email),
            phone=read("referrer_phone", _phone),
        ),
        child=Child(
            name=text["child_name"] or None,
            date_of_birth=read("child_dob", lambda value: _date("child_dob", value, today)),
            due_date=read("child_due_date", lambda value: _date("child_due_date", value, today)),
            nhs_number=read("child_nhs_number", _nhs_number),
            address=text["child_address"] or None,
            postcode=read("child_postcode", _postcode),
        ),
        category=read("category", _category),
        urgency=read("urgency", _urgency),
        parents_aware=read("parents_aware", _yes_no),
        consent_basis=text["consent_basis"] or None,
        details=text["details"] or None,
    )
    order = {key: index for index, key in enumerate((DOCUMENT, *FIELDS))}
    ranked = sorted(found, key=lambda problem: order.get(problem.field, len(order)))
    return dataclasses.replace(referral, problems=tuple(ranked))


def parse_text(body: str, today: date) -> Referral:
    """A Referral from an email body written on templates/referral-email.txt. Never raises."""
    return validate(fields_from_text(body), today)


def parse_json(data: bytes, today: date) -> Referral:
    """A Referral from referral.json bytes. Never raises; unreadable JSON is a Problem."""
    fields, problems = fields_from_json(data)
    return validate(fields, today, problems)


def parse_email(text: str, referral_json: bytes | None, today: date) -> tuple[Referral, str]:
    """(the Referral, where it was read from) for an email: its referral.json attachment when it has
    one (a partner's system made it), else the body the referrer typed. Never raises."""
    if referral_json is not None:
        return parse_json(referral_json, today), "referral.json"
    return parse_text(text, today), "body"

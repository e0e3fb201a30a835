"""The value types config fields share: a strict frozen model, durations, sizes, email addresses,
mobile numbers and key fingerprints. Each parser's error says what is wrong, then "; use" what is right
(gateway.config.load turns that into the fix an administrator reads)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import phonenumbers
from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)


def parse_duration(value: object) -> timedelta:
    """'15m', '1h', '24h', '7d', '30s' -> timedelta; a bare number is seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use one like '30s', '15m', '1h' or '7d'")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; use one like '25MB' or a number of bytes")
    scale = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[(match.group(2) or "").upper()]
    return int(match.group(1)) * scale


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Strict(BaseModel):
    """Every config model: unknown keys are refused (a typo must not be ignored), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _email(value: object) -> str:
    text = str(value)
    if not _EMAIL.match(text):
        raise ValueError(f"{text!r} is not an email address; use one like duty@council.example")
    return text.lower()


def normalise_mobile(value: object) -> str:
    """A UK or international mobile number in E.164 (+447700900123); GB is the default region.
    Checks that the number is possible, not that it is allocated, so Ofcom's drama ranges
    (07700 900xxx) work in examples and tests."""
    text = str(value)
    try:
        number = phonenumbers.parse(text, "GB")
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        raise ValueError(f"{text!r} is not a phone number; use a UK mobile like '07700 900123' or '+447700900123'")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _fingerprint(value: object) -> str:
    compact = re.sub(r"[\s:]", "", str(value)).upper()
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", compact):
        raise ValueError(f"{value!r} is not a key fingerprint; use the 40 hex digits gpg --fingerprint shows")
    return compact


Email = Annotated[str, BeforeValidator(_email)]
Mobile = Annotated[str, BeforeValidator(normalise_mobile)]
Fingerprint = Annotated[str, BeforeValidator(_fingerprint)]

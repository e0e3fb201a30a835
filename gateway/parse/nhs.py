"""NHS numbers: ten digits whose last is a modulus 11 check digit (NHS Data Dictionary).

The check catches every single mistyped digit and most swaps, which is why a referral with a
wrong check digit is flagged rather than trusted: a mistyped NHS number would link the referral
to another child's record.

Numbers starting 999 are reserved for testing and are accepted like any other; tests use them.
"""

from __future__ import annotations

import re
import unicodedata

# People write NHS numbers as 999 000 0018 or 999-000-0018; word processors turn '-' into dashes.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_TEN_DIGITS = re.compile(r"[0-9]{10}")  # ASCII only: str.isdigit() would accept other scripts
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def compact_nhs_number(text: str) -> str:
    """`text` without spaces and dashes (not validated): the form the check digit is computed on."""
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", text))


def nhs_check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no digit works (such numbers are never issued)."""
    if len(first_nine) != len(_WEIGHTS) or not first_nine.isascii() or not first_nine.isdigit():
        raise ValueError("nhs_check_digit needs exactly nine ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, _WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def normalise_nhs_number(text: str) -> str | None:
    """The ten digits with no spaces, or None if `text` is not a valid NHS number."""
    digits = compact_nhs_number(text)
    if not _TEN_DIGITS.fullmatch(digits):
        return None
    check = nhs_check_digit(digits[:9])
    if check is None or check != int(digits[9]):
        return None
    return digits


def is_valid_nhs_number(text: str) -> bool:
    """Whether `text` (spaces and dashes allowed) is ten digits with a correct check digit."""
    return normalise_nhs_number(text) is not None

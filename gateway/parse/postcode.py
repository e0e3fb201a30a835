"""UK postcodes: normalising what people type, and matching them against routing rules.

A postcode is an outward code (area letters + district, e.g. ``SW1A``) and a three-character
inward code (``2AA``). Routing rules name either an AREA (``SW``: letters only) or a DISTRICT
(``SW1A``, or ``SW1`` meaning SW1 and its central London sub-districts SW1A, SW1E...).

The shape check follows the Royal Mail / BS 7666 rules (which letters may appear where), so that
an obvious typo becomes a Problem for a person to fix instead of a referral routed to a
wrong-but-plausible team. It does not check that the postcode exists: that needs the postcode
file, which changes monthly.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_FIRST = "[A-PR-UWYZ]"  # Q, V and X are never the first letter
_SECOND = "[A-HK-Y]"  # I, J and Z are never the second letter
_OUTWARD = (
    rf"{_FIRST}[0-9][0-9]?"  # A9, A99
    rf"|{_FIRST}{_SECOND}[0-9][0-9]?"  # AA9, AA99
    rf"|{_FIRST}[0-9][A-HJKPSTUW]"  # A9A (central London, e.g. W1A)
    rf"|{_FIRST}{_SECOND}[0-9][ABEHMNPRVWXY]"  # AA9A (central London, e.g. SW1A)
)
_INWARD = "[0-9][ABD-HJLNP-UW-Z]{2}"  # never C, I, K, M, O, V: they look like digits or each other
_POSTCODE = re.compile(rf"(?:{_OUTWARD}){_INWARD}|GIR0AA")  # GIR 0AA: the historic Girobank code
_AREA_PATTERN = re.compile("[A-Z]{1,2}")
_DISTRICT_PATTERN = re.compile("[A-Z]{1,2}[0-9][0-9A-Z]?")
_AREA_LETTERS = re.compile("[A-Z]+")


def _compact(text: str) -> str:
    # NFKC folds full-width letters; split() drops every kind of space, including non-breaking ones.
    # Only ASCII is upper-cased: "ß".upper() is "SS", which would turn junk into a valid code.
    compact = "".join(unicodedata.normalize("NFKC", text).split())
    return "".join(ch.upper() if ch.isascii() else ch for ch in compact)


def normalise_postcode(text: str) -> str | None:
    """``"sw1a2aa"`` -> ``"SW1A 2AA"``; None if `text` does not have the shape of a UK postcode."""
    compact = _compact(text)
    if not _POSTCODE.fullmatch(compact):
        return None
    return f"{compact[:-3]} {compact[-3:]}"


def _normalised_or_raise(postcode: str) -> str:
    normal = normalise_postcode(postcode)
    if normal is None:
        # The value is personal data, so the message describes it instead of quoting it.
        raise ValueError("not a UK postcode")
    return normal


def district(postcode: str) -> str:
    """The outward code: ``"SW1A 2AA"`` -> ``"SW1A"``. Raises ValueError if not a postcode."""
    return _normalised_or_raise(postcode).split(" ")[0]


def area(postcode: str) -> str:
    """The leading letters: ``"W1A 1AA"`` -> ``"W"``, ``"SW1A 2AA"`` -> ``"SW"``. Raises ValueError."""
    match = _AREA_LETTERS.match(district(postcode))
    assert match is not None  # every valid outward code starts with a letter
    return match.group()


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> str:
    """normalise_pattern, remembered: patterns come from config (never personal data), and the
    same few are matched against every referral."""
    return normalise_pattern(pattern)


def normalise_pattern(pattern: str) -> str:
    """A routing pattern in canonical form (``" sw1 "`` -> ``"SW1"``).

    Raises ValueError for anything that is neither an area nor a district, so that a mistyped
    routing rule stops the gateway at start-up instead of silently matching nothing.
    """
    compact = _compact(pattern)
    if _AREA_PATTERN.fullmatch(compact) or _DISTRICT_PATTERN.fullmatch(compact):
        return compact
    raise ValueError(
        "a postcode routing pattern is an area (letters only, like 'SW') "
        "or a district (like 'SW1A', or 'SW1' for SW1 and its sub-districts)"
    )


def matches(postcode: str, pattern: str) -> bool:
    """Whether a routing `pattern` covers `postcode`.

    Letters only (``"W"``) is an area and matches exactly that area: W1A 1AA, but not
    WC2N 5DU (area WC). With a digit it is a district: it matches the outward code exactly, or,
    when it ends in a digit, that district's lettered sub-districts (``"W1"`` matches W1A and W1B
    but not W10). An invalid postcode matches nothing; an invalid pattern raises ValueError.
    """
    wanted = _pattern(pattern)
    normal = normalise_postcode(postcode)
    if normal is None:
        return False
    # From the normal form directly: district() and area() would normalise it again, and routing
    # calls this for every pattern of every rule and local authority.
    outward = normal.split(" ", 1)[0]
    if wanted.isalpha():
        letters = _AREA_LETTERS.match(outward)
        return letters is not None and letters.group() == wanted
    if outward == wanted:
        return True
    return (
        wanted[-1].isdigit()
        and len(outward) == len(wanted) + 1
        and outward.startswith(wanted)
        and outward[-1].isalpha()
    )

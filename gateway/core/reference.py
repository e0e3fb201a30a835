"""Referral references: short, random, and safe to read aloud over the phone.

A reference looks like ``7KM4-Q9XC``: seven random symbols and one check symbol, shown in two
groups of four. The alphabet leaves out 0, O, 1 and I, because those are the symbols people
confuse when they read, hear or write a reference; 32 symbols give 5 bits each, 35 random bits in
all (about 34 thousand million references), so collisions are rare but the store must still treat
the reference as unique and retry on a clash.

The check symbol is Luhn mod N over the alphabet (N = 32). What it detects, proved by the tests:

* every single-symbol substitution: doubling-and-folding a code point is a permutation of 0..31
  when N is even, so changing any one symbol changes the sum mod 32;
* every transposition of two adjacent, distinct symbols, including the check symbol itself,
  **except 2 <-> Z** (code points 0 and 31). In a swap one symbol is doubled and the other is not,
  and the sum changes by g(a) - g(b) where g(x) = fold(2x) - x; g is x for x < 16 and x + 1
  (mod 32) for x >= 16, so it is one-to-one except that g(0) = g(31) = 0. This is the same blind
  spot as decimal Luhn's 09 <-> 90.

It does not promise to catch two separate errors, or jump transpositions (ABC -> CBA).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_N = len(ALPHABET)
_BITS_PER_SYMBOL = 5  # 2**5 == 32 == len(ALPHABET): every random draw maps to exactly one symbol
_BODY_LENGTH = 7
_LENGTH = _BODY_LENGTH + 1
_CODE = {symbol: code for code, symbol in enumerate(ALPHABET)}

# Spaces and every kind of dash people (and word processors) put between the two groups.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
# The symbols left out of the alphabet on purpose, named the way a person would say them.
_NEVER_USED = {"0": "the digit 0", "O": "the letter O", "1": "the digit 1", "I": "the letter I"}
_EXAMPLE = "7KM4-Q9XC"
_ADVICE = f"Check the reference on your receipt; it has 8 characters like {_EXAMPLE}."


class InvalidReference(ValueError):
    """The text is not a referral reference. The message says what is wrong and what to do."""


def check_symbol(body: str) -> str:
    """The Luhn mod 32 check symbol for `body` (symbols from ALPHABET, check symbol not included)."""
    total = 0
    # Walking right to left, the symbol next to the (future) check symbol is doubled first.
    for position, symbol in enumerate(reversed(body)):
        addend = _CODE[symbol] * (2 if position % 2 == 0 else 1)
        total += addend // _N + addend % _N  # fold: add the base-32 "digits" of the product
    return ALPHABET[(_N - total % _N) % _N]


def _check_passes(compact: str) -> bool:
    total = 0
    for position, symbol in enumerate(reversed(compact)):
        addend = _CODE[symbol] * (2 if position % 2 == 1 else 1)
        total += addend // _N + addend % _N
    return total % _N == 0


def _display(compact: str) -> str:
    return f"{compact[:4]}-{compact[4:]}"


def new_reference(randbits: Callable[[int], int] = secrets.randbits) -> str:
    """A new random reference such as ``7KM4-Q9XC``.

    `randbits` is injected so tests can be deterministic; production uses the `secrets` CSPRNG
    because a guessable reference would let a stranger probe for referrals.
    """
    bits = randbits(_BITS_PER_SYMBOL * _BODY_LENGTH)
    if not 0 <= bits < 1 << (_BITS_PER_SYMBOL * _BODY_LENGTH):
        raise ValueError("randbits returned a value outside the range it was asked for")
    body = "".join(ALPHABET[(bits >> (_BITS_PER_SYMBOL * i)) & (_N - 1)] for i in range(_BODY_LENGTH))
    return _display(body + check_symbol(body))


def normalise_reference(text: str) -> str:
    """The canonical ``XXXX-XXXX`` form of a reference a person typed or read out.

    Accepts lower case, full-width characters, and spaces or dashes anywhere. Raises
    InvalidReference when the text cannot be a reference.
    """
    # NFKC folds full-width and other look-alike forms that phones and word processors produce.
    compact = _SEPARATORS.sub("", unicodedata.normalize("NFKC", text))
    compact = "".join(ch.upper() if ch.isascii() else ch for ch in compact)
    never_used = [name for symbol, name in _NEVER_USED.items() if symbol in compact]
    if never_used:
        raise InvalidReference(
            f"A reference never contains {', '.join(never_used)}: references never use 0, O, 1 or I, "
            f"so a mistake is not read as another reference. {_ADVICE}"
        )
    if any(ch not in _CODE for ch in compact):
        raise InvalidReference(f"A reference contains only letters and digits (never 0, O, 1 or I). {_ADVICE}")
    if len(compact) != _LENGTH:
        raise InvalidReference(f"A reference has 8 characters; this has {len(compact)}. {_ADVICE}")
    if not _check_passes(compact):
        raise InvalidReference(
            f"This reference looks mistyped: its last character does not match the others. {_ADVICE}"
        )
    return _display(compact)


def is_valid_reference(text: str) -> bool:
    """Whether `text` normalises to a reference (for filters that must not raise)."""
    try:
        normalise_reference(text)
    except InvalidReference:
        return False
    return True

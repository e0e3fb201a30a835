"""Referral references: what a referrer reads over the phone must come back as the same reference,
and a single slip of the tongue or the keyboard must be caught rather than find another referral."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.reference import (
    ALPHABET,
    InvalidReference,
    check_symbol,
    is_valid_reference,
    new_reference,
    normalise_reference,
)

SHAPE = re.compile(r"[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{4}-[23456789ABCDEFGHJKLMNPQRSTUVWXYZ]{4}")
references = st.integers(min_value=0, max_value=2**35 - 1).map(lambda bits: new_reference(lambda _: bits))


def compact(reference: str) -> str:
    return reference.replace("-", "")


def display(symbols: str) -> str:
    return f"{symbols[:4]}-{symbols[4:]}"


def test_alphabet_has_32_distinct_symbols_and_none_that_are_easily_confused() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set("0O1I") & set(ALPHABET)


def test_new_reference_asks_for_35_random_bits_and_uses_them_all() -> None:
    asked: list[int] = []

    def randbits(bits: int) -> int:
        asked.append(bits)
        return 0

    assert new_reference(randbits) == "2222-2222"  # every symbol code 0, so the check symbol is too
    assert asked == [35]
    assert new_reference(lambda _: 2**35 - 1).startswith("ZZZZ-ZZZ")


def test_new_reference_refuses_a_random_source_that_returns_too_many_bits() -> None:
    with pytest.raises(ValueError, match="outside the range"):
        new_reference(lambda _: 2**35)


def test_default_references_have_the_shape_and_differ() -> None:
    made = {new_reference() for _ in range(50)}
    assert all(SHAPE.fullmatch(reference) for reference in made)
    assert len(made) == 50


@given(references)
def test_every_new_reference_normalises_to_itself(reference: str) -> None:
    assert SHAPE.fullmatch(reference)
    assert normalise_reference(reference) == reference


@given(references, st.sampled_from(["{}", " {} ", "{}\u00a0", "\t{}\n"]))
def test_what_people_type_is_accepted(reference: str, template: str) -> None:
    spaced = " ".join(compact(reference))  # read out symbol by symbol
    assert normalise_reference(spaced.lower()) == reference
    assert normalise_reference(template.format(reference.lower())) == reference
    assert normalise_reference(compact(reference)) == reference
    assert normalise_reference(reference.replace("-", " \u2013 ")) == reference  # en dash from Word


@settings(max_examples=40)
@given(references)
def test_every_single_symbol_substitution_is_detected(reference: str) -> None:
    symbols = compact(reference)
    for position, original in enumerate(symbols):
        for replacement in ALPHABET.replace(original, ""):
            typo = symbols[:position] + replacement + symbols[position + 1 :]
            assert not is_valid_reference(typo), (position, replacement)


@settings(max_examples=100)
@given(references)
def test_every_adjacent_transposition_except_2_and_z_is_detected(reference: str) -> None:
    symbols = compact(reference)
    for position in range(len(symbols) - 1):
        first, second = symbols[position], symbols[position + 1]
        if first == second:
            continue
        swapped = symbols[:position] + second + first + symbols[position + 2 :]
        assert is_valid_reference(swapped) == ({first, second} == {"2", "Z"}), position


def test_transposition_claim_holds_for_every_pair_of_symbols_at_every_position() -> None:
    # Whether a swap is caught depends only on the two symbols and where they are, so a neutral
    # filler ("3") around them is enough to check all 32 x 31 ordered pairs at each position.
    for position in range(6):
        for first in ALPHABET:
            for second in ALPHABET.replace(first, ""):
                body = "3" * position + first + second + "3" * (5 - position)
                swapped = "3" * position + second + first + "3" * (5 - position) + check_symbol(body)
                assert is_valid_reference(swapped) == ({first, second} == {"2", "Z"}), (
                    position,
                    first,
                    second,
                )
    # The last body symbol next to the check symbol: vary the symbol before it to reach every pair.
    pairs = set()
    for filler in ALPHABET:
        for first in ALPHABET:
            second = check_symbol("33333" + filler + first)
            if first != second:
                pairs.add((first, second))
                swapped = "33333" + filler + second + first
                assert is_valid_reference(swapped) == ({first, second} == {"2", "Z"}), (first, second)
    assert len(pairs) == 32 * 31


def test_the_one_blind_spot_is_real_2_and_z_swap_unnoticed() -> None:
    body = "2Z34567"
    reference = body + check_symbol(body)
    assert normalise_reference("Z2" + reference[2:]) == display("Z2" + reference[2:])


@given(st.text())
def test_normalise_either_raises_invalid_reference_or_is_idempotent(text: str) -> None:
    try:
        once = normalise_reference(text)
    except InvalidReference:
        return
    assert normalise_reference(once) == once
    assert SHAPE.fullmatch(once)


def test_invalid_reference_is_a_value_error_with_advice() -> None:
    with pytest.raises(ValueError, match="Check the reference on your receipt; it has 8 characters like 7KM4-Q9XC"):
        normalise_reference("7KM4")


def test_wrong_length_says_how_many_characters_were_given() -> None:
    with pytest.raises(InvalidReference, match="has 8 characters; this has 9"):
        normalise_reference("7KM4-Q9XCC")
    with pytest.raises(InvalidReference, match="this has 0"):
        normalise_reference(" - ")


def test_symbols_never_used_are_named_so_the_caller_can_correct_them() -> None:
    with pytest.raises(InvalidReference, match="the letter O") as caught:
        normalise_reference("7KMO-Q9XC")
    assert "0, O, 1 or I" in str(caught.value)
    with pytest.raises(InvalidReference, match="the digit 1, the letter I"):
        normalise_reference("1KMI-Q9XC")


def test_other_characters_are_refused_without_being_quoted() -> None:
    with pytest.raises(InvalidReference, match="only letters and digits") as caught:
        normalise_reference("7KM4/Q9XC")
    assert "/" not in str(caught.value)


def test_a_failed_check_symbol_looks_mistyped() -> None:
    reference = new_reference(lambda _: 12345)
    symbols = compact(reference)
    wrong_check = ALPHABET[(ALPHABET.index(symbols[-1]) + 1) % 32]
    with pytest.raises(InvalidReference, match="looks mistyped"):
        normalise_reference(symbols[:-1] + wrong_check)


def test_full_width_characters_from_a_phone_keyboard_are_accepted() -> None:
    reference = new_reference(lambda _: 987654321)
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in compact(reference))
    assert normalise_reference(full_width) == reference

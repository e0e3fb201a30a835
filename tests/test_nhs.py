"""NHS numbers: the modulus 11 check from the NHS Data Dictionary, on numbers from the 999 test
range. Valid numbers are computed here by an independent implementation, never guessed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.parse.nhs import compact_nhs_number, is_valid_nhs_number, nhs_check_digit, normalise_nhs_number


def data_dictionary_check_digit(nine: str) -> int | None:
    """Written from the Data Dictionary text: weights 10..2, 11 - (sum mod 11), 11 -> 0, 10 invalid."""
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    return {11: 0, 10: None}.get(check, check)


def number_in_test_range(suffix: int) -> str | None:
    """The 999-range test number whose first nine digits end in `suffix`, if it has a check digit."""
    nine = f"999{suffix:06d}"
    check = data_dictionary_check_digit(nine)
    return None if check is None else nine + str(check)


valid_numbers = st.integers(0, 999_999).map(number_in_test_range).filter(lambda n: n is not None)


def test_the_published_example_is_valid() -> None:
    assert data_dictionary_check_digit("999000001") == 8
    assert is_valid_nhs_number("9990000018")
    assert normalise_nhs_number("9990000018") == "9990000018"


def test_people_write_nhs_numbers_with_spaces_and_dashes() -> None:
    for written in (
        "999 000 0018",
        "999-000-0018",
        " 999 000 0018 ",
        "999\u00a0000\u00a00018",
        "999–000–0018",
    ):
        assert normalise_nhs_number(written) == "9990000018", written


def test_every_other_last_digit_is_rejected() -> None:
    for last in "012345679":
        assert not is_valid_nhs_number("999000001" + last)


def test_check_digit_11_becomes_0() -> None:
    nine = next(f"999{n:06d}" for n in range(1_000_000) if data_dictionary_check_digit(f"999{n:06d}") == 0)
    assert 11 - sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True)) % 11 == 11
    assert nhs_check_digit(nine) == 0
    assert is_valid_nhs_number(nine + "0")


def test_check_digit_10_means_the_number_is_never_issued() -> None:
    nine = next(f"999{n:06d}" for n in range(1_000_000) if data_dictionary_check_digit(f"999{n:06d}") is None)
    assert nhs_check_digit(nine) is None
    assert not any(is_valid_nhs_number(nine + str(last)) for last in range(10))


@pytest.mark.parametrize(
    "text",
    ["", "999000001", "99900000180", "999000001B", "NHS 9990000018", "999/000/0018", "٩٩٩٠٠٠٠٠١٨"],
)
def test_anything_but_ten_digits_is_rejected(text: str) -> None:
    assert normalise_nhs_number(text) is None
    assert not is_valid_nhs_number(text)


def test_nhs_check_digit_wants_exactly_nine_digits() -> None:
    for bad in ("99900000", "9990000018", "99900000x"):
        with pytest.raises(ValueError, match="nine ASCII digits"):
            nhs_check_digit(bad)


def test_compact_removes_only_separators() -> None:
    assert compact_nhs_number(" 999 000-0018 ") == "9990000018"
    assert compact_nhs_number("999/000") == "999/000"


@given(valid_numbers)
def test_module_agrees_with_the_data_dictionary(number: str) -> None:
    assert normalise_nhs_number(number) == number
    assert nhs_check_digit(number[:9]) == int(number[9])


@given(valid_numbers, st.integers(0, 9), st.integers(1, 9))
def test_every_single_digit_mistake_is_caught(number: str, position: int, change: int) -> None:
    digits = list(number)
    digits[position] = str((int(digits[position]) + change) % 10)
    assert not is_valid_nhs_number("".join(digits))


@given(st.text())
def test_normalise_never_raises_and_is_idempotent(text: str) -> None:
    normal = normalise_nhs_number(text)
    assert normal is None or normalise_nhs_number(normal) == normal
    assert is_valid_nhs_number(text) == (normal is not None)

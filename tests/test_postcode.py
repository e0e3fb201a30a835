"""UK postcodes: what people type is normalised, typos are refused, and routing patterns match the
areas and districts a duty team covers (synthetic and well-known public postcodes only)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.parse.postcode import area, district, matches, normalise_pattern, normalise_postcode

# One of each of the six shapes, from the Royal Mail / Wikipedia examples, and GIR 0AA.
SHAPES = {
    "M1 1AE": ("M", "M1"),
    "B33 8TH": ("B", "B33"),
    "CR2 6XH": ("CR", "CR2"),
    "DN55 1PT": ("DN", "DN55"),
    "W1A 0AX": ("W", "W1A"),
    "EC1A 1BB": ("EC", "EC1A"),
    "GIR 0AA": ("GIR", "GIR"),
}

valid_postcodes = st.from_regex(
    r"(?:[A-PR-UWYZ][0-9][0-9]?|[A-PR-UWYZ][A-HK-Y][0-9][0-9]?|[A-PR-UWYZ][0-9][A-HJKPSTUW]"
    r"|[A-PR-UWYZ][A-HK-Y][0-9][ABEHMNPRVWXY]) [0-9][ABD-HJLNP-UW-Z]{2}",
    fullmatch=True,
)


@pytest.mark.parametrize("postcode", SHAPES)
def test_each_shape_is_recognised_with_its_area_and_district(postcode: str) -> None:
    assert normalise_postcode(postcode) == postcode
    assert (area(postcode), district(postcode)) == SHAPES[postcode]


@pytest.mark.parametrize(
    ("typed", "normal"),
    [
        ("sw1a2aa", "SW1A 2AA"),
        ("  sw1a   2aa ", "SW1A 2AA"),
        ("W1A\u00a01AA", "W1A 1AA"),  # non-breaking space from a word processor
        ("w 1 a 1 a a", "W1A 1AA"),
        ("ｗ１Ａ １ＡＡ", "W1A 1AA"),  # full-width, from a phone keyboard
        ("gir0aa", "GIR 0AA"),
    ],
)
def test_what_people_type_is_normalised(typed: str, normal: str) -> None:
    assert normalise_postcode(typed) == normal


@pytest.mark.parametrize(
    "text",
    [
        "",
        "W1A",  # outward code only
        "W1A 1A",
        "W1A 1AAA",
        "QW1 1AA",  # Q is never the first letter
        "WI1 1AA",  # I is never the second letter
        "W1A 1CA",  # C is never in the inward code (looks like a 0 when hand-written)
        "W1A 1AO",  # O neither
        "1W1 1AA",
        "W1-A 1AA",
        "ẞS1 1AA",  # capital sharp s upper-cases to SS: must not become a valid code
        "ßS1 1AA",
        "SW1A 2AA and more",
    ],
)
def test_anything_not_shaped_like_a_postcode_is_refused(text: str) -> None:
    assert normalise_postcode(text) is None


def test_area_and_district_refuse_a_non_postcode_without_quoting_it() -> None:
    with pytest.raises(ValueError, match="not a UK postcode") as caught:
        district("NOT A CODE")
    assert "NOT A CODE" not in str(caught.value)
    with pytest.raises(ValueError):
        area("W1A")


def test_an_area_pattern_matches_exactly_that_area() -> None:
    assert matches("W1A 1AA", "W")
    assert matches("W10 1AA", "W")
    assert not matches("WC2N 5DU", "W")  # WC is a different area
    assert matches("WC2N 5DU", "WC")
    assert not matches("SW1A 2AA", "W")


def test_a_district_pattern_matches_the_outward_code_exactly() -> None:
    assert matches("SW1A 2AA", "SW1A")
    assert not matches("SW1A 2AA", "SW1B")
    assert matches("B33 8TH", "B33")
    assert not matches("B3 3TH", "B33")
    assert not matches("B33 8TH", "B3")  # B3 is not a prefix district of B33


def test_a_district_ending_in_a_digit_covers_its_london_sub_districts() -> None:
    for postcode in ("W1A 1AA", "W1B 2AA", "W1T 1AA"):
        assert matches(postcode, "W1"), postcode
    assert matches("SW1A 2AA", "SW1")
    assert matches("SW1P 3BU", "sw1")
    assert not matches("W10 1AA", "W1")
    assert not matches("SW10 9XX", "SW1")
    assert not matches("W1A 1AA", "W1B")


def test_patterns_are_case_and_space_insensitive() -> None:
    assert matches("sw1a 2aa", " sw 1a ")
    assert matches("EC1A 1BB", "ec")
    assert normalise_pattern(" sw1 ") == "SW1"


@pytest.mark.parametrize("pattern", ["", "W1A 1AA", "1", "SWX", "S1W1", "ABC", "W1AA"])
def test_a_malformed_pattern_is_a_configuration_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="routing pattern"):
        normalise_pattern(pattern)
    with pytest.raises(ValueError, match="routing pattern"):
        matches("W1A 1AA", pattern)


def test_an_invalid_postcode_matches_nothing() -> None:
    assert not matches("", "W")
    assert not matches("W1A", "W1A")


@given(valid_postcodes)
def test_every_valid_shape_is_its_own_area_and_district(postcode: str) -> None:
    assert normalise_postcode(postcode) == postcode
    assert normalise_postcode(postcode.lower().replace(" ", "")) == postcode
    assert postcode.startswith(district(postcode) + " ")
    assert district(postcode).startswith(area(postcode))
    assert matches(postcode, area(postcode))
    assert matches(postcode, district(postcode))


@given(st.text())
def test_normalise_is_idempotent_and_never_raises(text: str) -> None:
    normal = normalise_postcode(text)
    assert normal is None or normalise_postcode(normal) == normal

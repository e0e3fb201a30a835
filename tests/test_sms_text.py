"""Reading inbound SMS: what a hurried professional types on a phone still reads, a concern is never
bounced, and a slip in a reference is caught rather than acknowledging someone else's referral.
All data is synthetic; references come from gateway.reference.new_reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.model import Urgency
from gateway.core.reference import ALPHABET, is_valid_reference, new_reference
from gateway.parse.referral import FIELDS
from gateway.parse.sms_text import (
    Ack,
    BadAck,
    FreeText,
    Help,
    Inbound,
    QuickReferral,
    Start,
    Stop,
    read_sms,
    to_referral,
)

REFERENCE = new_reference(lambda _: 123456789)
references = st.integers(min_value=0, max_value=2**35 - 1).map(lambda bits: new_reference(lambda _: bits))
SMS_ONLY = "is missing (an SMS referral does not carry it)"
# Every problem message the module can produce: a fixed set, so no message can quote what was sent.
KNOWN_MESSAGES = {
    "Child's postcode is missing",
    "Child's postcode is not a UK postcode",
    "Urgency is missing",
    "Details are missing",
    "Referrer name is missing",
    "Referrer organisation is missing",
    f"Child's name {SMS_ONLY}",
    f"Child's date of birth {SMS_ONLY}",
    f"Concern category {SMS_ONLY}",
    f"Parents/carers aware {SMS_ONLY}",
    f"Consent basis {SMS_ONLY}",
}
WHY_CHECK = (
    "Check the reference in the alert; it looks like 7KM4-Q9XC (never 0, O, 1 or I). "
    "Send ACK and the reference, or ACK alone for your latest alert."
)
WHY_ONLY = "Send ACK and the reference only, like ACK 7KM4-Q9XC, or ACK alone for your latest alert."


def quick(body: str) -> QuickReferral:
    item = read_sms(body)
    assert isinstance(item, QuickReferral), item
    return item


def fields(item: QuickReferral) -> list[str]:
    return [problem.field for problem in item.problems]


# --- REF: the tolerances the product owner asked for --------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("REF W1A 1AA urgent Mum drunk, baby alone", id="as-documented"),
        pytest.param("ref w1a 1aa URGENT Mum drunk, baby alone", id="any-case"),
        pytest.param("Ref W1A 1AA Urgent Mum drunk, baby alone", id="title-case"),
        pytest.param("rEf W1A 1aA uRgEnT Mum drunk, baby alone", id="mixed-case"),
        pytest.param("  REF \t W1A   1AA \n\n urgent\t\tMum   drunk,  baby alone \n", id="spaces-tabs-newlines"),
        pytest.param("REF W1A1AA urgent Mum drunk, baby alone", id="postcode-without-space"),
        pytest.param("REF,W1A 1AA,urgent,Mum drunk, baby alone", id="commas"),
        pytest.param("REF: W1A 1AA; urgent: Mum drunk, baby alone", id="colons-semicolons"),
        pytest.param("Ref. W1A 1AA urgent. Mum drunk, baby alone", id="full-stops"),
        pytest.param("REF - W1A 1AA - urgent - Mum drunk, baby alone", id="hyphens"),
        pytest.param("REF \u2013 W1A 1AA \u2014 urgent \u2015 Mum drunk, baby alone", id="en-em-dashes"),
        pytest.param("REF\u00a0W1A\u202f1AA\u00a0urgent\u00a0Mum drunk, baby alone", id="non-breaking-spaces"),
        pytest.param("REF W1A\u20111AA urgent Mum drunk, baby alone", id="non-breaking-hyphen"),
        pytest.param("ＲＥＦ　Ｗ１Ａ　１ＡＡ　ｕｒｇｅｎｔ　Mum drunk, baby alone", id="full-width-nfkc"),
        pytest.param("R\u200bEF W1A 1AA urg\u00adent Mum drunk, baby alone", id="zero-width-and-soft-hyphen"),
        pytest.param("REF W1A 1\nAA urgent Mum drunk, baby alone", id="multipart-split-postcode"),
        pytest.param("REF W1A1\nAA urgent Mum drunk, baby alone", id="multipart-split-compact-postcode"),
        pytest.param("REF W\n1A 1AA urgent Mum drunk, baby alone", id="multipart-split-outward"),
        pytest.param("REF urgent W1A 1AA Mum drunk, baby alone", id="urgency-before-postcode"),
        pytest.param("REF W1A 1AA urgent! Mum drunk, baby alone", id="urgency-with-punctuation"),
        pytest.param('REF W1A 1AA "urgent" Mum drunk, baby alone', id="urgency-quoted"),
    ],
)
def test_a_quick_referral_reads_however_it_is_typed(body: str) -> None:
    assert quick(body) == QuickReferral("W1A 1AA", Urgency.URGENT, "Mum drunk, baby alone", ())


@pytest.mark.parametrize(
    ("word", "urgency"),
    [
        ("immediate", Urgency.IMMEDIATE),
        ("IMM", Urgency.IMMEDIATE),
        ("emergency", Urgency.IMMEDIATE),  # decided: an emergency is immediate risk; too high beats too low
        ("Urgent", Urgency.URGENT),
        ("urg", Urgency.URGENT),
        ("standard", Urgency.STANDARD),
        ("STD", Urgency.STANDARD),
        ("std.", Urgency.STANDARD),
    ],
)
def test_urgency_words_and_abbreviations(word: str, urgency: Urgency) -> None:
    assert quick(f"REF SW1A 2AA {word} school concern").urgency == urgency


def test_free_text_keeps_the_referrers_words_with_smart_punctuation_made_plain() -> None:
    item = quick("REF W1A 1AA std \u201cMum\u2019s partner\u201d is back \u2013 stop him\u2026\nCall me")
    assert item.text == '"Mum\'s partner" is back - stop him...\nCall me'


def test_a_twilio_join_inside_the_free_text_is_left_as_it_came() -> None:
    assert quick("REF W1A 1AA std baby left with a neigh bour").text == "baby left with a neigh bour"


def test_a_ref_with_nothing_usable_is_still_a_quick_referral_with_problems() -> None:
    item = quick("REF")
    assert item == QuickReferral(None, None, "", item.problems)
    assert fields(item) == ["child_postcode", "urgency", "details"]


def test_a_missing_postcode_is_a_problem_and_the_rest_still_reads() -> None:
    item = quick("ref urgent 3 children home alone")
    assert (item.postcode, item.urgency, item.text) == (None, Urgency.URGENT, "3 children home alone")
    assert [p.message for p in item.problems] == ["Child's postcode is missing"]


def test_a_mistyped_postcode_stays_in_the_text_for_triage_and_the_urgency_after_it_reads() -> None:
    item = quick("REF W1A 1CC urgent baby alone")  # C is never in an inward code
    assert (item.postcode, item.urgency) == (None, Urgency.URGENT)
    assert item.text == "W1A 1CC urgent baby alone"
    assert [p.message for p in item.problems] == ["Child's postcode is not a UK postcode"]


def test_an_unknown_urgency_word_is_a_problem_and_stays_in_the_text() -> None:
    item = quick("REF W1A 1AA soonish baby alone")
    assert (item.postcode, item.urgency, item.text) == ("W1A 1AA", None, "soonish baby alone")
    assert fields(item) == ["urgency"]


def test_no_free_text_is_a_details_problem() -> None:
    assert fields(quick("REF W1A 1AA urgent")) == ["details"]


@pytest.mark.parametrize("body", ["REFERRAL W1A 1AA urgent", "REF7 W1A", "Re: W1A 1AA urgent", "my REF W1A 1AA"])
def test_ref_must_be_a_word_of_its_own_at_the_start(body: str) -> None:
    assert read_sms(body) == FreeText(body)


# --- carrier keywords: the whole message or nothing -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        *[(word, Stop()) for word in ("STOP", "stopall", "Unsubscribe", "CANCEL", "end", "QUIT")],
        *[(word, Start()) for word in ("START", "yes", "Unstop")],
        *[(word, Help()) for word in ("HELP", "info")],
        (" \tStop.\n", Stop()),
        ("ＳＴＯＰ", Stop()),
        ("\u201cstop\u201d!", Stop()),
    ],
)
def test_a_whole_message_keyword(body: str, expected: Inbound) -> None:
    assert read_sms(body) == expected


@pytest.mark.parametrize(
    "body",
    ["Please stop contacting the family", "stop him", "STOP STOP", "help me", "Yes she is safe", "end of term"],
)
def test_a_keyword_inside_a_message_is_a_concern_not_a_command(body: str) -> None:
    assert read_sms(body) == FreeText(body)


def test_a_referral_that_says_stop_is_a_referral() -> None:
    assert quick("REF W1A 1AA urgent told dad to STOP").text == "told dad to STOP"


def test_an_empty_message_is_free_text_for_triage() -> None:
    assert read_sms(" \n\t ") == FreeText("")  # an MMS with only a picture still reaches a person


# --- ACK --------------------------------------------------------------------------------------------


def compact(reference: str) -> str:
    return reference.replace("-", "")


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("ACK {}", id="as-documented"),
        pytest.param("aCk {}", id="mixed-case-keyword"),
        pytest.param("ACK: {}", id="colon"),
        pytest.param("ack, {}.", id="comma-and-full-stop"),
        pytest.param("ACK #{}", id="hash"),
        pytest.param("  ACK\t\n {}  \n", id="spaces-tabs-newlines"),
        pytest.param("ＡＣＫ {}", id="full-width-keyword"),
        pytest.param("ACK \u2013 {}", id="en-dash"),
    ],
)
def test_an_ack_reads_however_it_is_typed(template: str) -> None:
    assert read_sms(template.format(REFERENCE)) == Ack(REFERENCE)


@pytest.mark.parametrize(
    "written",
    [
        pytest.param(compact(REFERENCE), id="without-hyphen"),
        pytest.param(REFERENCE.lower(), id="lower-case"),
        pytest.param(REFERENCE.replace("-", " "), id="space-for-hyphen"),
        pytest.param(REFERENCE.replace("-", "\u2011"), id="non-breaking-hyphen"),
        pytest.param(REFERENCE.replace("-", "\u2212"), id="minus-sign"),
        pytest.param(REFERENCE.replace("-", "\u2014"), id="em-dash"),
        pytest.param(REFERENCE[:6] + "\n" + REFERENCE[6:], id="multipart-break"),
        pytest.param("".join(chr(ord(ch) + 0xFEE0) for ch in REFERENCE), id="full-width"),
    ],
)
def test_a_reference_reads_however_it_is_written(written: str) -> None:
    assert read_sms(f"ACK {written}") == Ack(REFERENCE)


@pytest.mark.parametrize("body", ["ACK", "ack", "Ack.", " ACK! "])
def test_ack_alone_means_the_latest_alert(body: str) -> None:
    assert read_sms(body) == Ack(None)


def test_o_0_i_1_confusions_are_refused_not_guessed() -> None:
    # gateway.reference never uses 0, O, 1 or I, so there is nothing to map them to: refuse.
    for wrong in "0O1I":
        mangled = REFERENCE[:-1] + wrong
        assert read_sms(f"ACK {mangled}") == BadAck(mangled, WHY_CHECK)


def test_a_mistyped_check_character_is_a_bad_ack_that_says_what_to_do() -> None:
    assert read_sms("ACK 7KM4-Q9XD") == BadAck("7KM4-Q9XD", WHY_CHECK)


def test_the_example_in_the_reply_is_not_a_reference_so_copying_it_acknowledges_nothing() -> None:
    assert not is_valid_reference("7KM4-Q9XC")
    assert isinstance(read_sms("ACK 7KM4-Q9XC"), BadAck)


def test_a_reference_and_more_asks_for_the_reference_alone() -> None:
    assert read_sms(f"ACK {REFERENCE} thanks") == BadAck(f"{REFERENCE} thanks", WHY_ONLY)
    spaced = REFERENCE.replace("-", " ")
    assert read_sms(f"ACK {spaced} thx") == BadAck(f"{spaced} thx", WHY_ONLY)
    assert read_sms(f"ACK {REFERENCE}. Thanks") == BadAck(f"{REFERENCE}. Thanks", WHY_ONLY)


def test_a_bad_ack_does_not_echo_long_input() -> None:
    item = read_sms("ACK " + "7KM4" * 30)
    assert item == BadAck(("7KM4" * 5), WHY_CHECK)


def test_a_vague_ack_is_not_read_as_the_latest_alert() -> None:
    assert read_sms("Ack thanks") == BadAck("thanks", WHY_CHECK)


@pytest.mark.parametrize(
    "body",
    ["Ack the child is at risk tonight", "ACK child at risk", f"ACK {REFERENCE} also mum called to say he is back"],
)
def test_prose_after_ack_goes_to_a_person_not_back_to_the_sender(body: str) -> None:
    assert read_sms(body) == FreeText(body)


@pytest.mark.parametrize("body", [f"Please ACK {REFERENCE}", f"ACKNOWLEDGED {REFERENCE}", f"ACK{REFERENCE}"])
def test_ack_must_be_the_first_word(body: str) -> None:
    assert read_sms(body) == FreeText(body)


# --- to_referral -------------------------------------------------------------------------------------


def test_a_quick_referral_becomes_an_incomplete_referral_with_the_fields_sms_cannot_carry() -> None:
    referral = to_referral(quick("REF w1a1aa imm baby alone"), "Example Health Centre", "Alex Example")
    assert (referral.referrer.name, referral.referrer.organisation) == ("Alex Example", "Example Health Centre")
    assert referral.referrer.phone is None  # the caller fills it in from the sending number
    assert (referral.child.postcode, referral.urgency, referral.details) == ("W1A 1AA", Urgency.IMMEDIATE, "baby alone")
    assert referral.category is None
    assert [p.field for p in referral.problems] == [
        "child_name",
        "child_dob",
        "category",
        "parents_aware",
        "consent_basis",
    ]


def test_free_text_becomes_a_referral_with_no_urgency_and_no_postcode() -> None:
    item = read_sms("Worried about the baby at 12 Example Road")
    assert isinstance(item, FreeText)
    referral = to_referral(item, "Example Health Centre", "Alex Example")
    assert (referral.child.postcode, referral.urgency, referral.category) == (None, None, None)
    assert referral.details == "Worried about the baby at 12 Example Road"
    assert {"child_postcode", "urgency", "category"} <= {p.field for p in referral.problems}


def test_problems_follow_parse_order_once_per_field_and_include_an_unknown_sender() -> None:
    referral = to_referral(quick("REF"), None, "  ")
    found = [p.field for p in referral.problems]
    assert found == sorted(found, key=FIELDS.index)
    assert len(found) == len(set(found))
    assert {"referrer_name", "referrer_organisation", "details"} <= set(found)
    assert "referrer_email" not in found  # the sending number is the phone
    assert referral.details is None
    assert referral.incomplete


# --- properties ----------------------------------------------------------------------------------------


@given(st.text())
def test_read_sms_never_raises_on_any_text(body: str) -> None:
    read_sms(body)


@given(st.sampled_from(["REF ", "ref,", "ACK ", "ack: ", "STOP", ""]), st.text())
def test_read_sms_never_raises_after_a_keyword(keyword: str, body: str) -> None:
    item = read_sms(keyword + body)
    if isinstance(item, QuickReferral | FreeText):
        to_referral(item, None, None)


def full_width(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text)


@given(
    references,
    st.sampled_from(["ACK ", "ack ", "Ack: ", "ACK,", "aCk\t", "ＡＣＫ ", "ACK\n", "ACK - "]),
    st.sampled_from(["-", "", " ", "\u2010", "\u2011", "\u2013", "\u2014", "\u2212", "\uff0d", " - ", "\u00a0"]),
    st.data(),
)
def test_a_valid_reference_survives_case_hyphen_and_space_mangling(
    reference: str, keyword: str, hyphen: str, data: st.DataObject
) -> None:
    symbols = compact(reference)
    cases = data.draw(st.lists(st.sampled_from([str.upper, str.lower, full_width]), min_size=8, max_size=8))
    typed = "".join(change(symbol) for change, symbol in zip(cases, symbols, strict=True))
    written = typed[:4] + hyphen + typed[4:]
    cut = data.draw(st.integers(min_value=0, max_value=len(written)))
    join = data.draw(st.sampled_from(["", " ", "\n", "\r\n"]))  # where Twilio joined two parts
    assert read_sms(keyword + written[:cut] + join + written[cut:] + ".") == Ack(reference)


@settings(max_examples=40)
@given(references)
def test_any_single_character_change_to_a_reference_is_a_bad_ack(reference: str) -> None:
    symbols = compact(reference)
    for position in range(len(symbols)):
        changed = [symbols[:position] + other + symbols[position + 1 :] for other in ALPHABET + "0O1I"]
        changed += [symbols[:position] + symbols[position + 1 :]]  # one symbol dropped
        changed += [symbols[:position] + other + symbols[position:] for other in ALPHABET]  # one added
        for typo in changed:
            if typo != symbols:
                item = read_sms(f"ACK {typo[:4]}-{typo[4:]}")
                assert isinstance(item, BadAck), (typo, item)


@given(st.text(), st.text(), st.text(), st.sampled_from(["REF ", "", "ACK "]))
def test_problems_never_contain_the_input(first: str, second: str, rest: str, keyword: str) -> None:
    item = read_sms(f"{keyword}{first} {second} {rest}")
    if isinstance(item, BadAck):
        assert item.why in {WHY_CHECK, WHY_ONLY}
        assert len(item.given) <= 20
    if isinstance(item, QuickReferral | FreeText):
        problems = [
            *(item.problems if isinstance(item, QuickReferral) else ()),
            *to_referral(item, None, None).problems,
        ]
        assert {problem.message for problem in problems} <= KNOWN_MESSAGES
        assert {problem.field for problem in problems} <= set(FIELDS)


@given(st.text(alphabet="§¤¶~^@23456789", min_size=3))
def test_a_marker_in_any_slot_never_reaches_a_problem(marker: str) -> None:
    for body in (f"REF {marker} urgent x", f"REF W1A 1AA {marker}", f"REF {marker}", marker):
        item = read_sms(body)
        if isinstance(item, QuickReferral | FreeText):
            referral = to_referral(item, None, None)
            assert all(marker not in problem.message for problem in referral.problems)

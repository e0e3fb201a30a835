"""Read an inbound SMS: a quick referral, an acknowledgement, or a carrier keyword. Pure; never raises.

Registered professionals text ``REF <postcode> <urgency> <free text>``; duty workers reply
``ACK <reference>``; phones and carriers send STOP, START and HELP. Anything else is a concern in
free text. SMS is typed on a phone keypad in a hurry, so reading is tolerant (any case, any
spacing, smart punctuation, full-width forms, a keyword followed by punctuation, Twilio's joined
multi-part messages) but never guesses in the dangerous direction:

* A concern is never bounced. A REF without a usable postcode or urgency is still a QuickReferral,
  with problems; text that is not a command is FreeText, which becomes an incomplete referral for
  triage. After ACK, text that reads like prose (more than three words, or a few words none of
  which could be a reference) is FreeText too: it may be a concern from someone who began "Ack".
* A reference is never corrected. gateway.core.reference rejects 0, O, 1 and I outright and checks the
  check symbol, so a slip is a BadAck rather than an acknowledgement of someone else's referral.
* Whole-message keywords (STOP, HELP, START...) match only when the message is that one word, with
  punctuation around it at most ("Stop."): a referral that mentions "stop" is a referral.
* "emergency" means IMMEDIATE: in safeguarding an emergency is immediate risk, and reading a word
  as too urgent costs a faster call, where too low could cost a child a day.

The text a QuickReferral or FreeText carries is the message after NFKC and punctuation folding,
with runs of spaces collapsed; the caller keeps the message exactly as sent. Problem messages and
BadAck.why are fixed sentences: they reach alerts, logs and SMS replies, so they never quote input.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from typing import TypeAlias

from gateway.core.model import Child, Problem, Referral, Referrer, Urgency
from gateway.core.reference import InvalidReference, normalise_reference
from gateway.parse.postcode import normalise_postcode
from gateway.parse.referral import DOCUMENT, FIELDS, LABELS


@dataclass(frozen=True)
class QuickReferral:
    """``REF <postcode> <urgency> <free text>``; a field that could not be read is None with a Problem."""

    postcode: str | None
    urgency: Urgency | None
    text: str
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class FreeText:
    """Anything that is not a command: an incomplete referral for triage."""

    text: str


@dataclass(frozen=True)
class Ack:
    """``ACK <reference>``; ``reference`` None (``ACK`` alone) means the latest alert sent to that phone."""

    reference: str | None


@dataclass(frozen=True)
class BadAck:
    """An ACK whose reference does not check out. `given` is clipped; `why` says what to do next."""

    given: str
    why: str


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Start:
    pass


Inbound: TypeAlias = QuickReferral | FreeText | Ack | BadAck | Help | Stop | Start

# After NFKC, which folds full-width forms and most spaces, what is left that a phone or a word
# processor substitutes: dashes and hyphens become "-", curly quotes straight ones, tabs spaces;
# zero-width characters and soft hyphens go, so they cannot hide inside a keyword or a reference.
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u2e3a\u2e3b"
_FOLD = str.maketrans(
    dict.fromkeys(_DASHES, "-")
    | dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'")
    | dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"')
    | dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad")
)
# Carrier (UK / Twilio) keywords: only ever the whole message.
_WHOLE_MESSAGE: dict[str, Help | Stop | Start] = (
    dict.fromkeys(("HELP", "INFO"), Help())
    | dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), Stop())
    | dict.fromkeys(("START", "YES", "UNSTOP"), Start())
)
_WHOLE_WORD = re.compile(r"\W*([A-Za-z]+)\W*")
# The first word, then the rest. (?!\w): "REF," and "ACK:" are keywords, "REFERRAL" and "ACK7" are not.
_FIRST_WORD = re.compile(r"\W*([A-Za-z]+)(?!\w)(.*)", re.DOTALL)
# Fields in a REF are split by spaces, line breaks and list punctuation; "." stays inside a token
# (it is stripped when a token is read) because free text starts at a token and must keep it.
_TOKEN = re.compile(r"[^\s,;:/|\-]+")
_URGENCY_WORDS = {
    "immediate": Urgency.IMMEDIATE,
    "imm": Urgency.IMMEDIATE,
    "emergency": Urgency.IMMEDIATE,  # see the module docstring
    "urgent": Urgency.URGENT,
    "urg": Urgency.URGENT,
    "standard": Urgency.STANDARD,
    "std": Urgency.STANDARD,
}
_POSTCODE_PARTS = 3  # "W1A 1AA" is two tokens; a multi-part join can make it three ("W1A 1" + "AA")
_ACK_EDGES = " \n:;,.!?#\"'()[]<>*-"  # around a reference: "ACK: 7KM4-Q9XC." or "ACK #7KM4-Q9XC"
_ACK_WORDS = 3  # "7KM4-Q9XC", "7KM4 Q9XC", "7KM4-Q9 XC" (parts joined), or a reference and a word
_CLIP = 20

# The example fails its own check symbol, so a reply that copies it acknowledges nothing.
_WHY_CHECK = (
    "Check the reference in the alert; it looks like 7KM4-Q9XC (never 0, O, 1 or I). "
    "Send ACK and the reference, or ACK alone for your latest alert."
)
_WHY_ONLY = "Send ACK and the reference only, like ACK 7KM4-Q9XC, or ACK alone for your latest alert."

_POSTCODE_MISSING = Problem("child_postcode", f"{LABELS['child_postcode']} is missing")
_POSTCODE_INVALID = Problem("child_postcode", f"{LABELS['child_postcode']} is not a UK postcode")
_URGENCY_MISSING = Problem("urgency", f"{LABELS['urgency']} is missing")
_DETAILS_MISSING = Problem("details", f"{LABELS['details']} are missing")
# Required for a complete referral (gateway.parse.referral) but with no place in a quick SMS.
_NOT_BY_SMS = ("child_name", "child_dob", "category", "parents_aware", "consent_basis")
_ORDER = {key: index for index, key in enumerate((DOCUMENT, *FIELDS))}


def _clean(body: str) -> str:
    text = unicodedata.normalize("NFKC", body).translate(_FOLD)
    # split() collapses every kind of space; blank lines go (a multi-part join can leave one).
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _alnum(token: str) -> str:
    return "".join(ch for ch in token if ch.isalnum())


def read_sms(body: str) -> Inbound:
    """What an inbound SMS body asks for. Never raises: anything unrecognised is FreeText."""
    text = _clean(body)
    if (whole := _WHOLE_WORD.fullmatch(text)) and (keyword := _WHOLE_MESSAGE.get(whole[1].upper())):
        return keyword
    first = _FIRST_WORD.match(text)
    if first and first[1].upper() == "REF":
        return _quick_referral(first[2])
    if first and first[1].upper() == "ACK":
        return _ack(first[2], text)
    return FreeText(text)


def _postcode_at(words: list[str], start: int) -> tuple[str, int] | None:
    # Shortest join first. A valid postcode plus one or two more characters never ends in
    # digit-letter-letter again, so a longer join cannot find a different postcode.
    for count in range(1, _POSTCODE_PARTS + 1):
        if start + count <= len(words) and (postcode := normalise_postcode("".join(words[start : start + count]))):
            return postcode, count
    return None


def _looks_like_postcode(word: str) -> bool:
    return 2 <= len(word) <= 8 and any(ch.isdigit() for ch in word) and any(ch.isalpha() for ch in word)


def _quick_referral(rest: str) -> QuickReferral:
    tokens = list(_TOKEN.finditer(rest))
    words = [_alnum(token[0]) for token in tokens]
    postcode: str | None = None
    urgency: Urgency | None = None
    mistyped: int | None = None  # where a mistyped postcode starts: the free text keeps it for triage
    position = 0
    # Postcode then urgency as the help text says, but either order reads: each at most once.
    while position < len(words):
        if urgency is None and (found_urgency := _URGENCY_WORDS.get(words[position].casefold())):
            urgency = found_urgency
            position += 1
        elif postcode is None and mistyped is None and (found := _postcode_at(words, position)):
            postcode, count = found
            position += count
        elif postcode is None and mistyped is None and _looks_like_postcode(words[position]):
            # "W1A 1XX": skip the outward and inward parts so an urgency after them still reads.
            mistyped = position
            position += 2 if position + 1 < len(words) and any(ch.isdigit() for ch in words[position + 1]) else 1
        else:
            break
    start = mistyped if mistyped is not None else position
    free = _clean(rest[tokens[start].start() :]) if start < len(tokens) else ""
    problems = [] if postcode else [_POSTCODE_INVALID if mistyped is not None else _POSTCODE_MISSING]
    problems += [] if urgency else [_URGENCY_MISSING]
    problems += [] if free else [_DETAILS_MISSING]
    return QuickReferral(postcode=postcode, urgency=urgency, text=free, problems=tuple(problems))


def _reference(text: str) -> str | None:
    try:
        return normalise_reference(text)
    except InvalidReference:
        return None


def _ack(rest: str, text: str) -> Ack | BadAck | FreeText:
    rest = rest.strip(_ACK_EDGES)
    if not rest:
        return Ack(None)
    if reference := _reference(rest):
        return Ack(reference)
    words = rest.split()
    given = " ".join(words)[:_CLIP]
    if len(words) > _ACK_WORDS:
        return FreeText(text)  # prose, perhaps a concern: a person reads it instead of a bounce
    if any(_reference(" ".join(words[:count]).strip(_ACK_EDGES)) for count in range(1, len(words))):
        return BadAck(given, _WHY_ONLY)  # a reference and more: the words may matter, so do not drop them
    if len(words) == 1 or any(ch.isdigit() for ch in rest):
        return BadAck(given, _WHY_CHECK)
    return FreeText(text)


def to_referral(item: QuickReferral | FreeText, organisation: str | None, sender_name: str | None) -> Referral:
    """An incomplete Referral from an SMS; the caller fills in the referrer's phone.

    The referrer is the partner directory entry of the sending number. Problems are the item's, then
    every field a complete referral needs (gateway.parse.referral) that an SMS cannot carry, in parse's order.
    No problem is raised for the referrer's email or phone: the sending number is the phone.
    """
    if isinstance(item, QuickReferral):
        postcode, urgency, found = item.postcode, item.urgency, list(item.problems)
    else:
        postcode, urgency, found = None, None, [_POSTCODE_MISSING, _URGENCY_MISSING]
    name = (sender_name or "").strip() or None
    organisation = (organisation or "").strip() or None
    missing = [key for key, value in (("referrer_name", name), ("referrer_organisation", organisation)) if not value]
    found += [Problem(key, f"{LABELS[key]} is missing") for key in missing]
    found += [Problem(key, f"{LABELS[key]} is missing (an SMS referral does not carry it)") for key in _NOT_BY_SMS]
    found += [] if item.text else [_DETAILS_MISSING]
    first = {problem.field: problem for problem in reversed(found)}  # one problem per field: the first
    return Referral(
        referrer=Referrer(name=name, organisation=organisation),
        child=Child(postcode=postcode),
        urgency=urgency,
        details=item.text or None,
        problems=tuple(sorted(first.values(), key=lambda problem: _ORDER.get(problem.field, len(_ORDER)))),
    )


def referral_from_sms(body: str, organisation: str, sender_name: str, phone: str) -> Referral:
    """The Referral a stored referral text makes, from a registered professional's number. Intake
    stores only texts that read as referrals; anything else here is read as free text, never lost."""
    item = read_sms(body)
    if not isinstance(item, QuickReferral | FreeText):
        item = FreeText(body)
    referral = to_referral(item, organisation, sender_name)
    return dataclasses.replace(referral, referrer=dataclasses.replace(referral.referrer, phone=phone))

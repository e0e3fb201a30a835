"""What was sent, for a person: a stored message that could not be read, described part by part.

The staff page of a quarantined referral shows this in place of the referral's fields, so the
person who must act can see who sent it and what came (a PDF, a Word file, a broken encryption)
and phone the sender. Pure: bytes in, a description out. Reading never fails on a sender's input:
the stdlib parser's readings go through gateway.open.mimeread, which falls back instead of raising,
and a message nested too deep to parse is described as one block of text.

The text shown is bounded (TEXT_LIMIT characters) and stripped of control characters; the page
escapes it. It is the sender's text, so it may hold personal data: the page is audited like any
other view of content.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from dataclasses import dataclass
from email.message import Message

from gateway.open import mimeread
from gateway.open.mimebytes import MimeError

TEXT_LIMIT = 20_000  # characters of readable text on the page; the rest is in the download
PART_LIMIT = 200  # parts listed; a message with more is described as "and N more"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Parts whose bytes are text a person can read: text/*, and the ASCII armour of OpenPGP and
# S/MIME (showing it tells the reader "this is encrypted" at a glance; it is not plaintext).
# A leaf that claims to be multipart/* or message/* is one the parser could not split (a missing
# or wrong boundary): its body is the sender's text as it came.
_READABLE = re.compile(r"^text/|^multipart/|^message/|^application/(pgp-encrypted|pgp-signature|pgp-keys)$")
_ARMOUR = re.compile(rb"-----BEGIN PGP [A-Z ]+-----")


@dataclass(frozen=True)
class RawPart:
    number: int  # 1-based, in the order the message holds them
    content_type: str
    size: int  # bytes after the transfer encoding is undone
    filename: str | None


@dataclass(frozen=True)
class RawView:
    size: int  # the whole message, in bytes
    from_header: str | None
    subject: str | None
    parts: tuple[RawPart, ...]
    more_parts: int  # parts past PART_LIMIT, not listed
    text: str  # the readable text, bounded
    text_cut: bool  # True when `text` stops at TEXT_LIMIT
    note: str | None  # why the parts could not be listed, if they could not


def clean(text: str) -> str:
    """Text without control or bidirectional-override characters (newlines and tabs kept)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _header(headers: Message, name: str) -> str | None:
    value = mimeread.decoded_header(headers, name)
    return " ".join(clean(value).split())[:300] if value else None


def _decoded(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):  # an unknown charset name: read it as UTF-8, not lose it
        return data.decode("utf-8", errors="replace")


def _readable(described: mimeread.Described, data: bytes) -> bool:
    """Armour, or a text part that is not an attached file (a .txt attachment is listed, and in
    the download, but is not run into the message's own text)."""
    if _ARMOUR.match(data.lstrip()[:40]):
        return True
    return not described.filename and bool(_READABLE.match(described.content_type))


def _bounded(texts: list[str]) -> tuple[str, bool]:
    text = clean("\n\n".join(t.strip("\n") for t in texts if t.strip()))
    return (text[:TEXT_LIMIT], True) if len(text) > TEXT_LIMIT else (text, False)


def view(raw: bytes) -> RawView:
    """The message's headers that say who and what, its parts, and its readable text."""
    # The headers on their own first: a header-only parse cannot recurse, so they are read even
    # from a message nested too deep to walk.
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    from_header, subject = _header(headers, "From"), _header(headers, "Subject")
    try:
        msg = mimeread.parse_message(raw)
    except MimeError as exc:  # too deep to walk: the bytes themselves are the readable text
        text, cut = _bounded([raw.decode("utf-8", errors="replace")])
        note = f"The parts could not be listed: {exc.reason}."
        return RawView(len(raw), from_header, subject, (), 0, text, cut, note)
    parts: list[RawPart] = []
    texts: list[str] = []
    leaves = [part for part in msg.walk() if not part.is_multipart()]
    for number, part in enumerate(leaves, 1):
        described = mimeread.describe(part)
        data = mimeread.payload(part)
        if number <= PART_LIMIT:
            name = clean(described.filename)[:200] if described.filename else None
            parts.append(RawPart(number, described.content_type, len(data), name))
        if _readable(described, data):
            texts.append(_decoded(data, described.charset))
    text, cut = _bounded(texts)
    more = max(0, len(leaves) - PART_LIMIT)
    return RawView(len(raw), from_header, subject, tuple(parts), more, text, cut, None)

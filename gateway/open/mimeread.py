"""Reading a whole message with the standard library, safely: nesting bounded, headers as text.

Two things crashed the open stage on sender-controlled input (issue 11, defect 1):
- The compat32 policy hands back an `email.header.Header` object, not a str, for a header holding
  raw 8-bit bytes (RFC 6532 UTF-8, which our SMTP server invites by offering SMTPUTF8), and string
  methods on it raised AttributeError; its get_filename() turned such a name into U+FFFD.
- The stdlib parser recurses once per nested part: 2,000 levels of multipart raised RecursionError.
  Parts are counted as the parser attaches them, and past `MAX_NESTING` levels parsing stops with a
  `MimeError` whose reason tells the sender what to do.

The structure is parsed with compat32 (a tenth of the cost: the modern policy re-parses Content-Type
every time the parser asks for it, ~1 ms a message here), and the few headers a referral is read
from are then read as the modern policy reads them: the raw value as UTF-8, through
`email.policy.default`'s header parser (RFC 2231 parameters, RFC 2047 words, raw UTF-8 all decoded
to str). That parser has had its own exceptions on malformed input (IndexError, ValueError and the
like, from CPython's `_header_value_parser`), so every read goes through `_safe`, which gives a
fallback instead: a referral is never lost to a header.
"""

from __future__ import annotations

import email.feedparser
import email.policy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.headerregistry import ParameterizedMIMEHeader
from email.message import Message
from typing import Self, TypeVar

from gateway.open.mimebytes import MimeError

MAX_NESTING = 50  # levels of parts inside parts; real clients use a handful (mixed > alternative > related)
TOO_DEEP = f"the message nests parts more than {MAX_NESTING} levels deep; send it again as a simple message"

_STRUCTURE = email.policy.compat32
_HEADERS = email.policy.default

T = TypeVar("T")


class _TooDeep(Exception):
    """Raised inside the parser, turned into a MimeError by `parse_message`."""


class Part(Message):
    """An EmailMessage that knows how deep it sits: the parser attaches each part to its parent
    before reading the part's own body, so the limit stops the recursion at that level."""

    depth = 0

    def attach(self, payload: Self) -> None:  # type: ignore[override]  # only parts of ours are attached
        payload.depth = self.depth + 1
        if payload.depth > MAX_NESTING:
            raise _TooDeep()
        super().attach(payload)


def parse_message(raw: bytes) -> Message:
    """The message's structure as objects, or MimeError(TOO_DEEP)."""
    parser = email.feedparser.BytesFeedParser(Part, policy=_STRUCTURE)
    try:
        parser.feed(raw)
        return parser.close()
    except _TooDeep:
        raise MimeError(TOO_DEEP) from None


def _safe(read: Callable[[], T], fallback: T) -> T:
    """The value, or `fallback` when the stdlib's header parser fails on malformed input."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - any parser bug on a sender's header: read on without it
        return fallback


def raw_header(part: Message, name: str) -> str | None:
    """The first `name` header exactly as sent, its 8-bit bytes read as UTF-8 (RFC 6532)."""
    for key, value in part.raw_items():
        if key.lower() == name.lower():
            return str(value).encode("ascii", "surrogateescape").decode("utf-8", errors="replace")
    return None


def decoded_header(part: Message, name: str) -> str | None:
    """The first `name` header as a person reads it: RFC 2047 words decoded (a Subject, a From
    display name); the raw value when the modern parser cannot read it."""
    value = raw_header(part, name)
    if value is None:
        return None
    return _safe(lambda: str(_HEADERS.header_factory(name, value)), value)


# A part's Content-Type or Content-Disposition is mostly one of a few values ('text/plain;
# charset="utf-8"', 'inline'), and the modern parser takes ~30 us over each. Parsed headers are
# read-only, so one parse is shared. A value naming a file ("filename"/"name", RFC 2231 forms too)
# is never kept: it is the sender's, may name a person, and rarely comes twice.
CACHED_HEADERS = 256
_NAMES_A_FILE = re.compile(r"name\s*\*?\s*[0-9]*\s*\*?\s*=", re.IGNORECASE)


def _parse_header(name: str, value: str) -> ParameterizedMIMEHeader | None:
    parsed = _safe(lambda: _HEADERS.header_factory(name, value), None)
    return parsed if isinstance(parsed, ParameterizedMIMEHeader) else None


_parse_cached = functools.lru_cache(maxsize=CACHED_HEADERS)(_parse_header)


def _structured(part: Message, name: str) -> ParameterizedMIMEHeader | None:
    value = raw_header(part, name)
    if value is None:
        return None
    if _NAMES_A_FILE.search(value):
        return _parse_header(name, value)
    return _parse_cached(name, value)


def _param(header: ParameterizedMIMEHeader | None, name: str) -> str | None:
    value = _safe(lambda: header.params.get(name), None) if header is not None else None
    return str(value).strip() if value is not None else None


@dataclass(frozen=True)
class Described:
    """What a referral is read from in a part's headers, each header parsed once."""

    content_type: str  # as the parser saw it (so it agrees with is_multipart)
    filename: str | None  # Content-Disposition's filename, else Content-Type's name
    disposition: str | None  # "attachment", "inline", ...
    charset: str


def describe(part: Message) -> Described:
    """The modern parser's reading, else compat32's looser one: the modern parser gives up on
    some headers compat32 reads ('Content-Disposition:name=( attachment; filename="a.pdf"'), and an
    attachment missed is a file the duty team never sees."""
    ctype = _structured(part, "content-type")
    cdisp = _structured(part, "content-disposition")
    kind = _safe(lambda: str(getattr(cdisp, "content_disposition", "") or "").lower(), "")
    loose = (raw_header(part, "content-disposition") or "").split(";")[0].strip().lower()
    return Described(
        # RFC 2045's default when the header cannot be read at all.
        content_type=_safe(part.get_content_type, "text/plain"),
        filename=_param(cdisp, "filename") or _param(ctype, "name") or _safe(part.get_filename, None),
        disposition=kind or loose or None,
        charset=(_param(ctype, "charset") or "utf-8").lower(),
    )


def payload(part: Message) -> bytes:
    """The body with its transfer encoding undone; as it came when that cannot be undone."""
    data = _safe(lambda: part.get_payload(decode=True), None)
    if isinstance(data, bytes):
        return data
    # Undecodable: the body as it came (a person can still read it) rather than nothing.
    body = _safe(part.get_payload, None)
    return body.encode("ascii", "surrogateescape") if isinstance(body, str) else b""

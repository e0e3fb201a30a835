"""Reading a whole message with the standard library, safely: nesting bounded, headers as text.

Two things crashed the open stage on sender-controlled input (issue 11, defect 1):
- The compat32 policy hands back an `email.header.Header` object, not a str, for a header holding
  raw 8-bit bytes (RFC 6532 UTF-8, which our SMTP server invites by offering SMTPUTF8), and string
  methods on it raised AttributeError. `email.policy.default` decodes such headers (and RFC 2231
  parameters, and RFC 2047 words) to str, so whole messages are parsed with it here.
- The stdlib parser recurses once per nested part: 2,000 levels of multipart raised RecursionError.
  Parts are counted as the parser attaches them, and past `MAX_NESTING` levels parsing stops with a
  `MimeError` whose reason tells the sender what to do.

The modern policy's header parser has had its own exceptions on malformed input (IndexError,
ValueError and the like, from CPython's `_header_value_parser`), so every read of a header goes
through `_safe`, which gives the fallback instead: a referral is never lost to a header.
"""

from __future__ import annotations

import email.feedparser
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Self, TypeVar

from gateway.open.mimebytes import MimeError

MAX_NESTING = 50  # levels of parts inside parts; real clients use a handful (mixed > alternative > related)
TOO_DEEP = f"the message nests parts more than {MAX_NESTING} levels deep; send it again as a simple message"

_POLICY = email.policy.default

T = TypeVar("T")


class _TooDeep(Exception):
    """Raised inside the parser, turned into a MimeError by `parse_message`."""


class Part(EmailMessage):
    """An EmailMessage that knows how deep it sits: the parser attaches each part to its parent
    before reading the part's own body, so the limit stops the recursion at that level."""

    depth = 0

    def attach(self, payload: Self) -> None:  # type: ignore[override]  # as typeshed's MIMEPart.attach
        payload.depth = self.depth + 1
        if payload.depth > MAX_NESTING:
            raise _TooDeep()
        super().attach(payload)


def parse_message(raw: bytes) -> EmailMessage:
    """The message as objects (policy.default), or MimeError(TOO_DEEP)."""
    parser = email.feedparser.BytesFeedParser(Part, policy=_POLICY)
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


def header(part: EmailMessage, name: str) -> str:
    """A header as text ("" when absent or unreadable)."""
    return _safe(lambda: str(part.get(name) or ""), "")


def filename(part: EmailMessage) -> str | None:
    """The attachment's name (Content-Disposition filename, else Content-Type name; RFC 2231 and
    raw UTF-8 decoded)."""
    return _safe(part.get_filename, None)


def content_type(part: EmailMessage) -> str:
    """The part's type; an unreadable Content-Type reads as RFC 2045's default."""
    return _safe(part.get_content_type, "text/plain")


def disposition(part: EmailMessage) -> str | None:
    return _safe(part.get_content_disposition, None)


def charset(part: EmailMessage) -> str:
    return _safe(part.get_content_charset, None) or "utf-8"


def payload(part: EmailMessage) -> bytes:
    """The body with its transfer encoding undone; b"" when there is none to give."""
    data = _safe(lambda: part.get_payload(decode=True), None)
    if isinstance(data, bytes):
        return data
    # Undecodable: the body as it came (a person can still read it) rather than nothing.
    body = _safe(part.get_payload, None)
    return body.encode("ascii", "surrogateescape") if isinstance(body, str) else b""

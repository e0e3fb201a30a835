"""Open: turn the stored raw message into the parts a referral is read from.

Plain MIME for now; decryption and signature checks (OpenPGP, S/MIME) slot in here and raise
`Quarantine` when a message fails the policy. Reading is forgiving: a broken charset or a
missing part is never a reason to lose a referral.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import html
import re
from dataclasses import dataclass
from email.message import Message
from html.parser import HTMLParser

from gateway.open import mimeread


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Opened:
    """The content a referral is read from (the outer headers are `read_outer`'s)."""

    text: str
    referral_json: bytes | None
    attachments: tuple[Attachment, ...]


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    return html.unescape("".join(parser.parts))


def _text_of(part: Message, charset: str) -> str:
    data = mimeread.payload(part)
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):  # an unknown charset name, or one with a NUL: read it as UTF-8, not lose it
        return data.decode("utf-8", errors="replace")


def _header(msg: Message, name: str) -> str:
    """A header of the outer message as text. compat32 (kept here: these headers decide who the
    sender is, and must be read exactly as sent, RFC 2047 words undecoded) hands back a Header
    object for raw 8-bit values (SMTPUTF8 mail); the raw value is read instead, as UTF-8."""
    return mimeread.raw_header(msg, name) or ""


_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>$")


def _message_id(msg: Message) -> str | None:
    """Only a well-formed ASCII Message-ID is repeated in our replies' In-Reply-To."""
    value = re.sub(r"\s+", "", _header(msg, "Message-ID"))
    return value if _MESSAGE_ID.match(value) else None


def _is_automatic(msg: Message) -> bool:
    auto = _header(msg, "Auto-Submitted").strip().lower() or "no"
    precedence = _header(msg, "Precedence").strip().lower()
    return auto != "no" or precedence in ("bulk", "junk", "list")


@dataclass(frozen=True)
class Outer:
    """What the outer (possibly encrypted) message's own headers say."""

    message_id: str | None
    automatic: bool  # RFC 3834: never auto-reply to automatic mail (bounces, out-of-office, lists)
    from_address: str | None


_PROTECTED = re.compile(
    rb"multipart/encrypted|multipart/signed|pkcs7-mime|pkcs7-signature|-----BEGIN PGP (?:MESSAGE|SIGNED)", re.IGNORECASE
)


def read_outer(raw: bytes) -> Outer:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw, headersonly=True)
    return Outer(_message_id(headers), _is_automatic(headers), _one_address(_header(headers, "From")))


_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\\\"]+@[^@\s<>()\[\],;:\\\"]+\.[^@\s<>()\[\],;:\\\"]+$")


def _one_address(value: str) -> str | None:
    """The From address, or "" when the header is there but is not exactly one plain address:
    `"duty@partner.example" <evil@example.org>` and the like must not pass as the partner, nor
    fall back to the unauthenticated envelope sender."""
    if not value.strip():
        return None
    found = [address.strip().lower() for _, address in email.utils.getaddresses([value]) if address.strip()]
    return found[0] if len(found) == 1 and _ADDRESS.match(found[0]) else ""


def looks_protected(raw: bytes) -> bool:
    """Whether a message claims encryption or a signature anywhere: then a structure we cannot
    read is a reason to quarantine, not to read the plaintext leniently."""
    return _PROTECTED.search(raw) is not None


def open_message(raw: bytes) -> Opened:
    """The text, referral.json and attachments of a plain (unwrapped) message. Raises MimeError
    only for a message nested too deep to read (gateway.open.mimeread.TOO_DEEP)."""
    msg = mimeread.parse_message(raw)
    plain: list[str] = []
    markup: list[str] = []
    referral_json: bytes | None = None
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        described = mimeread.describe(part)
        filename, ctype, disposition = described.filename, described.content_type, described.disposition
        data = mimeread.payload(part)
        if filename and filename.strip().lower() == "referral.json" and referral_json is None:
            referral_json = data
        elif filename or disposition == "attachment":
            # The name is the sender's: no control characters (it goes into our alert's headers).
            safe_name = re.sub(r"[\x00-\x1f\x7f]", "", filename or "")[:200] or "unnamed"
            attachments.append(Attachment(safe_name, ctype, data))
        elif ctype == "text/plain":
            plain.append(_text_of(part, described.charset))
        elif ctype == "text/html":
            markup.append(_text_of(part, described.charset))
    text = "\n".join(plain) if plain else "\n".join(html_to_text(m) for m in markup)
    return Opened(text=text, referral_json=referral_json, attachments=tuple(attachments))

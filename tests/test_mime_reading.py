"""Reading a plain message (gateway.open.mime over gateway.open.mimeread) on the headers real and
hostile clients send: raw UTF-8 (RFC 6532, which our SMTPUTF8 invites), RFC 2231 parameters, RFC 2047
words, 8-bit bytes that are not UTF-8, and nesting thousands of levels deep. What comes out is the
text and the attachments under their names, or MimeError with a reason for the sender; nothing else.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.open import mimeread
from gateway.open.mime import open_message, read_outer
from gateway.open.mimebytes import MimeError
from gateway.open.mimeread import MAX_NESTING, TOO_DEEP
from gateway.open.unwrap import Trust, Unwrapper
from tests.conftest import referral_body

PDF = b"%PDF-1.4\n% synthetic form\n" + bytes(range(256))


def with_attachment(disposition: bytes, content_type: bytes = b"application/pdf") -> bytes:
    """A referral with one attachment whose two headers are given exactly as bytes."""
    return (
        b"From: Ann Example <ann.example@nhs.example>\r\n"
        b"To: referrals@demo-council.example\r\n"
        b"Subject: Safeguarding referral\r\n"
        b"Message-ID: <m1@nhs.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="mix1"\r\n\r\n'
        b"--mix1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + referral_body().encode()
        + b"\r\n--mix1\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: "
        + disposition
        + b"\r\n\r\n"
        + base64.encodebytes(PDF).replace(b"\n", b"\r\n")
        + b"\r\n--mix1--\r\n"
    )


@pytest.mark.parametrize(
    ("disposition", "content_type", "name"),
    [
        # Raw UTF-8 in the quoted filename: the message of issue 11 (compat32 gave a Header object).
        ('attachment; filename="Überweisung – Zoë.pdf"'.encode(), b"application/pdf", "Überweisung – Zoë.pdf"),
        # ... unquoted, and only in Content-Type's name.
        ("attachment; filename=Zoë.pdf".encode(), b"application/pdf", "Zoë.pdf"),
        (b"attachment", 'application/pdf; name="Łódź.pdf"'.encode(), "Łódź.pdf"),
        # RFC 2231: an encoded value, and one in continuations.
        (b"attachment; filename*=utf-8''%C3%9Cberweisung%20Zo%C3%AB.pdf", b"application/pdf", "Überweisung Zoë.pdf"),
        (b"attachment; filename*0*=utf-8''%C3%9Cber; filename*1*=weisung.pdf", b"application/pdf", "Überweisung.pdf"),
        # RFC 2047 in a parameter (not standard, but what Outlook sends).
        (b'attachment; filename="=?utf-8?b?w5xiZXJ3ZWlzdW5nLnBkZg==?="', b"application/pdf", "Überweisung.pdf"),
        # An 8-bit byte that is not UTF-8 (Latin-1 é): read, with a replacement character, not a crash.
        (b'attachment; filename="caf\xe9.pdf"', b"application/pdf", "caf\ufffd.pdf"),
        # Garbage the modern parser gives up on, which compat32 read: still found (the fuzz's case).
        (b'name=( attachment; filename="scan.pdf"', b"application/pdf", "scan.pdf"),
    ],
)
def test_attachment_names_in_every_encoding_are_read(disposition: bytes, content_type: bytes, name: str) -> None:
    opened = open_message(with_attachment(disposition, content_type))
    assert "Sam Testchild" in opened.text
    ((attachment),) = opened.attachments
    assert attachment.filename == name and attachment.data == PDF


def test_raw_utf8_in_every_outer_header_is_read_as_text() -> None:
    raw = (
        "From: Zoë Ångström <zoe@nhs.example>\r\nSubject: Überweisung\r\nMessage-ID: <ü@nhs.example>\r\n"
        "Auto-Submitted: no\r\n\r\nbody\r\n"
    ).encode()
    outer = read_outer(raw)
    assert outer.from_address == "zoe@nhs.example"
    assert outer.message_id is None  # not ASCII: never repeated in our replies' In-Reply-To
    assert outer.automatic is False


def nested(levels: int) -> bytes:
    """A text part inside `levels` multiparts, each inside the one before."""
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(levels))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    leaf = b"Content-Type: text/plain\r\n\r\nhello"
    return b"From: ann.example@nhs.example\r\nMIME-Version: 1.0\r\n" + head + leaf + tail


def test_nesting_up_to_the_limit_is_read_and_beyond_it_is_a_reason_not_a_recursion_error() -> None:
    assert open_message(nested(MAX_NESTING)).text.strip() == "hello"
    for levels in (MAX_NESTING + 1, 2000, 20000):
        with pytest.raises(MimeError) as caught:
            open_message(nested(levels))
        assert caught.value.reason == TOO_DEEP


async def test_the_unwrapper_walks_a_deep_message_without_recursing() -> None:
    unwrapped = await Unwrapper(None, None, Trust()).unwrap(nested(2000))
    assert unwrapped.entity.content_type == "multipart/mixed" and not unwrapped.encrypted


BASE = with_attachment(b'attachment; filename="scan.pdf"')
# What header mutations are made of: raw UTF-8 and invalid UTF-8, the syntax of parameters,
# RFC 2231 and RFC 2047 pieces, folding, and the types that make a message look protected.
PIECES = st.sampled_from(
    [
        "é".encode(),
        "Ü".encode(),
        "😀".encode(),
        b"\xff",
        b"\xc3",
        b"\x80",
        b"\x00",
        b'"',
        b"'",
        b";",
        b"=",
        b"*",
        b"%",
        b"%C3",
        b"\\",
        b"(",
        b")",
        b"<",
        b">",
        b",",
        b"@",
        b":",
        b" ",
        b"\t",
        b"\r\n ",
        b"\r\n",
        b"*0*=utf-8''%C3%9C",
        b"*1=",
        b"filename*=",
        b"name=",
        b"boundary=",
        b"=?utf-8?q?=C3=9C?=",
        b"=?",
        b"?=",
        b"=?utf-8?b?",
        b"multipart/mixed",
        b"message/rfc822",
        b"multipart/signed",
        b"application/pkcs7-mime",
        b"base64",
        b"quoted-printable",
    ]
)


def header_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where the header blocks are: the outer headers and each part's."""
    spans, start = [], 0
    while (end := raw.find(b"\r\n\r\n", start)) >= 0:
        spans.append((start, end))
        following = raw.find(b"\r\n--mix1\r\n", end)
        if following < 0:
            break
        start = following + len(b"\r\n--mix1\r\n")
    return spans


SPANS = header_spans(BASE)


@st.composite
def mutated(draw: st.DrawFn, base: bytes = BASE) -> bytes:
    """The base referral with a few edits (insert, replace or delete) inside its header blocks."""
    raw = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(SPANS))
        at = draw(st.integers(start, max(start, end - 1)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = b"".join(draw(st.lists(PIECES, min_size=1, max_size=4)))
        if op == "insert":
            raw[at:at] = piece
        elif op == "replace":
            raw[at : at + len(piece)] = piece
        else:
            del raw[at : at + draw(st.integers(1, 12))]
    return bytes(raw)


@settings(max_examples=400, deadline=None)
@given(mutated())
async def test_mutated_headers_are_read_or_refused_with_a_reason_never_crashed_on(raw: bytes) -> None:
    read_outer(raw)  # never raises
    try:
        unwrapped = await Unwrapper(None, None, Trust()).unwrap(raw)
        content = unwrapped.entity.raw
    except MimeError as exc:
        assert exc.reason
        content = raw  # the opener reads plain mail with a broken structure as it is
    try:
        opened = open_message(content)
    except MimeError as exc:
        assert exc.reason == TOO_DEEP
        return
    for attachment in opened.attachments:
        assert attachment.filename and not any(ord(c) < 32 or ord(c) == 127 for c in attachment.filename)


def test_header_values_naming_a_file_are_never_kept_and_kept_ones_read_the_same() -> None:
    """Parsed Content-Type/Content-Disposition values are shared between messages (a cache), but a
    value naming a file is the sender's (it may name a child) and is parsed afresh, never kept."""
    mimeread._parse_cached.cache_clear()
    names = ('filename="Sam Testchild.pdf"', "filename*=utf-8''Sam%20Testchild.pdf", 'filename*0="Sam Test"')
    for n, name in enumerate(names):
        raw = with_attachment(f"attachment; {name}".encode(), f'application/pdf; name="file{n}.pdf"'.encode())
        opened = open_message(raw)
        assert opened.attachments[0].filename.startswith("Sam Test")
        assert mimeread._parse_cached.cache_info().currsize == 1  # the body's 'text/plain; charset=utf-8' only
    first, again = open_message(with_attachment(b"attachment")), open_message(with_attachment(b"attachment"))
    assert first == again and first.attachments[0].filename == "unnamed" and first.text.strip()
    assert mimeread._parse_cached.cache_info().hits >= 3  # the text part and the bare 'attachment' again

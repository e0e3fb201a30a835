"""gateway.open.raw_view: what a message that could not be read holds, described for a person,
without failing on any input and without passing on control or direction-override characters."""

from __future__ import annotations

from gateway.open.raw_view import TEXT_LIMIT, view


def test_parts_headers_and_text_of_a_plain_message_with_a_file() -> None:
    raw = (
        b"From: =?utf-8?q?Ann_Ex=C3=A4mple?= <ann.example@nhs.example>\r\nSubject: Hi\x1b[31m \xe2\x80\xae\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWorried about Sam.\x07\r\n"
        b'--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="notes.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n"
    )  # \xe2\x80\xae: U+202E, right-to-left override, as raw UTF-8 (RFC 6532)
    seen = view(raw)
    assert seen.from_header == "Ann Exämple <ann.example@nhs.example>"
    assert seen.subject == "Hi[31m"  # the escape and the override character gone
    assert [(p.content_type, p.size, p.filename) for p in seen.parts] == [
        ("text/plain", 19, None),  # the bell character still counted: the bytes as sent
        ("application/pdf", 9, "notes.pdf"),
    ]
    assert seen.text == "Worried about Sam." and not seen.text_cut and seen.size == len(raw)


def test_the_text_is_bounded() -> None:
    seen = view(b"Subject: long\r\n\r\n" + b"x" * (TEXT_LIMIT + 10))
    assert len(seen.text) == TEXT_LIMIT and seen.text_cut


def test_garbage_is_described_not_refused() -> None:
    raw = b"\xff\xfe\x00garbage with no headers at all"
    seen = view(raw)
    assert seen.size == len(raw) and len(seen.parts) == 1 and "garbage with no headers" in seen.text

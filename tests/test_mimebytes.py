"""Exact-bytes MIME splitting: parts come back byte for byte; nothing crashes on junk."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.open.mimebytes import MimeError, canonical_crlf, parse_entity, split_multipart

BOUNDARY = "b1_=_xyz"
# A part may not contain the delimiter, and with bare-LF line ends a trailing CR is ambiguous.
part_text = st.binary(max_size=300).filter(lambda b: b"--" + BOUNDARY.encode() not in b and not b.endswith(b"\r"))


def assemble(parts: list[bytes], newline: bytes = b"\r\n", preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    head = f'Content-Type: multipart/signed; boundary="{BOUNDARY}"; protocol="application/pgp-signature"'.encode()
    body = preamble
    for index, part in enumerate(parts):
        body += (newline if index or preamble else b"") + b"--" + BOUNDARY.encode() + newline + part
    body += newline + b"--" + BOUNDARY.encode() + b"--" + newline + epilogue
    return head + newline + newline + body


@given(st.lists(part_text, min_size=1, max_size=4), st.sampled_from([b"\r\n", b"\n"]))
def test_parts_come_back_byte_for_byte(parts: list[bytes], newline: bytes) -> None:
    raw = assemble(parts, newline, preamble=b"This is a multipart message.", epilogue=b"trailer")
    entity = parse_entity(raw)
    assert entity.content_type == "multipart/signed"
    assert split_multipart(entity) == parts


def test_the_crlf_before_a_delimiter_belongs_to_the_delimiter() -> None:
    signed = b"Content-Type: text/plain\r\n\r\nHello\r\n"
    raw = assemble([signed, b"Content-Type: application/pgp-signature\r\n\r\nSIG"])
    first, second = split_multipart(parse_entity(raw))
    assert first == signed  # its own final CRLF kept; the delimiter's CRLF not added
    assert second.endswith(b"SIG")


def test_truncated_and_boundaryless_multiparts_are_named_errors() -> None:
    raw = assemble([b"a", b"b"])
    with pytest.raises(MimeError, match="no closing boundary"):
        split_multipart(parse_entity(raw[: raw.rindex(b"--" + BOUNDARY.encode())]))
    with pytest.raises(MimeError, match="without a boundary"):
        split_multipart(parse_entity(b"Content-Type: multipart/mixed\r\n\r\nbody"))
    with pytest.raises(MimeError, match="never appears"):
        split_multipart(parse_entity(b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\nbody'))


def test_canonical_crlf() -> None:
    assert canonical_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", b"x"]), max_size=30))
def test_canonical_crlf_gives_the_bytes_the_rfc_regex_gives(pieces: list[bytes]) -> None:
    """The signed bytes (and a repeat's digest) are made from this: byte for byte what
    re.sub(rb"\r?\n", b"\r\n") made before it was two bytes.replace."""
    data = b"".join(pieces)
    assert canonical_crlf(data) == re.sub(rb"\r?\n", b"\r\n", data)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_junk_never_raises_anything_but_mime_error(data: bytes) -> None:
    try:
        entity = parse_entity(data)
        entity.decoded_body()
        if entity.content_type.startswith("multipart/"):
            split_multipart(entity)
    except MimeError:
        pass


@given(st.text(max_size=200))
def test_junk_with_a_multipart_header_never_raises_anything_but_mime_error(body: str) -> None:
    raw = b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n' + body.encode("utf-8", "surrogatepass")
    try:
        split_multipart(parse_entity(raw))
    except MimeError:
        pass


def split_by_regex(entity_body: bytes, boundary: str) -> list[bytes] | str:
    """RFC 2046 §5.1.1's delimiter as one regex, as split_multipart read it before it searched with
    bytes.find: the reference its parts (or its error) must agree with."""
    delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(entity_body):
        if start is not None:
            parts.append(entity_body[start : match.start()])
        if match.group(1):
            return parts
        start = match.end()
    return "never appears" if start is None else "no closing boundary"


# Bodies built from the pieces a delimiter is made of, so that near-misses are common: a missing or
# doubled line break, trailing white space, "--" after the boundary, a boundary inside a longer word.
pieces = st.sampled_from([b"--b", b"--b--", b"--", b"b", b"\r\n", b"\n", b"\r", b" ", b"\t", b"x", b"--bb"])


@settings(max_examples=1000)
@given(st.lists(pieces, max_size=30))
def test_delimiters_are_found_exactly_where_the_rfc_2046_regex_finds_them(body_pieces: list[bytes]) -> None:
    body = b"".join(body_pieces)
    entity = parse_entity(b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body)
    expected = split_by_regex(entity.body, "b")
    try:
        assert split_multipart(entity) == expected
    except MimeError as exc:
        assert isinstance(expected, str) and expected in exc.reason

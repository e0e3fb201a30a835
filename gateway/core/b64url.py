"""Unpadded base64url (RFC 4648 section 5) for signed values in links and cookies, decoded strictly.

Python's decoder is lenient: it ignores characters outside the alphabet, accepts padding anywhere
and ignores the unused low bits of the last character, so many different strings decode to the same
bytes. A signed token must have exactly one spelling: a link altered by one character must never
still open the page, so `decode` accepts only the text `encode` would have written.
"""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile("[A-Za-z0-9_-]*")


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode(text: str) -> bytes:
    """The bytes of a canonical unpadded base64url text; ValueError for any other text."""
    if not _ALPHABET.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not unpadded base64url") from None
    if encode(data) != text:  # non-zero unused bits in the last character
        raise ValueError("not canonical base64url")
    return data

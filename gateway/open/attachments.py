"""A stored email referral's attachments, read again from its raw message for the staff pages (the
pipeline keeps only the parsed referral apart from the raw message)."""

from __future__ import annotations

from gateway.open.crypto import CryptoError
from gateway.open.identity import Identity
from gateway.open.mime import Attachment, looks_protected, open_message
from gateway.open.mimebytes import MimeError

UNREADABLE = "The attachments could not be decrypted here; they are in the secure alert email."


async def read_attachments(identity: Identity, raw: bytes) -> tuple[tuple[Attachment, ...], str | None]:
    """(the attachments, a note when they could not be read here). The layers come off with every
    partner's trust: only the files are wanted, the message was judged when it was processed."""
    try:
        unwrapped = await identity.unwrapper().unwrap(raw)
    except (MimeError, CryptoError):
        if looks_protected(raw):
            return (), UNREADABLE
        return _files(raw)
    return _files(unwrapped.entity.raw)


def _files(content: bytes) -> tuple[tuple[Attachment, ...], str | None]:
    try:
        return open_message(content).attachments, None
    except MimeError as exc:  # nested too deep to read: the page says so (it was quarantined for it)
        return (), f"The attachments could not be read: {exc.reason}."

"""Who a quarantine notice goes to, found from the stored message itself.

A stage that quarantines on purpose (the policy, an unreadable structure) knows its sender; a
quarantine after the retries of a crash, of a row the database cannot return or of a worker that
kept dying knows only the message's id. Each column is read and opened on its own, so that the part
that is damaged (often the raw bytes: the reason the message failed) does not hide the part that
is not (the envelope, which names the sender).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, select
from sqlalchemy.exc import DBAPIError

from gateway.core.db import Database
from gateway.core.schema import messages
from gateway.core.sealed import Sealed, SmsEnvelope, WebEnvelope
from gateway.core.sealing import SealError
from gateway.open.mime import read_outer
from gateway.pipeline.work import Claimed


@dataclass(frozen=True)
class Sender:
    """Where the notice goes, or (`to` None) why there is nobody to send it to."""

    to: str | None
    in_reply_to: str | None = None
    why_not: str = ""  # safe words for the timeline and the triage alert; never an address


async def _column(db: Database, message_id: str, column: Column[bytes]) -> bytes | None:
    async with db.read() as conn:
        try:
            value = (await conn.execute(select(column).where(messages.c.id == message_id))).scalar_one_or_none()
        except DBAPIError:  # the row is damaged (the load failure path): what can be read, is
            return None
    return value if isinstance(value, bytes) else None


async def sender_of(db: Database, sealed: Sealed, message: Claimed) -> Sender:
    blob = await _column(db, message.message_id, messages.c.envelope)
    try:
        envelope = sealed.envelope(message.message_id, message.channel, blob) if blob is not None else None
    except (SealError, ValueError):
        envelope = None
    if envelope is None:
        return Sender(None, why_not="the stored envelope cannot be read")
    if isinstance(envelope, SmsEnvelope):
        # The webhook's reply already gave the duty number (and a rate-limited number, deliberately,
        # nothing): a second text would only add to a loop or a flood.
        return Sender(None, why_not="a text is answered when it arrives")
    if isinstance(envelope, WebEnvelope):
        if envelope.referrer_email:
            return Sender(envelope.referrer_email)
        return Sender(None, why_not="the form gave no email address")
    if not envelope.mail_from:
        return Sender(None, why_not="null sender")  # RFC 3834: never answer a bounce
    raw = await _column(db, message.message_id, messages.c.raw)
    try:
        outer = read_outer(sealed.raw(message.message_id, raw)) if raw is not None else None
    except SealError:
        outer = None
    if outer is None:
        # Its headers cannot be read, so neither can Auto-Submitted: tell the envelope sender all the
        # same (our notice is itself Auto-Submitted, which stops a compliant responder looping).
        return Sender(envelope.mail_from)
    if outer.automatic:
        return Sender(None, why_not="automatic message")
    return Sender(envelope.mail_from, outer.message_id)

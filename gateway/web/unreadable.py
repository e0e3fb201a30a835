"""A referral that could not be read, as its staff page shows it: why, who sent it and what was
sent, read from the stored message (gateway.open.raw_view). Two kinds: one quarantined (not opened:
a wrong key, damaged, an unknown signer), and an email opened but with nothing in it read as a
referral (garbage MIME, a scanned form as a PDF only), routed to triage as incomplete. On either,
every field would say "Not given", which hides that the message itself may hold the concern.

The raw message and its envelope stay sealed at rest (gateway.core.sealed); they are opened here
for one response only. Each column is read on its own, as the quarantine notice's sender lookup
does (gateway.pipeline.sender): the damaged part is often the reason for the quarantine, and must
not hide the part that can be read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from sqlalchemy import select

from gateway.core.db import Database
from gateway.core.lifecycle import State
from gateway.core.model import Referral
from gateway.core.records import ReferralRecord
from gateway.core.schema import events, messages
from gateway.core.sealed import EmailEnvelope, Sealed, SmsEnvelope, WebEnvelope
from gateway.core.sealing import SealError
from gateway.open.raw_view import RawView, view

NOTHING_READ = "no field of the referral form and no text were found in it"


@dataclass(frozen=True)
class Unreadable:
    reason: str  # the quarantine's reason, as the sender was told it (no personal data)
    stage: str  # "" when it was opened (nothing read) rather than quarantined
    quarantined: bool
    envelope_sender: str | None  # SMTP MAIL FROM ("" for a bounce), the form's address, the text's number
    sender_kind: str  # what envelope_sender is, in words
    raw: RawView | None  # None when the stored message cannot be opened (or is gone)
    raw_note: str | None  # why there is no raw view


def _sender(channel: str, envelope: EmailEnvelope | WebEnvelope | SmsEnvelope | None) -> tuple[str | None, str]:
    if isinstance(envelope, SmsEnvelope):
        return envelope.sender, "Texted from"
    if isinstance(envelope, WebEnvelope):
        return envelope.referrer_email, "Email address given on the form"
    if isinstance(envelope, EmailEnvelope):
        return envelope.mail_from, "Envelope sender (SMTP MAIL FROM)"
    return None, "Sender" if channel != "email" else "Envelope sender (SMTP MAIL FROM)"


def nothing_read(content: Referral) -> bool:
    """True when not one field nor any text of a referral was read from it."""
    return dataclasses.replace(content, problems=()) == Referral()


async def unreadable(db: Database, sealed: Sealed, row: ReferralRecord, content: Referral | None) -> Unreadable | None:
    """What the page shows in place of the fields of a referral that could not be read; None for
    one that could (or whose content was removed, or a repeat: their pages say so)."""
    if row.purged_at is not None:
        return None
    if row.state == State.QUARANTINED:
        reason, stage = await _quarantine_reason(db, row.id)
    elif content is not None and row.channel == "email" and nothing_read(content):
        reason, stage = NOTHING_READ, ""
    else:
        return None
    async with db.read() as conn:
        stored = (
            await conn.execute(select(messages.c.raw, messages.c.envelope).where(messages.c.id == row.message_id))
        ).one_or_none()
    envelope = None
    raw: RawView | None = None
    note: str | None = None
    if stored is None:
        note = "No stored message."
    else:
        try:
            envelope = sealed.envelope(row.message_id, row.channel, stored.envelope) if stored.envelope else None
        except (SealError, ValueError):
            envelope = None
        try:
            raw = view(sealed.raw(row.message_id, stored.raw)) if stored.raw is not None else None
        except SealError:
            raw = None
        if raw is None:
            note = "The stored message cannot be opened with this gateway's keys."
    who, kind = _sender(row.channel, envelope)
    return Unreadable(reason, stage, stage != "", who, kind, raw, note)


async def _quarantine_reason(db: Database, referral_id: str) -> tuple[str, str]:
    async with db.read() as conn:
        detail = (
            await conn.execute(
                select(events.c.detail)
                .where(events.c.referral_id == referral_id, events.c.kind == "quarantined")
                .order_by(events.c.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
    found = json.loads(detail) if detail else {}
    return str(found.get("reason") or "no reason was recorded"), str(found.get("stage") or "?")


async def raw_message(db: Database, sealed: Sealed, row: ReferralRecord) -> bytes | None:
    """The stored message as it came, opened for a download; None when there is none to give."""
    if row.purged_at is not None:
        return None
    async with db.read() as conn:
        blob = (await conn.execute(select(messages.c.raw).where(messages.c.id == row.message_id))).scalar_one_or_none()
    if blob is None:
        return None
    try:
        return sealed.raw(row.message_id, blob)
    except SealError:
        return None

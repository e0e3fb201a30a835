"""Notices to the referrer (acknowledged, outcome), on the channel their referral came by.

Acknowledgement and closure both tell the referrer through here, so the two cannot drift: an SMS
referral is answered by SMS to the number it came from; an email referral by email to the address
its receipt went to, encrypted to the referrer's own key when it is known. Nobody is told when no
receipt went out (a null sender, automatic mail).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.core import audit
from gateway.core.records import ReferralRecord
from gateway.core.schema import deliveries, messages
from gateway.core.sealed import EmailEnvelope, Sealed, SmsEnvelope, WebEnvelope
from gateway.outbox.compose import Composer
from gateway.outbox.enqueue import queue_outgoing
from gateway.outbox.protect import Protector


class Referrers:
    def __init__(self, sealed: Sealed, composer: Composer, protector: Protector) -> None:
        self._sealed = sealed
        self._composer = composer
        self._protector = protector

    async def tell(
        self,
        conn: AsyncConnection,
        row: ReferralRecord,
        kind: str,
        context: Mapping[str, object],
        now: datetime,
        actor: str,
    ) -> list[audit.Event]:
        """Queue a notice (templates email|sms/<kind>.txt) in the caller's transaction; returns its
        `delivery_queued` events, or none when there is nobody to tell."""
        channel, to = await self._address(conn, row)
        if not to:
            return []
        notice = self._composer.referrer_notice(kind, channel, to, now, row.reference, context)
        if channel == "email" and row.content is not None:
            content = self._sealed.content(row.id, row.content)
            notice = await self._protector.maybe_protect(content.reply_key, notice)
        return await queue_outgoing(conn, self._sealed, row.id, [notice], now, actor)

    async def address_of(self, conn: AsyncConnection, row: ReferralRecord) -> tuple[str, str | None]:
        """(channel, address) the referrer's notices go to (None: nobody to tell), for a message
        that must be composed apart, as a request for more information is (gateway.track.answers)."""
        return await self._address(conn, row)

    async def _address(self, conn: AsyncConnection, row: ReferralRecord) -> tuple[str, str | None]:
        """(channel, address): the number an SMS referral came from, or the envelope sender (or
        the address given on the form) that an email or web referral's receipt went to."""
        message = (
            await conn.execute(select(messages.c.channel, messages.c.envelope).where(messages.c.id == row.message_id))
        ).one_or_none()
        if message is None:
            return "email", None
        envelope = self._sealed.envelope(row.message_id, message.channel, message.envelope)
        if isinstance(envelope, SmsEnvelope):
            return "sms", envelope.sender or None
        receipt = (
            await conn.execute(
                select(deliveries.c.id).where(deliveries.c.referral_id == row.id, deliveries.c.kind == "receipt")
            )
        ).first()
        if receipt is None:
            return "email", None
        if isinstance(envelope, EmailEnvelope):
            return "email", envelope.mail_from or None
        assert isinstance(envelope, WebEnvelope)
        return "email", envelope.referrer_email or None

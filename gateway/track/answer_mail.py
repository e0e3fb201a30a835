"""The two answer messages that may carry personal data (gateway.track.answers): a forward to a
neighbouring authority and a request to the referrer for more information. Each is encrypted to
its recipient's key or, without one (or if encryption fails), replaced by a message with no personal
data: never content or a reason in clear mail."""

from __future__ import annotations

import logging
from datetime import datetime

from gateway.config import Settings
from gateway.config.neighbours import Neighbour
from gateway.core.records import ReferralRecord
from gateway.core.sealed import Sealed
from gateway.open.crypto import CryptoError
from gateway.outbox.compose import Composer, Outgoing
from gateway.outbox.protect import Protector

log = logging.getLogger(__name__)


class AnswerMail:
    def __init__(self, settings: Settings, sealed: Sealed, composer: Composer, protector: Protector) -> None:
        self._s = settings
        self._sealed = sealed
        self._composer = composer
        self._protector = protector

    async def forward(
        self, row: ReferralRecord, neighbour: Neighbour, by: str, reason: str, now: datetime
    ) -> tuple[Outgoing, bool]:
        """The forward: the content encrypted to the neighbour's key, or, without a key (or if it
        fails), the notice with no personal data. Never content in clear mail."""
        notice = self._composer.answer_mail("forward", "forward_notice", neighbour.address, now, row.reference, {})
        if not self._protector.can_protect(neighbour):
            return notice, False
        assert row.content is not None
        referral = self._sealed.content(row.id, row.content).referral
        context = {"referral": referral, "neighbour": neighbour, "by": by, "reason": reason}
        context |= {"received_at": row.received_at}
        head, entity = self._composer.answer_secure_parts(
            "forward_secure", neighbour.address, now, row.reference, context
        )
        try:
            message = await self._protector.protect(neighbour, head, entity)
        except CryptoError as exc:
            log.warning("answers: forward of %s not encrypted (%s); the notice goes instead", row.reference, exc.reason)
            return notice, False
        return Outgoing("forward", neighbour.address, message, notice.recipient_hash), True

    async def request(
        self, row: ReferralRecord, channel: str, to: str, reason: str, now: datetime
    ) -> tuple[Outgoing, bool]:
        """The request: with the reason only when encrypted to the referrer's own key; otherwise the
        reference, that more is needed, and the duty phone (the reason may be personal data)."""
        # Replies come to a referral address (the intake accepts no other), whatever mail.from_address is.
        reply_to = self._s.smtp.referral_addresses[0]
        clear = self._composer.referrer_notice("info_request", channel, to, now, row.reference, {}, reply_to)
        assert row.content is not None
        key = self._sealed.content(row.id, row.content).reply_key
        if channel != "email" or key is None:
            return clear, False
        head, entity = self._composer.answer_secure_parts(
            "info_request_secure", to, now, row.reference, {"reason": reason}, reply_to
        )
        try:
            message = await self._protector.protect_to(key, head, entity)
        except CryptoError as exc:
            log.warning(
                "answers: request for %s not encrypted (%s); sent without the reason", row.reference, exc.reason
            )
            return clear, False
        return Outgoing("info_request", to, message, clear.recipient_hash), True

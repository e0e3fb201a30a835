"""Alerts for one fired escalation step: an email or an SMS per recipient and channel.

The first alert (step 1, at routing) carries the referral's content, encrypted, to each recipient
who has a key; everyone else, and every later step, gets an alert with no personal data: the
reference, urgency, team and an acknowledgement link bound to that recipient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway.open.crypto import CryptoError
from gateway.outbox.compose import AlertContent, AlertFacts, Composer, Outgoing
from gateway.outbox.protect import Protector
from gateway.route.escalate import Send


class Alerter:
    def __init__(self, composer: Composer, protector: Protector) -> None:
        self._composer = composer
        self._protector = protector

    async def alerts(
        self, kind: str, sends: Sequence[Send], facts: AlertFacts, content: AlertContent | None = None
    ) -> tuple[list[Outgoing], list[str]]:
        """(messages, reasons encryption failed): a recipient whose key fails still gets the
        alert, without content, rather than nothing."""
        out: list[Outgoing] = []
        failures: list[str] = []
        for send in sends:
            recipient = send.recipient
            if send.channel == "sms":
                assert recipient.mobile is not None
                out.append(self._composer.alert_sms(kind, recipient.mobile, facts))
                continue
            assert recipient.email is not None
            alert = self._composer.alert(kind, recipient.email, facts)
            if content is not None and self._protector.can_protect(recipient):
                head, entity = self._composer.secure_alert_parts(recipient.email, facts, content)
                try:
                    alert = dataclasses.replace(alert, message=await self._protector.protect(recipient, head, entity))
                except CryptoError as exc:
                    # The key failed (expired, removed): alert all the same, without content,
                    # rather than hold the referral back; the event says why.
                    failures.append(f"{recipient.key}: {exc.reason}")
            out.append(alert)
        return out, failures

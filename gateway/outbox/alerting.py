"""Alerts for one fired escalation step: an email or an SMS per recipient and channel.

The first alert (step 1, at routing) carries the referral's content, encrypted, to each recipient
who has a key; everyone else, and every later step, gets an alert with no personal data: the
reference, urgency, team and an acknowledgement link bound to that recipient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.config.duty import Team
from gateway.core.model import Problem, Referral, Urgency
from gateway.open.crypto import CryptoError
from gateway.open.mime import Attachment
from gateway.open.security import Security
from gateway.outbox.compose import Composer, Outgoing
from gateway.outbox.protect import Protector
from gateway.route.escalate import Send


@dataclass(frozen=True)
class AlertContent:
    """What an encrypted first alert carries."""

    referral: Referral
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True)
class AlertFacts:
    referral_id: str
    reference: str
    team: Team
    route_name: str
    urgency: Urgency | None
    problems: tuple[Problem, ...]
    received_at: datetime
    due_at: datetime
    now: datetime
    security: Security | None = None  # how an email referral was sent; None for web and SMS
    step_notify: str = ""  # "managers, coordinators": why an escalation reached this recipient


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
                out.append(
                    self._composer.sms(
                        kind,
                        "alert",
                        to=recipient.mobile,
                        referral_id=facts.referral_id,
                        now=facts.now,
                        context={"reference": facts.reference, "urgency": facts.urgency, "team": facts.team},
                    )
                )
                continue
            assert recipient.email is not None
            alert = self._composer.alert(
                kind=kind,
                referral_id=facts.referral_id,
                reference=facts.reference,
                team=facts.team,
                to=recipient.email,
                route_name=facts.route_name,
                urgency=facts.urgency,
                problems=facts.problems,
                received_at=facts.received_at,
                due_at=facts.due_at,
                now=facts.now,
                security=facts.security,
                step_notify=facts.step_notify,
            )
            if content is not None and self._protector.can_protect(recipient):
                head, entity = self._composer.secure_alert_parts(
                    referral_id=facts.referral_id,
                    reference=facts.reference,
                    team=facts.team,
                    to=recipient.email,
                    attachments=content.attachments,
                    now=facts.now,
                    context={
                        "referral": content.referral,
                        "route_name": facts.route_name,
                        "received_at": facts.received_at,
                        "due_at": facts.due_at,
                        "security": facts.security,
                    },
                )
                try:
                    alert = dataclasses.replace(alert, message=await self._protector.protect(recipient, head, entity))
                except CryptoError as exc:
                    # The key failed (expired, removed): alert all the same, without content,
                    # rather than hold the referral back; the event says why.
                    failures.append(f"{recipient.key}: {exc.reason}")
            out.append(alert)
        return out, failures

"""SMS in: what a stored inbound SMS says, and the replies the gateway texts back.

SMS is an insecure channel: replies carry references, phone numbers and instructions, never a
child's name or the details of a concern. Pure functions over config and the message.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gateway.config import Settings
from gateway.core.model import Referral, Urgency
from gateway.core.outcomes import Quarantine
from gateway.parse.sms_text import FreeText, QuickReferral, read_sms, to_referral

DANGER = "If a child is in immediate danger call 999 now."


def read_sms_referral(settings: Settings, raw: bytes, envelope: dict[str, Any]) -> tuple[Referral, str]:
    """(the referral, the sender's organisation) from a stored inbound SMS, or Quarantine: a
    number not in the partner directory, or a sender over the rate limit, is held for a person."""
    if envelope.get("rate_limited"):
        sms = settings.sms
        raise Quarantine(
            "sms",
            f"over the SMS rate limit: more than {sms.inbound_limit} messages from this number "
            f"within {sms.inbound_window}; read it and call the sender",
        )
    sender = str(envelope.get("from") or "")
    found = settings.professional(sender)
    if found is None:
        raise Quarantine("sms", "the sending number is not registered to a partner organisation; call the sender")
    partner, person = found
    params = dict(json.loads(raw))
    item = read_sms(str(params.get("Body") or ""))
    if not isinstance(item, QuickReferral | FreeText):
        item = FreeText(str(params.get("Body") or ""))  # intake only stores referral texts here
    referral = to_referral(item, partner.name, person.name)
    referral = dataclasses.replace(referral, referrer=dataclasses.replace(referral.referrer, phone=sender))
    return referral, partner.name


def referral_reply(
    settings: Settings, reference: str, urgency: Urgency | None, known: bool, team_name: str, team_phone: str
) -> str:
    council = settings.gateway.council
    if not known:
        return (
            f"{council}: your message is held for the duty team as {reference}, but this number is not "
            f"registered to send referrals. {DANGER} Duty team: {settings.gateway.duty_phone}."
        )
    if urgency is Urgency.IMMEDIATE:
        return (
            f"{DANGER} {council}: referral {reference} received for the {team_name}. "
            f"Duty team now: {team_phone}, quoting {reference}."
        )
    return (
        f"{council}: referral {reference} received for the {team_name}, who will acknowledge it. "
        f"Quote {reference} if you call {team_phone}. {DANGER}"
    )


def help_reply(settings: Settings) -> str:
    return (
        f"{settings.gateway.council} referrals: text REF <postcode> <urgency> <details> to refer a concern, "
        f"or ACK <reference> to acknowledge an alert. {DANGER} Duty team: {settings.gateway.duty_phone}. "
        "Reply STOP to stop messages."
    )


def stop_reply(settings: Settings) -> str:
    return (
        f"You are unsubscribed from {settings.gateway.council} referral messages and will get no more. "
        f"Reply START to resubscribe. {DANGER}"
    )


def start_reply(settings: Settings) -> str:
    return (
        f"You are subscribed to {settings.gateway.council} referral messages again. Reply HELP for help, STOP to stop."
    )

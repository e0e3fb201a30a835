"""The replies the gateway texts back to an inbound SMS.

SMS is an insecure channel: replies carry references, phone numbers and instructions, never a
child's name or the details of a concern. Pure functions over config.
"""

from __future__ import annotations

from gateway.config import Settings
from gateway.core.model import Urgency

DANGER = "If a child is in immediate danger call 999 now."


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

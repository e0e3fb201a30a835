"""Open, for a text: who sent it. SMS has no signature of its own (Twilio's signature on the
webhook says only that Twilio sent it), so a referral by SMS is acted on only when its number is
registered to a professional in the partner directory; anything else is held for a person."""

from __future__ import annotations

from gateway.config import Settings
from gateway.config.sections import Partner, Professional
from gateway.core.outcomes import Quarantine
from gateway.core.sealed import SmsEnvelope


def registered_sender(settings: Settings, envelope: SmsEnvelope) -> tuple[Partner, Professional]:
    """The partner and professional the sending number is registered to; Quarantine when it is not,
    or when the number was over its rate limit (a loop between auto-responders, a flood)."""
    if envelope.rate_limited:
        sms = settings.sms
        raise Quarantine(
            "sms",
            f"over the SMS rate limit: more than {sms.inbound_limit} messages from this number "
            f"within {sms.inbound_window}; read it and call the sender",
        )
    found = settings.professional(envelope.sender)
    if found is None:
        raise Quarantine("sms", "the sending number is not registered to a partner organisation; call the sender")
    return found

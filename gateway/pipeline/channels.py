"""The pipelines: for each channel, the handlers a stored message goes through, in order.

    email: open (unseal, decrypt and verify by policy) -> repeat (partner-signed content made into
           a referral before? then a repeat: not parsed or routed) -> reply (the referrer's answer
           to a request for more information? threaded onto that referral, nothing after) -> parse
           (referral.json or body) -> route (route, deadline, first escalation step and its alerts;
           the child's keyed hashes for the linked history) -> receipt
    web:   open (unseal) -> parse (the form's referral.json) -> route -> receipt (if an address
           was given)
    sms:   open (unseal, a registered number) -> parse (quick referral or free text) -> route
           (to the team the SMS reply named)

A new channel is a new list here, not a branch in the driver.
"""

from __future__ import annotations

from gateway.config import Settings
from gateway.core.db import Database
from gateway.core.sealed import Sealed
from gateway.history.keys import Hasher
from gateway.open.opener import Opener
from gateway.outbox.compose import Composer
from gateway.outbox.dispatch import Dispatcher
from gateway.outbox.protect import Protector
from gateway.pipeline.handlers import (
    CheckSender,
    EmailReceipt,
    Handler,
    IndexChild,
    OpenEmail,
    ParseEmail,
    ParseSms,
    ParseWeb,
    Route,
    Unseal,
    WebReceipt,
)
from gateway.pipeline.repeats import Dedupe
from gateway.pipeline.replies import ThreadReply

# What a repeat still goes through: it is opened (that is how it is known) and its sender gets a
# receipt naming the earlier reference; it is never parsed, routed or alerted on.
REPEAT_STAGES = frozenset({"open", Dedupe.name, "receipt"})


class Pipelines:
    def __init__(
        self,
        settings: Settings,
        sealed: Sealed,
        opener: Opener,
        dispatcher: Dispatcher,
        composer: Composer,
        protector: Protector,
        db: Database,
        content_key: bytes,
        hasher: Hasher,
    ) -> None:
        unseal, route, index = Unseal(sealed), Route(dispatcher, sealed), IndexChild(hasher)
        self._by_channel: dict[str, tuple[Handler, ...]] = {
            "email": (
                unseal,
                OpenEmail(opener),
                Dedupe(db, content_key),
                ThreadReply(settings, db, sealed, composer),
                ParseEmail(),
                route,
                index,
                EmailReceipt(composer, protector),
            ),
            "web": (unseal, ParseWeb(), route, index, WebReceipt(composer)),
            "sms": (unseal, CheckSender(settings), ParseSms(), route, index),
        }

    def of(self, channel: str) -> tuple[Handler, ...]:
        return self._by_channel[channel]

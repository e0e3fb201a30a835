"""The handlers: small, named steps over a `Work`, in the manner of Mailman 3's pipeline handlers.
Each does one thing and names the stage it belongs to, which is what the report shows when it
fails. A handler that decides the message cannot be processed raises Quarantine; any other
exception is a failure of its stage (retried, then quarantined by the driver).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from gateway.config import Settings
from gateway.core.clock import LONDON
from gateway.core.sealed import Content, EmailEnvelope, Sealed, SmsEnvelope, WebEnvelope
from gateway.history.keys import Hasher
from gateway.open.mime import read_outer
from gateway.open.opener import Opener
from gateway.open.sms import registered_sender
from gateway.outbox.compose import AlertContent, Composer
from gateway.outbox.dispatch import Dispatcher
from gateway.outbox.protect import Protector
from gateway.parse.referral import parse_email, parse_json
from gateway.parse.sms_text import referral_from_sms
from gateway.pipeline.work import Routed, Work
from gateway.route.rules import Facts


class Handler(Protocol):
    name: str  # the stage: open | parse | route | receipt

    async def __call__(self, work: Work) -> None: ...


@runtime_checkable
class BatchHandler(Handler, Protocol):
    """A handler that does its work for the whole batch at once (one database read for every
    message, not one each): the driver runs each message up to it, then calls `batch` with every
    message that got there, then runs each on. `__call__` is the same for one message."""

    async def batch(self, works: Sequence[Work]) -> None: ...


class Unseal:
    """The stored raw bytes and envelope, opened with the data-at-rest key."""

    name = "open"

    def __init__(self, sealed: Sealed) -> None:
        self._sealed = sealed

    async def __call__(self, work: Work) -> None:
        m, loaded = work.message, work.loaded
        work.raw = self._sealed.raw(m.message_id, loaded.raw)
        work.envelope = self._sealed.envelope(m.message_id, m.channel, loaded.envelope)


class OpenEmail:
    """Decrypt and verify (gateway.open.opener), judged by the partner directory and the policy."""

    name = "open"

    def __init__(self, opener: Opener) -> None:
        self._opener = opener

    async def __call__(self, work: Work) -> None:
        assert isinstance(work.envelope, EmailEnvelope)
        work.outer = read_outer(work.raw)
        work.opened, work.security = await self._opener.open(work.raw, work.envelope.mail_from, work.outer)


class ParseEmail:
    """Its referral.json attachment, or the body the referrer typed."""

    name = "parse"

    async def __call__(self, work: Work) -> None:
        assert work.opened is not None and work.security is not None
        today = work.now.astimezone(LONDON).date()
        work.referral, work.source = parse_email(work.opened.text, work.opened.referral_json, today)
        work.organisation = work.security.partner or work.referral.referrer.organisation
        work.attachments = work.opened.attachments


class ParseWeb:
    """The referral.json document the form built (intake already checked it field by field)."""

    name = "parse"

    async def __call__(self, work: Work) -> None:
        work.referral = parse_json(work.raw, work.now.astimezone(LONDON).date())
        work.source = "web form"
        work.organisation = work.referral.referrer.organisation


class CheckSender:
    """An SMS referral is acted on only from a number registered to a partner's professional."""

    name = "open"

    def __init__(self, settings: Settings) -> None:
        self._s = settings

    async def __call__(self, work: Work) -> None:
        assert isinstance(work.envelope, SmsEnvelope)
        partner, person = registered_sender(self._s, work.envelope)
        work.organisation, work.sender_name = partner.name, person.name


class ParseSms:
    """A quick referral (REF <postcode> <urgency> <text>) or free text: always incomplete."""

    name = "parse"

    async def __call__(self, work: Work) -> None:
        assert isinstance(work.envelope, SmsEnvelope) and work.organisation and work.sender_name  # CheckSender's
        body = str(dict(json.loads(work.raw)).get("Body") or "")  # the webhook's form, as stored
        work.referral = referral_from_sms(body, work.organisation, work.sender_name, work.envelope.sender)
        work.source = "sms"


class Route:
    """Route, work out the deadline and fire the escalation chain's first step (its alerts)."""

    name = "route"

    def __init__(self, dispatcher: Dispatcher, sealed: Sealed) -> None:
        self._dispatcher = dispatcher
        self._sealed = sealed

    async def __call__(self, work: Work) -> None:
        referral, m, security = work.referral, work.message, work.security
        assert referral is not None
        dispatched = await self._dispatcher.first(
            referral=referral,
            referral_id=m.referral_id,
            reference=m.reference,
            received_at=m.received_at,
            now=work.now,
            facts=Facts(at=m.received_at, channel=m.channel, organisation=work.organisation),
            security=security,
            content=AlertContent(referral, work.attachments),
            # An SMS reply already told the sender which team has it: the referral goes there.
            at_intake=work.envelope.routed if isinstance(work.envelope, SmsEnvelope) else None,
        )
        assert dispatched.decision is not None
        work.routed = Routed(
            content=self._sealed.seal_content(
                m.referral_id, Content(referral, security.reply_key if security else None)
            ),
            team_id=dispatched.team.id,
            route_name=dispatched.decision.route.name,
            urgency=referral.urgency.value if referral.urgency else None,
            incomplete=referral.incomplete,
            due_at=dispatched.due_at,
        )
        work.next_step = dispatched.next_step
        work.event(
            "parsed",
            {
                "source": work.source,
                "incomplete": referral.incomplete,
                "problem_fields": [p.field for p in referral.problems],
                "attachments": len(work.attachments),
                **(security.detail() if security else {}),
            },
        )
        for kind, detail in dispatched.events:
            if kind == "routed" and dispatched.encryption_failed:
                detail = {**detail, "encryption_failed": dispatched.encryption_failed}
            work.event(kind, detail)
        work.outgoing += dispatched.outgoing


class IndexChild:
    """The keyed hashes of what identifies the child (gateway.history.keys), for the child index
    rows written with the sealed content, and for finding a cumulative concern."""

    name = "route"

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher

    async def __call__(self, work: Work) -> None:
        assert work.referral is not None
        work.child_digests = tuple(sorted(self._hasher.digests(work.referral.child).items()))


class EmailReceipt:
    """A receipt with the reference to the envelope sender, encrypted to their key when known."""

    name = "receipt"

    def __init__(self, composer: Composer, protector: Protector) -> None:
        self._composer = composer
        self._protector = protector

    async def __call__(self, work: Work) -> None:
        assert isinstance(work.envelope, EmailEnvelope) and work.outer is not None and work.security is not None
        reply_to, m = work.envelope.mail_from, work.message
        if not reply_to or work.outer.automatic:
            # RFC 3834: no receipt to a null sender or to automatic mail, or we could loop.
            work.event("receipt_skipped", {"why": "automatic message" if reply_to else "null sender"})
            return
        original = work.repeat_of
        receipt = self._composer.receipt(
            reference=m.reference,
            to=reply_to,
            received_at=m.received_at,
            now=work.now,
            in_reply_to=work.outer.message_id,
            # A repeat: the sender is told which reference has it (a partner resending because
            # they saw no receipt learns the first one arrived).
            repeat_of=(original.reference, original.received_at) if original is not None else None,
        )
        work.outgoing.append(await self._protector.maybe_protect(work.security.reply_key, receipt))


class WebReceipt:
    """The form's reply page gave the reference; a receipt goes to the address given, if any."""

    name = "receipt"

    def __init__(self, composer: Composer) -> None:
        self._composer = composer

    async def __call__(self, work: Work) -> None:
        assert isinstance(work.envelope, WebEnvelope)
        if work.envelope.referrer_email:
            m = work.message
            work.outgoing.append(
                self._composer.receipt(
                    reference=m.reference,
                    to=work.envelope.referrer_email,
                    received_at=m.received_at,
                    now=work.now,
                    in_reply_to=None,
                )
            )

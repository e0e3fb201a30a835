"""Twilio's webhooks: /sms/inbound (a text to the gateway's number) and /sms/status (a delivery
status callback). Each is refused with 403 without a valid X-Twilio-Signature, computed over the
configured public URL (the URL Twilio called, not the one a proxy forwarded to us).

Every webhook is stored before it is answered. A referral text goes through the same intake as
email (a `messages` row and a referral with its reference, deduplicated on the MessageSid); any
other text and every status callback is a `sms_webhooks` row, unique on (kind, MessageSid,
status), with the reply given, so Twilio's retries get the same answer and change nothing twice.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gateway.config import Config
from gateway.config.fields import normalise_mobile
from gateway.core.clock import Clock
from gateway.core.db import Database
from gateway.core.metrics import Counters
from gateway.core.model import Channel
from gateway.core.schema import sms_webhooks
from gateway.core.sealed import RoutedAtIntake, Sealed, SmsEnvelope
from gateway.deliver.sms_status import apply_status
from gateway.intake.sms_replies import help_reply, referral_reply, start_reply, stop_reply
from gateway.intake.store import Incoming, IntakeWriter
from gateway.intake.twilio_signature import is_valid, request_url
from gateway.outbox.tokens import AckSigner
from gateway.parse.sms_text import Ack, BadAck, FreeText, Help, QuickReferral, Start, Stop, read_sms, to_referral
from gateway.route.rules import Facts, route
from gateway.track.acks import NotFound, Tracker

# One logger tree for the SMS channel across its stages (intake, delivery status), so that an
# operator can turn it up or down as one: "gateway.sms".
log = logging.getLogger("gateway.sms.webhooks")


def twiml(text: str | None) -> web.Response:
    # Imported at the first webhook: a gateway without SMS never needs it.
    from twilio.twiml.messaging_response import MessagingResponse

    reply = MessagingResponse()
    if text:
        reply.message(text)
    return web.Response(text=str(reply), content_type="text/xml")


class SmsWebhooks:
    def __init__(
        self,
        config: Config,
        token: str,
        db: Database,
        sealed: Sealed,
        signer: AckSigner,
        writer: IntakeWriter,
        tracker: Tracker,
        clock: Clock,
        counters: Counters,
    ) -> None:
        self._counters = counters
        self._s = config.settings
        self._token = token
        self._db = db
        self._sealed = sealed
        self._signer = signer
        self._writer = writer
        self._tracker = tracker
        self._clock = clock

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/sms/inbound", self._guarded(self.inbound))
        app.router.add_post("/sms/status", self._guarded(self.status))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:  # noqa: BLE001
                # The one catch-all of the webhooks: whatever went wrong is logged by type only
                # (its text could quote a number or a message) and Twilio gets a 500 with no
                # detail, which it records and alerts on. Anything stored before stays stored.
                log.error("sms: %s failed (%s); answered 500", request.path, type(exc).__name__)
                return web.Response(status=500, text="The referral gateway could not process this request.")

        return guarded

    async def _signed_form(self, request: web.Request) -> list[tuple[str, str]] | None:
        form = await request.post()
        params = [(key, str(value)) for key, value in form.items()]
        url = request_url(self._s.http.public_url, request.path_qs)
        if not is_valid(self._token, url, params, request.headers.get("X-Twilio-Signature")):
            log.warning("sms: %s refused: no valid Twilio signature", request.path)
            self._refused(request, "signature")
            return None
        return params

    def _refused(self, request: web.Request, reason: str) -> None:
        self._counters.webhooks_refused.labels(webhook=request.path.rsplit("/", 1)[-1], reason=reason).inc()

    async def inbound(self, request: web.Request) -> web.Response:
        params = await self._signed_form(request)
        if params is None:
            return web.Response(status=403, text="Forbidden: the request is not signed by Twilio.")
        form = dict(params)
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        if not sid:
            self._refused(request, "malformed")
            return web.Response(status=400, text="Bad request: no MessageSid.")
        try:
            sender = normalise_mobile(form.get("From", ""))
        except ValueError:
            sender = form.get("From", "")
        sender_hash = self._signer.recipient_hash(sender)
        now = self._clock.now()
        earlier = await self._stored_reply("inbound", sid, "")
        if earlier is not None:
            return twiml(earlier)  # Twilio retried: the same answer, nothing done twice
        over = await self._over_limit(sender_hash, now)
        item = read_sms(form.get("Body", ""))
        if isinstance(item, QuickReferral | FreeText):
            # Routed here, once: the reply names the team, and processing sends the referral to the
            # team the sender was told (the decision travels in the sealed envelope).
            found = self._s.professional(sender)
            organisation = found[0].name if found else None
            referral = to_referral(item, organisation, found[1].name if found else None)
            decision = route(referral, self._s, Facts(at=now, channel="sms", organisation=organisation))
            routed = RoutedAtIntake(decision.route.name, decision.team_id, decision.in_hours, decision.hours)
            accepted = await self._writer.submit(
                Incoming(
                    channel=Channel.SMS,
                    raw=json.dumps(params).encode(),
                    envelope=SmsEnvelope(sender, form.get("To", ""), sid, over, routed),
                    dedupe_key=f"sms:{sid}",
                )
            )
            team = self._s.team(decision.team_id)
            reply = (
                None
                if over
                else referral_reply(
                    self._s, accepted.reference, referral.urgency, found is not None, team.name, team.phone
                )
            )
            outcome = f"referral {accepted.reference}" + (" (over the rate limit)" if over else "")
        elif over:
            reply, outcome = None, "over the rate limit: not acted on"
        else:
            reply, outcome = await self._command(item, sender, sender_hash)
        await self._store("inbound", sid, "", sender_hash, params, outcome, reply, now)
        log.info("sms: inbound %s: %s", sid, outcome)
        return twiml(reply)

    async def _command(self, item: object, sender: str, sender_hash: str) -> tuple[str, str]:
        duty = self._s.gateway.duty_phone
        if isinstance(item, Help):
            return help_reply(self._s), "help"
        if isinstance(item, Stop):
            return stop_reply(self._s), "stop"
        if isinstance(item, Start):
            return start_reply(self._s), "start"
        if isinstance(item, BadAck):
            return f"{item.why} Nothing was changed. If unsure, call {duty}.", "ack refused: not a valid reference"
        assert isinstance(item, Ack)
        try:
            referral_id, reference = await self._tracker.alert_sent_to(sender_hash, item.reference)
        except NotFound:
            what = f"for referral {item.reference} " if item.reference else ""
            return (
                f"No alert {what}was sent to this phone, so nothing was changed. "
                f"Check the reference in the alert, or call {duty}.",
                "ack refused: no alert for it was sent to this number",
            )
        by = self._name_of(sender)
        result = await self._tracker.acknowledge(referral_id, sender_hash, by, via="SMS reply")
        if result.already:
            return (
                f"Referral {reference} was already acknowledged by {result.by}. Nothing was changed.",
                f"ack of {reference}: already acknowledged",
            )
        return (
            f"Thank you, {by}: referral {reference} is acknowledged. Everyone else alerted has been told.",
            f"ack of {reference} recorded",
        )

    def _name_of(self, mobile: str) -> str:
        someone = self._s.person_at(mobile)
        return someone.name if someone else f"the duty phone ending {mobile[-3:]}"

    async def status(self, request: web.Request) -> web.Response:
        params = await self._signed_form(request)
        if params is None:
            return web.Response(status=403, text="Forbidden: the request is not signed by Twilio.")
        form = dict(params)
        sid, status = form.get("MessageSid", ""), form.get("MessageStatus", "")
        if not sid or not status:
            self._refused(request, "malformed")
            return web.Response(status=400, text="Bad request: no MessageSid or MessageStatus.")
        now = self._clock.now()
        try:
            async with self._db.write() as conn:
                # Stored and applied in one transaction: a retry of the same callback hits the
                # unique key and is answered 200 without doing anything again.
                await conn.execute(
                    sms_webhooks.insert().values(
                        kind="status",
                        message_sid=sid,
                        status=status,
                        sender_hash="",
                        payload=self._sealed.seal_webhook("status", sid, status, params),
                        outcome="",
                        received_at=now,
                    )
                )
                outcome = await apply_status(conn, self._s, sid, status, form.get("ErrorCode"), now, "sms:callback")
                await conn.execute(
                    sms_webhooks.update()
                    .where(sms_webhooks.c.kind == "status", sms_webhooks.c.message_sid == sid)
                    .where(sms_webhooks.c.status == status)
                    .values(outcome=outcome[:200])
                )
        except IntegrityError:
            outcome = "a repeat of a callback already recorded"
        log.info("sms: status %s %s: %s", sid, status, outcome)
        return web.Response(status=204)

    async def _stored_reply(self, kind: str, sid: str, status: str) -> str | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(sms_webhooks.c.reply, sms_webhooks.c.id).where(
                        sms_webhooks.c.kind == kind, sms_webhooks.c.message_sid == sid, sms_webhooks.c.status == status
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        return self._sealed.reply(kind, sid, row.reply) if row.reply else ""

    async def _over_limit(self, sender_hash: str, now: datetime) -> bool:
        sms = self._s.sms
        async with self._db.read() as conn:
            count = (
                await conn.execute(
                    select(func.count())
                    .select_from(sms_webhooks)
                    .where(
                        sms_webhooks.c.kind == "inbound",
                        sms_webhooks.c.sender_hash == sender_hash,
                        sms_webhooks.c.received_at >= now - sms.inbound_window,
                    )
                )
            ).scalar_one()
        return bool(count >= sms.inbound_limit)

    async def _store(
        self,
        kind: str,
        sid: str,
        status: str,
        sender_hash: str,
        params: list[tuple[str, str]],
        outcome: str,
        reply: str | None,
        now: datetime,
    ) -> None:
        values: dict[str, object] = {
            "kind": kind,
            "message_sid": sid,
            "status": status,
            "sender_hash": sender_hash,
            "payload": self._sealed.seal_webhook(kind, sid, status, params),
            "outcome": outcome[:200],
            "reply": self._sealed.seal_reply(kind, sid, reply) if reply else None,
            "received_at": now,
        }
        try:
            async with self._db.write() as conn:
                await conn.execute(sms_webhooks.insert().values(**values))
        except IntegrityError:
            pass  # a concurrent retry of the same webhook stored it first
